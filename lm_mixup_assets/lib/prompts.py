"""Prompt text for the distillation task (METHOD.md, "Task"), in our own words."""

POOL_MERGE_INSTRUCTION = (
    "The question-answer pairs below are related but individually weak: some are short, redundant or "
    "incomplete. Merge them into one coherent question-answer pair that keeps all of their essential "
    "information, states it clearly and adds nothing unsupported. Write the merged pair as "
    "'Q: <question>' and 'A: <answer>'."
)


def format_member(prompt: str, completion: str) -> str:
    return f"Q: {prompt}\nA: {completion}"


def merge_members(pairs: list[tuple[str, str]]) -> str:
    """The distiller's input: each member as Q/A, separated by a blank line."""
    return "\n\n".join(format_member(p, c) for p, c in pairs)
