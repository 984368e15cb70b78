"""Parsing the distiller's responses into pairs: good, sloppy and broken outputs."""

import pytest

from lm_mixup_assets.lib.distill import distilled_sample_id, parse_distilled


def test_well_formed_response_gives_the_pair():
    p = parse_distilled(
        "<think>Both ask about tea.</think>\n<answer>Q: How is green tea made?\nA: Leaves are steamed, rolled and dried.</answer>"
    )
    assert p.status == "ok" and p.well_formed
    assert p.prompt == "How is green tea made?"
    assert p.completion == "Leaves are steamed, rolled and dried."


def test_multiline_answer_and_text_outside_the_tags():
    p = parse_distilled(
        "Sure!\n<think>x</think><answer>\nQ: List two primes.\nA: 2 and 3.\nBoth are prime.\n</answer> hope this helps"
    )
    assert p.status == "ok" and not p.well_formed  # parsed, but the format was not exact
    assert p.completion == "2 and 3.\nBoth are prime."


def test_markdown_labels_and_second_pair_are_tolerated():
    p = parse_distilled(
        "<think></think><answer>**Question:** What is 2+2?\n**Answer:** 4\nQ: another\nA: pair</answer>"
    )
    assert (p.status, p.prompt, p.completion) == ("ok", "What is 2+2?", "4")


@pytest.mark.parametrize(
    "response, reason",
    [
        (None, "empty response"),
        ("   ", "empty response"),
        ("Q: a\nA: b", "no <answer> block"),
        ("<think>t</think><answer>Q: a\nA: b", "unterminated or empty <answer> block"),
        ("<answer>   </answer>", "unterminated or empty <answer> block"),
        ("<answer>Just some prose without labels.</answer>", "answer is not 'Q: <question>' then 'A: <answer>'"),
        ("<answer>Q: \nA: b</answer>", "empty question"),
        ("<answer>Q: a\nA:   </answer>", "empty answer"),
    ],
)
def test_broken_responses_are_parse_errors_with_a_reason(response, reason):
    p = parse_distilled(response)
    assert p.status == "parse_error" and p.reason == reason and p.prompt is None


def test_distilled_ids_never_collide_with_pool_ids():
    from lm_mixup_assets.lib.ingest import make_sample_id

    assert distilled_sample_id("s", "q", "a") != make_sample_id("s", "q", "a")
    assert distilled_sample_id("s", "q", "a") == distilled_sample_id("s", "q", "a")


def test_untagged_pairs_only_when_tags_are_not_required():
    text = "Q: What is a motormouth\nA: A chatterbox.\n\nQ: again\nA: again"
    assert parse_distilled(text).status == "parse_error"
    lenient = parse_distilled(text, require_tags=False)
    assert (lenient.status, lenient.prompt, lenient.completion, lenient.well_formed) == (
        "ok",
        "What is a motormouth",
        "A chatterbox.",
        False,
    )
    assert parse_distilled("<think>plan</think> Q: a\nA: b", require_tags=False).prompt == "a"
    # a preamble before the pair, as the demo's briefly trained 135M distiller writes: the first pair counts
    talk = parse_distilled(
        "I'll merge them.\n\nQ: What is BMW?\nA: Bavarian Motor Works.\n\nQ: again\nA: again", require_tags=False
    )
    assert (talk.status, talk.prompt, talk.completion, talk.well_formed) == (
        "ok",
        "What is BMW?",
        "Bavarian Motor Works.",
        False,
    )
    assert parse_distilled("I'll merge them.\n\nQ: a\nA: b").status == "parse_error"
    prose = parse_distilled("Sure, here you go: a merged answer.", require_tags=False)
    assert prose.status == "parse_error" and "does not start with 'Q:'" in prose.reason
    # a broken <answer> block is still an error: the model tried the format and failed it
    assert parse_distilled("<answer>Q: a\nA: b", require_tags=False).status == "parse_error"


def test_text_after_the_first_answer_end_is_ignored_as_the_reference_does():
    """data_process/inference.py cuts the generation after the first </answer> (case-insensitive)."""
    from lm_mixup_assets.lib.distill import cut_after_answer

    runaway = "<think>t</think>\n<answer>Q: a?\nA: b.</ANSWER>\n<answer>Q: c?\nA: d.</answer> and more"
    assert cut_after_answer(runaway) == "<think>t</think>\n<answer>Q: a?\nA: b.</ANSWER>"
    assert cut_after_answer("no tags at all") == "no tags at all"
    p = parse_distilled(runaway.replace("</ANSWER>", "</answer>"))
    assert (p.status, p.prompt, p.completion, p.well_formed) == ("ok", "a?", "b.", True)  # the trailing text is gone


def test_reference_layout_responses_parse():
    """The reference SFT target pads the tags with newlines; members carry ' A:' with a space."""
    p = parse_distilled(
        "<think>\nmerge\n</think>\n\n<answer>\nQ: Why is the sky blue?\n A: Rayleigh scattering.\n</answer>"
    )
    assert (p.status, p.prompt, p.completion, p.well_formed) == (
        "ok",
        "Why is the sky blue?",
        "Rayleigh scattering.",
        True,
    )


def test_tags_in_any_case_parse_as_the_reference_inference():
    parsed = parse_distilled("<THINK>plan</THINK>\n<Answer>Q: What is 2+2?\nA: 4</ANSWER> trailing")
    assert parsed.status == "ok" and (parsed.prompt, parsed.completion) == ("What is 2+2?", "4")
    assert parsed.well_formed
