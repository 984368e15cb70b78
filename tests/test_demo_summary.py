"""A demo that tells the truth: the funnel and summary a person reads, reuse of finished work, the embedding
cache, the judge's length bias and the column descriptions every table schema carries. All cheap: no model."""

import os

import duckdb
import numpy as np
import pandas as pd
import pytest

from lm_mixup_assets.cli import demo_summary
from lm_mixup_assets.lib import warehouse as wh
from lm_mixup_assets.lib.columns import describe
from lm_mixup_assets.lib.embedding_cache import cached_embed
from lm_mixup_assets.lib.summary import FUNNEL_COLUMNS, arm_origins, length_correlation, source_funnel
from lm_mixup_assets.lib.training import (
    TrainResult,
    _prune_checkpoints,
    _record_finished,
    finished_run,
    latest_checkpoint,
    run_key,
)


def _small_warehouse(path):
    """Two sources that went different distances down the pipeline."""
    con = duckdb.connect(str(path))
    tables = {
        "pool_summary": pd.DataFrame(
            [
                {
                    "source": "a",
                    "input_rows": 10,
                    "rejected": 1,
                    "duplicates": 1,
                    "raw": 8,
                    "rated_ok": 8,
                    "rated_failed": 0,
                    "high": 3,
                    "low": 5,
                    "high_fraction": 0.375,
                    "judge_prompt_tokens": 0,
                    "judge_completion_tokens": 0,
                },
                {
                    "source": "b",
                    "input_rows": 4,
                    "rejected": 0,
                    "duplicates": 0,
                    "raw": 4,
                    "rated_ok": 4,
                    "rated_failed": 0,
                    "high": 4,
                    "low": 0,
                    "high_fraction": 1.0,
                    "judge_prompt_tokens": 0,
                    "judge_completion_tokens": 0,
                },
            ]
        ),
        "cluster_inputs": pd.DataFrame({"source": ["a", "a", "a"], "cluster_id": [0, 1, 1], "part": [0, 0, 1]}),
        "distilled_pool": pd.DataFrame({"source": ["a", "a", "a"], "status": ["ok", "parse_error", "skipped"]}),
        "distilled_high": pd.DataFrame({"source": ["a"], "sample_id": ["d1"]}),
        "training_sets": pd.DataFrame(
            {
                "arm": ["mix", "mix", "mix", "orig"],
                "source": ["a", "b", "b", "b"],
                "origin": ["distilled", "original", "original", "original"],
                "sample_id": ["d1", "b1", "b2", "b1"],
                "prompt": "p",
                "completion": "c",
            }
        ),
        "training_set_composition": pd.DataFrame(
            {"arm": ["mix", "mix", "orig"], "pool": ["d", "o", "o"], "shortfall": [1, 0, 0]}
        ),
        "rated_pool": pd.DataFrame(
            {
                "source": "a",
                "status": "ok",
                "judge_backend": "heuristic",
                "judge_model": "h",
                "overall": [2, 5, 8],
                "completion": ["x", "x" * 50, "x" * 900],
            }
        ),
    }
    for name, frame in tables.items():
        wh.replace_partition(con, name, frame)
    return con


def test_the_funnel_follows_each_source_down_to_the_training_sets(tmp_path):
    con = _small_warehouse(tmp_path / "w.duckdb")
    funnel = source_funnel(con).set_index("source")
    assert list(funnel.columns) == FUNNEL_COLUMNS
    assert funnel.loc[
        "a", ["input_rows", "high", "low", "clusters", "distilled", "distilled_ok", "accepted"]
    ].tolist() == [10, 3, 5, 2, 2, 1, 1]
    # distinct rows: b1 is in two arms but counted once
    assert funnel.loc["b", ["original_in_training_sets", "distilled_in_training_sets", "clusters"]].tolist() == [
        2,
        0,
        0,
    ]
    assert funnel.loc["total", "input_rows"] == 14 and funnel.loc["total", "distilled_in_training_sets"] == 1
    arms = arm_origins(con).set_index("arm")
    assert arms.loc["mix", ["rows", "distilled", "shortfall"]].tolist() == [3, 1, 1]
    assert "shortfall" not in arm_origins(con, shortfall=False).columns
    # A stage that never ran counts 0, it does not fail.
    empty = duckdb.connect(str(tmp_path / "empty.duckdb"))
    assert source_funnel(empty).empty


def test_demo_summary_reads_as_what_flowed_where_and_where_to_look_next(tmp_path):
    _small_warehouse(tmp_path / "w.duckdb").close()
    (tmp_path / "artifacts" / "training_sets").mkdir(parents=True)
    (tmp_path / "artifacts" / "training_sets" / "mix.jsonl").write_text("{}\n")
    text = demo_summary(tmp_path / "w.duckdb", tmp_path / "artifacts")
    assert "What flowed where" in text and "accepted" in text and "dist. in sets" in text
    assert "Training sets" in text and "shortfall" in text
    assert "Judge heuristic:h: Overall vs log(answer length) Pearson" in text and "Spearman 1.00" in text
    assert "length meter" in text
    assert "http://127.0.0.1:3000" in text and "select source, status, count(*) from distilled_pool" in text
    assert str(tmp_path / "artifacts" / "training_sets" / "mix.jsonl") in text
    # Before anything ran, it still says where to look.
    assert "Look next" in demo_summary(tmp_path / "none.duckdb", tmp_path / "artifacts")


def test_the_summary_shows_every_score_with_its_interval_and_the_paired_verdicts(tmp_path):
    from lm_mixup_assets.lib.eval_tasks import compare_stored_scores

    con = _small_warehouse(tmp_path / "w.duckdb")
    ids = [f"h{i}" for i in range(30)]
    base = np.linspace(-2.0, -1.0, 30)

    def scores(arm, shift):
        values = (base + shift).tolist()
        return pd.DataFrame(
            [
                {
                    "arm": arm,
                    "task": "heldout_instruct",
                    "metric": "ll_per_token",
                    "filter": "none",
                    "value": float(np.mean(values)),
                    "headline": True,
                    "scale": "log_likelihood",
                    "ci_low": float(np.mean(values)) - 0.1,
                    "ci_high": float(np.mean(values)) + 0.1,
                    "item_ids": ids,
                    "item_values": values,
                    "task_set": "smoke",
                },
                {  # not a headline metric: not shown
                    "arm": arm,
                    "task": "heldout_instruct",
                    "metric": "ll_per_byte",
                    "filter": "none",
                    "value": -0.5,
                    "headline": False,
                    "scale": "log_likelihood",
                    "ci_low": None,
                    "ci_high": None,
                    "item_ids": ids,
                    "item_values": [-0.5] * 30,
                    "task_set": "smoke",
                },
            ]
        )

    wh.replace_partition(con, "base_model_scores", scores("base", 0.0))
    arms = pd.concat([scores("mix", 0.2), scores("full_low", 0.0)], ignore_index=True)
    wh.replace_partition(con, "benchmark_scores", arms)
    primary = pd.concat([scores("base", 0.0), arms]).query("headline")
    wh.replace_partition(con, "benchmark_comparisons", compare_stored_scores(primary))
    wh.replace_partition(con, "benchmark_report", pd.DataFrame({"arm": ["base", "mix", "full_low"]}))
    con.close()
    text = demo_summary(tmp_path / "w.duckdb", tmp_path / "artifacts")
    assert "95% bootstrap interval" in text and "heldout_instruct = mean per-token log-likelihood" in text
    report = text.split("Benchmark report", 1)[1].splitlines()
    line = next(x for x in report if x.strip().startswith("mix "))
    # A constant +0.2 on every item: the paired interval is exactly +0.2, beyond zero; full_low equals base.
    assert "-1.300" in line and "+0.200 [+0.200, +0.200] differs" in line
    assert "+0.000 [+0.000, +0.000] within" in next(x for x in report if x.strip().startswith("full_low "))
    assert "ll_per_byte" not in text


def test_length_correlation_is_rank_based_and_honest_about_too_few_rows():
    longer_is_better = length_correlation([1, 2, 3, 4], ["a", "aa" * 5, "a" * 100, "a" * 1000])
    assert longer_is_better["spearman"] == pytest.approx(1.0) and longer_is_better["n"] == 4
    assert (
        length_correlation([5, 5, 5], ["a", "bb", "ccc"])["spearman"]
        != length_correlation([5, 5, 5], ["a", "bb", "ccc"])["spearman"]
    )  # NaN
    assert length_correlation([1, None, 3], ["a", "b", "c"])["n"] == 2


def test_embeddings_are_computed_once_per_model_and_text(tmp_path):
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    first, hits = cached_embed(["a", "bb", "a"], "m", tmp_path, embed)
    assert hits == 0 and calls == [["a", "bb"]]  # a repeated text is embedded once
    again, hits = cached_embed(["bb", "ccc", "a"], "m", tmp_path, embed)
    assert hits == 2 and calls[-1] == ["ccc"]
    assert again.tolist() == [[2, 1], [3, 1], [1, 1]] and first.tolist() == [[1, 1], [2, 1], [1, 1]]
    cached_embed(["a"], "other model", tmp_path, embed)
    assert calls[-1] == ["a"]  # another model has its own vectors


def test_a_finished_run_is_reused_only_while_its_inputs_and_files_are_unchanged(tmp_path):
    out = tmp_path / "run"
    final = out / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    (final / "model.safetensors").write_bytes(b"weights")
    checkpoint = out / "checkpoint-2"
    checkpoint.mkdir()
    for name in ("trainer_state.json", "training_args.bin", "model.safetensors", "optimizer.pt"):
        (checkpoint / name).write_bytes(b"x")
    key = run_key("base@1", "rows-v1", {"max_steps": 2})
    assert key == run_key("base@1", "rows-v1", {"max_steps": 2}) != run_key("base@1", "rows-v1", {"max_steps": 3})
    result = TrainResult(
        checkpoint=str(final),
        output_dir=str(out),
        steps=2,
        loss_history=[(1, 2.0), (2, 1.0)],
        tokens_seen=10,
        wall_seconds=1.0,
    )
    _prune_checkpoints(out, keep=False)
    _record_finished(result, key)
    # pruned: the record of the run stays, the weights are final/'s
    assert sorted(p.name for p in checkpoint.iterdir()) == ["trainer_state.json", "training_args.bin"]
    assert latest_checkpoint(out) == str(checkpoint) and latest_checkpoint(out, resumable=True) is None
    reused = finished_run(out, key)
    assert reused.reused and reused.steps == 2 and reused.loss_history == [(1, 2.0), (2, 1.0)]
    assert finished_run(out, run_key("other")) is None
    (final / "model.safetensors").write_bytes(b"other weights")  # changed since: train again
    os.utime(final / "model.safetensors", ns=(1, 1))
    assert finished_run(out, key) is None


def test_every_platform_table_column_is_described():
    from lm_mixup_assets.distill import DISTILLED_COLUMNS, RATED_DISTILLED_CARRY
    from lm_mixup_assets.rating import JUDGE_COLUMNS
    from lm_mixup_assets.selection import LONG_TAIL_COLUMNS, TRAINING_SET_COLUMNS

    columns = {
        *DISTILLED_COLUMNS,
        *RATED_DISTILLED_CARRY,
        *JUDGE_COLUMNS,
        *LONG_TAIL_COLUMNS,
        *TRAINING_SET_COLUMNS,
        *FUNNEL_COLUMNS,
        "quality_threshold",
        "cluster_size",
        "member_cosine",
        "input_text",
        "n_parts",
        "variant_ids",
        "target_id",
        "eval_key",
        "adapter_path",
        "merged_path",
    }
    assert sorted(c for c in columns if not describe(c)) == []
    assert describe("origin", "training_sets") != describe("origin")  # a table's own meaning first
    assert describe("smoke_mmlu", "benchmark_report") and describe("delta_vs_random", "benchmark_report")
