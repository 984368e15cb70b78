"""An evaluation that can tell arms apart: the held-out log-likelihood task, MMLU-dev in full, bootstrap intervals."""

import json
import math
import threading

import numpy as np
import pandas as pd
import pytest
import yaml

from lm_mixup_assets.lib.downstream import encode_pair
from lm_mixup_assets.lib.eval_tasks import (
    Benchmark,
    bootstrap_mean_ci,
    build_smoke_tasks,
    compare_stored_scores,
    evaluate_model,
    paired_bootstrap_diff,
    smoke_benchmarks,
    write_task_file,
)
from lm_mixup_assets.lib.heldout import (
    HELDOUT_METRICS,
    HELDOUT_TASK,
    build_heldout_task,
    heldout_benchmark,
    heldout_docs,
    split_for_lm_eval,
)

ROWS = [
    {"sample_id": "a", "prompt": "What is the capital of France?", "completion": "Paris is the capital of France."},
    {"sample_id": "b", "prompt": "Write a haiku about rain.\n", "completion": "Soft rain on the roof,\nquiet streets."},
    {"sample_id": "c", "prompt": "Add 2 and 3.", "completion": " The sum is 5."},
    {"sample_id": "d", "prompt": "Name a primary colour.", "completion": "Blue."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_causal_lm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_causal_lm)


# --------------------------------------------------------------------------- the task files


def test_split_matches_the_training_text_and_lm_eval_whitespace_rule():
    assert split_for_lm_eval("Q?", "A.") == ("Q?", " A.")  # DS2's single space
    assert split_for_lm_eval("Q?\n", "A.") == ("Q?", "\nA.")  # trailing whitespace moves to the continuation
    assert split_for_lm_eval("Q?", " A.") == ("Q?", " A.")  # no second space
    for r in ROWS:
        context, continuation = split_for_lm_eval(r["prompt"], r["completion"])
        assert context + continuation in (r["prompt"] + " " + r["completion"], r["prompt"] + r["completion"])


def test_token_counts_are_the_training_rows_completion_tokens(tokenizer):
    docs, skipped = heldout_docs(ROWS, tokenizer)
    assert not skipped and [d["sample_id"] for d in docs] == ["a", "b", "c", "d"]
    for row, doc in zip(ROWS, docs):
        assert doc["n_bytes"] == len(doc["continuation"].encode("utf-8"))
        if not row["prompt"].endswith("\n"):  # same cut as the SFT loss mask, minus the EOS label
            labels = encode_pair(row["prompt"], row["completion"], tokenizer, 512)["labels"]
            assert doc["n_tokens"] == sum(x != -100 for x in labels) - 1


def test_bad_rows_are_named(tokenizer):
    with pytest.raises(ValueError, match="row x has an empty completion"):
        heldout_docs([{"sample_id": "x", "prompt": "p", "completion": "  "}], tokenizer)
    with pytest.raises(ValueError, match="sample_id a appears twice"):
        heldout_docs([ROWS[0], ROWS[0]], tokenizer)
    docs, skipped = heldout_docs(ROWS, tokenizer, max_tokens=10)
    assert len(docs) + len(skipped) == 4 and skipped and all("over max_tokens=10" in s for s in skipped)


def test_task_files(tmp_path, tokenizer):
    built = build_heldout_task(tmp_path, ROWS, tokenizer)
    assert (built.task, built.items, built.skipped) == (HELDOUT_TASK, 4, [])
    text = (tmp_path / f"{HELDOUT_TASK}.yaml").read_text()
    assert "process_results: !function heldout_utils.process_results" in text
    spec = yaml.load(text, Loader=yaml.BaseLoader)  # BaseLoader leaves the !function tag unresolved
    assert spec["output_type"] == "loglikelihood" and spec["doc_to_target"] == "continuation"
    rows = [json.loads(x) for x in (tmp_path / f"{HELDOUT_TASK}.jsonl").read_text().splitlines()]
    assert [r["sample_id"] for r in rows] == ["a", "b", "c", "d"]
    assert "def process_results" in (tmp_path / "heldout_utils.py").read_text()


def test_a_task_file_is_replaced_whole_while_it_is_read(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    path = folder / "t.jsonl"
    versions = ["a" * 200_000, "b" * 300_000]
    write_task_file(path, versions[0])
    stop = threading.Event()

    def rewrite():
        i = 0
        while not stop.is_set():
            i += 1
            write_task_file(path, versions[i % 2])

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        seen = {path.read_text() for _ in range(300)}
    finally:
        stop.set()
        writer.join()
    assert seen <= set(versions)  # never empty, never half of one
    assert [p.name for p in folder.iterdir()] == ["t.jsonl"]  # the temporary files live outside the folder


# --------------------------------------------------------------------------- MMLU dev in full


def test_mmlu_dev_can_run_uncapped_beside_capped_smoke_tasks(tmp_path):
    assert build_smoke_tasks(tmp_path).items["smoke_mmlu"] == 273
    caps = {b.name: b.limit_per_task for b in smoke_benchmarks(8, uncapped=("smoke_mmlu",))}
    assert caps == {"smoke_mmlu": None, "smoke_bbh": 8, "smoke_gsm8k": 8}
    assert {b.limit_per_task for b in smoke_benchmarks(8)} == {8}  # unchanged without it
    with pytest.raises(ValueError, match="not smoke tasks"):
        smoke_benchmarks(8, uncapped=("mmlu",))


# --------------------------------------------------------------------------- bootstrap intervals


def test_mean_ci_known_answers():
    const = bootstrap_mean_ci([0.25] * 50)
    assert (const.mean, const.low, const.high, const.n) == (0.25, 0.25, 0.25, 50)
    coin = [1.0, 0.0] * 200  # p = 0.5, n = 400: normal-theory 95 % width 2 * 1.96 * sqrt(.25 / 400) = 0.098
    ci = bootstrap_mean_ci(coin)
    assert ci.mean == 0.5 and ci.low < 0.5 < ci.high and 0.085 < ci.width < 0.11
    assert bootstrap_mean_ci(coin) == ci  # seeded: the same interval every time
    spread = np.random.default_rng(0).normal(size=100)
    assert bootstrap_mean_ci(spread, seed=1) != bootstrap_mean_ci(spread)  # the seed decides the resamples
    assert bootstrap_mean_ci(coin, confidence=0.5).width < ci.width
    with pytest.raises(ValueError, match="not finite"):
        bootstrap_mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean_ci([])


def test_paired_diff_known_answers():
    rng = np.random.default_rng(7)
    base = rng.normal(-2.0, 1.0, size=300)  # item difficulty varies far more than the shift below
    same = paired_bootstrap_diff(base, base)
    assert (same.mean_diff, same.low, same.high, same.excludes_zero) == (0.0, 0.0, 0.0, False)
    shifted = paired_bootstrap_diff(base + 0.1 + rng.normal(0, 0.05, 300), base)
    assert shifted.excludes_zero and shifted.low > 0 and shifted.mean_diff == pytest.approx(0.1, abs=0.01)
    worse = paired_bootstrap_diff(base, base + 0.1)
    assert worse.excludes_zero and worse.high < 0
    noise = paired_bootstrap_diff(base + rng.normal(0, 0.05, 300), base + rng.normal(0, 0.05, 300))
    assert not noise.excludes_zero and noise.low < 0 < noise.high
    # Mappings pair by key, whatever their order.
    a = {f"i{i}": float(v) for i, v in enumerate(base + 0.1)}
    b = {k: a[k] - 0.1 for k in reversed(list(a))}
    assert paired_bootstrap_diff(a, b).mean_diff == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not scored on the same items"):
        paired_bootstrap_diff(a, {**b, "extra": 0.0})
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap_diff([1.0, 2.0], [1.0])


def test_stored_scores_compared_to_each_baseline_on_constructed_items():
    rng = np.random.default_rng(3)
    hard = rng.normal(-2.0, 1.0, 200)
    ids = list(range(200))
    shifts = {"base": 0.0, "full_low": 0.0, "mixup": 0.2}
    primary = pd.DataFrame(
        [
            {"arm": arm, "task": "t", "metric": "ll_per_token", "item_ids": ids, "item_values": list(hard + s)}
            for arm, s in shifts.items()
        ]
        + [
            {
                "arm": "other_files",
                "task": "t",
                "metric": "ll_per_token",
                "item_ids": ids[1:],
                "item_values": list(hard[1:]),
            }
        ]
    )
    pairs = compare_stored_scores(primary, baselines=("base", "full_low", "absent")).set_index(["arm", "baseline"])
    # full_low and mixup against base, mixup against full_low; base is never the compared arm, an absent
    # baseline is skipped, and an arm scored on other items is left out rather than paired wrongly
    assert sorted(pairs.index) == [("full_low", "base"), ("mixup", "base"), ("mixup", "full_low")]
    assert pairs.loc[("mixup", "base"), "differs"] and pairs.loc[("mixup", "base"), "n"] == 200
    assert pairs.loc[("mixup", "full_low"), "mean_diff"] == pytest.approx(0.2)
    assert not pairs.loc[("full_low", "base"), "differs"]  # identical scores: [0, 0]


# --------------------------------------------------------------------------- end to end on a tiny model


def _direct_ll(model_path: str, context: str, continuation: str) -> tuple[float, int]:
    """The continuation's summed log-likelihood, computed with transformers alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    cont = whole[len(ctx) :]
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont))), len(cont)


def test_lm_eval_scores_the_heldout_task_per_item(tmp_path, tiny_causal_lm):
    built = build_heldout_task(tmp_path, ROWS, tiny_causal_lm)
    mmlu = build_smoke_tasks(tmp_path)
    assert built.folder == mmlu.folder  # one include path for both
    benchmarks = [
        heldout_benchmark(),
        Benchmark("smoke_mmlu", ("smoke_mmlu",), 0, "smoke_mmlu", ("acc", "none"), limit_per_task=3),
    ]
    run = evaluate_model(tiny_causal_lm, benchmarks, tmp_path, batch_size=4, device="cpu", per_item=True)
    headline = next(s for s in run.scores if (s["task"], s["metric"]) == (HELDOUT_TASK, "ll_per_token"))
    assert headline["n_samples"] == 4 and math.isfinite(headline["value"]) and headline["value"] < 0
    assert headline["stderr"] is not None and headline["stderr"] > 0
    items = pd.DataFrame(run.item_scores)
    held = items[items["task"] == HELDOUT_TASK]
    assert set(held["metric"]) == set(HELDOUT_METRICS)
    per_token = held[held["metric"] == "ll_per_token"].set_index("sample_id")["value"]
    assert sorted(per_token.index) == ["a", "b", "c", "d"] and (per_token < 0).all()
    assert per_token.mean() == pytest.approx(headline["value"])
    # lm-eval's number is the completion's log-likelihood per token as transformers computes it.
    docs = {d["sample_id"]: d for d in map(json.loads, (tmp_path / f"{HELDOUT_TASK}.jsonl").read_text().splitlines())}
    ll, n = _direct_ll(tiny_causal_lm, docs["b"]["context"], docs["b"]["continuation"])
    assert n == docs["b"]["n_tokens"] and per_token["b"] == pytest.approx(ll / n, rel=1e-4)
    acc = items[(items["task"] == "smoke_mmlu") & (items["metric"] == "acc")]
    assert sorted(acc["doc_id"]) == [0, 1, 2] and set(acc["value"]) <= {0.0, 1.0}
    assert acc["sample_id"].isna().all()
    ci = bootstrap_mean_ci(per_token)
    assert ci.low <= ci.mean <= ci.high < 0


def test_heldout_draw_is_seeded_capped_per_source_and_by_length():
    from lm_mixup_assets.lib.heldout import draw_heldout

    high = pd.DataFrame(
        [{"source": "a", "sample_id": f"a{i:02d}", "prompt": "p" * 10, "completion": "c" * (10 + i)} for i in range(20)]
        + [{"source": "b", "sample_id": f"b{i}", "prompt": "q", "completion": "d" * 500} for i in range(10)]
    )
    drawn = draw_heldout(high, 8, seed=3, max_source_fraction=0.3)
    assert len(drawn) == 8 and drawn["source"].value_counts().max() <= 6  # a: 6 of 20, b: 3 of 10 at most
    assert (drawn["source"] == "b").sum() <= 3
    again = draw_heldout(high.sample(frac=1, random_state=1), 8, seed=3, max_source_fraction=0.3)
    assert drawn["sample_id"].tolist() == again["sample_id"].tolist()  # the input's order does not matter
    assert draw_heldout(high, 8, seed=4)["sample_id"].tolist() != drawn["sample_id"].tolist()
    short = draw_heldout(high, 100, seed=3, max_source_fraction=1.0, max_chars=30)
    assert set(short["source"]) == {"a"} and len(short) == 11  # completions of 10..20 chars with a 10-char prompt
    assert draw_heldout(high, 0).empty and len(draw_heldout(high, 100, max_source_fraction=0.3)) == 9


def test_training_candidates_lose_the_heldout_rows_by_id_and_by_content():
    from lm_mixup_assets.selection import _without_heldout

    heldout = pd.DataFrame({"source": ["a"], "sample_id": ["a1"], "prompt": ["Why?"], "completion": ["Because."]})
    pool = pd.DataFrame(
        {
            "source": ["a", "a", "b", "b"],
            "sample_id": ["a1", "a2", "a1", "b9"],
            "prompt": ["Why?", "How?", "Other", "  Why?"],
            "completion": ["Because.", "So.", "Text", "Because. "],  # b9: the same content in another source
        }
    )
    assert _without_heldout(pool, heldout)["sample_id"].tolist() == ["a2", "a1"]  # b/a1 is another row
    assert _without_heldout(pool, heldout.iloc[:0]).equals(pool)
