"""Prompt text for the distiller: its system prompt, the GRPO format prompt and the cluster → input layout.

Two styles everywhere (docs/method.md, "Distiller prompts"):

* ``"reference"``: the method's released code, kept word for word because a distiller
  answers the prompt it was trained with, so inputs must match for numbers to compare.
  These strings are data, not code: they are quoted unchanged, with attribution, from
  yuu250/LM-mixup (Apache-2.0, its ``LICENSE``):

  - ``REFERENCE_SYSTEM_PROMPT``: ``sft/i_t_resume.py`` (SFT) and
    ``data_process/inference.py`` (distillation), identical in both;
  - ``REFERENCE_GRPO_FORMAT_PROMPT``: ``examples/format_prompt/mixup.jinja`` (GRPO user
    turn).  The file spells its line breaks as the two characters backslash + ``n``
    and Jinja does not unescape them, so the GRPO prompt really contains literal
    ``\\n`` sequences; they are kept so the rendered prompt is byte-identical;
  - ``REFERENCE_MERGE_INSTRUCTION`` and the member layout ``"Q: {prompt}\\n A: {answer}"``
    (note the space before ``A:``), members joined by a blank line as the README's
    ``--sep "\\n\\n"``: ``data_process/cluster2input.py``.

* ``"ours"``: our own wording (below), which asks for the ``Q:``/``A:`` answer layout
  explicitly.
"""

from __future__ import annotations

PROMPT_STYLES = ("reference", "ours")

REFERENCE_SYSTEM_PROMPT = (
    "You are an expert in data mix-up. Your task is to merge the provided content into a single coherent and high-quality output.\n"
    "You MUST ALWAYS follow this exact format:\n"
    "1. First, provide your reasoning wrapped in <think> tags\n"
    "2. Then, provide your final answer wrapped in <answer> tags\n"
    "NEVER output anything outside these tags.\n\n"
    "Example format:\n"
    "<think>\n[Your step-by-step reasoning about how and why the merge makes sense]\n</think>\n\n"
    "<answer>\n[The final merged content]\n</answer>"
)

# The template text before ``{{ content | trim }}``; "\\n" is a literal backslash-n (see the module docstring).
REFERENCE_GRPO_FORMAT_PROMPT = (
    "You are an expert in data mix-up. Your task is to merge the provided content into a single coherent and "
    "high-quality output. You MUST ALWAYS follow this exact format:\\n1. First, provide your reasoning wrapped in "
    "<think> tags\\n2. Then, provide your final answer wrapped in <answer> tags\\nNEVER output anything outside these "
    "tags.\\n\\nExample format:\\n<think>\\n[Your step-by-step reasoning about how and why the merge makes sense]\\n"
    "</think>\\n\\n<answer>\\n[The final merged content]\\n</answer>\\n"
)

REFERENCE_MERGE_INSTRUCTION = (
    "Given some related question-answer pairs, merge them into a single coherent question-answer pair that "
    "preserves all essential information from the originals."
)

POOL_MERGE_INSTRUCTION = (
    "The question-answer pairs below are related but individually weak: some are short, redundant or "
    "incomplete. Merge them into one coherent question-answer pair that keeps all of their essential "
    "information, states it clearly and adds nothing unsupported. Write the merged pair as "
    "'Q: <question>' and 'A: <answer>'."
)

MEMBER_SEPARATOR = "\n\n"  # both styles: a blank line between members


def check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style {style!r} is unknown; choose one of {PROMPT_STYLES}")


def render_grpo_format_prompt(content: str) -> str:
    """The reference's GRPO user turn: the format prompt, then the trimmed content, then the
    template's trailing space (``mixup.jinja`` ends ``{{ content | trim }} ``)."""
    return f"{REFERENCE_GRPO_FORMAT_PROMPT}{content.strip()} "


def merge_instruction(style: str = "ours") -> str:
    check_style(style)
    return REFERENCE_MERGE_INSTRUCTION if style == "reference" else POOL_MERGE_INSTRUCTION


def _unify_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def format_member(prompt: str, completion: str, style: str = "ours") -> str:
    """One cluster member.  ``reference``: ``"Q: …\\n A: …"`` (CR/CRLF made ``\\n``, both parts
    stripped, as ``cluster2input.py`` does); ``ours``: ``"Q: …\\nA: …"``."""
    check_style(style)
    if style == "reference":
        return f"Q: {_unify_newlines(prompt or '').strip()}\n A: {_unify_newlines(completion or '').strip()}"
    return f"Q: {prompt}\nA: {completion}"


def merge_members(pairs: list[tuple[str, str]], style: str = "ours") -> str:
    """The distiller's input: each member formatted, separated by a blank line."""
    return MEMBER_SEPARATOR.join(format_member(p, c, style) for p, c in pairs)
