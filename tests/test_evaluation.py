"""Evaluation: offline lm-eval task files, LoRA fine-tune + lm-eval on a tiny model, the report, the assets."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

import definitions
from lm_mixup_assets.lib.eval_tasks import (
    SMOKE_LABEL,
    SMOKE_TASKS,
    benchmark_table,
    build_smoke_tasks,
    evaluate_model,
    primary_scores,
)
from lm_mixup_assets.lib.heldout import HELDOUT_TASK
from resources import WarehouseResource
from tests.helpers import assets_of_groups, checks_by_name


def test_smoke_tasks_are_built_from_the_lm_eval_package(tmp_path):
    built = build_smoke_tasks(tmp_path)
    assert built.items == {"smoke_mmlu": 273, "smoke_bbh": 81, "smoke_gsm8k": 8}
    assert len(built.skipped["smoke_mmlu"]) == 9 and all("mmlu" in r for r in built.skipped["smoke_mmlu"])
    for task in SMOKE_TASKS:
        spec = yaml.safe_load((tmp_path / f"{task}.yaml").read_text())
        assert spec["task"] == task and spec["dataset_path"] == "json" and spec["metadata"]["label"] == SMOKE_LABEL
        rows = [json.loads(x) for x in (tmp_path / f"{task}.jsonl").read_text().splitlines()]
        assert len(rows) == built.items[task]
    mmlu = [json.loads(x) for x in (tmp_path / "smoke_mmlu.jsonl").read_text().splitlines()]
    assert all(len(r["choices"]) == 4 and r["answer"] in range(4) for r in mmlu)
    first = next(r for r in mmlu if r["subject"] == "abstract_algebra")
    assert first["question"].startswith("Statement 1 | Every element of a group") and first["answer"] == 2  # "(C)"
    gsm = [json.loads(x) for x in (tmp_path / "smoke_gsm8k.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in gsm][:3] == ["6", "5", "39"]
    bbh = [json.loads(x) for x in (tmp_path / "smoke_bbh.jsonl").read_text().splitlines()]
    assert {"subtask": "boolean_expressions", "input": "not ( ( not not True ) ) is", "target": "False"} in bbh


def test_report_math_on_a_constructed_table():
    rows = []
    for arm, values in {
        "base": (0.2, 0.1),
        "random": (0.4, 0.2),
        "full_low": (0.3, 0.1),
        "mixup50_ori50": (0.5, 0.4),
    }.items():
        rows += [
            {"arm": arm, "task": "t1", "metric": "acc", "filter": "none", "value": values[0]},
            {"arm": arm, "task": "t1", "metric": "acc_norm", "filter": "none", "value": 0.99},
            {"arm": arm, "task": "t2", "metric": "exact_match", "filter": "strip", "value": values[1]},
            {"arm": arm, "task": "t2", "metric": "exact_match", "filter": "flexible-extract", "value": 0.98},
        ]
    scores = pd.DataFrame(rows)
    assert set(primary_scores(scores)["metric"]) == {"acc", "exact_match"}
    table = benchmark_table(scores).set_index("arm")
    assert table.loc["mixup50_ori50", "average"] == pytest.approx(0.45)
    assert table.loc["mixup50_ori50", "delta_vs_full_low"] == pytest.approx(0.45 - 0.2)
    assert table.loc["mixup50_ori50", "delta_vs_random"] == pytest.approx(0.45 - 0.3)
    assert table.loc["random", "delta_vs_random"] == 0.0


def test_lm_eval_runs_the_smoke_tasks_on_a_tiny_model(tmp_path, tiny_causal_lm):
    built = build_smoke_tasks(tmp_path / "tasks")
    run = evaluate_model(tiny_causal_lm, {t: 0 for t in SMOKE_TASKS}, built.folder, limit=2, batch_size=2, device="cpu")
    headline = {(s["task"], s["metric"]) for s in run.scores}
    assert {("smoke_mmlu", "acc"), ("smoke_bbh", "exact_match"), ("smoke_gsm8k", "exact_match")} <= headline
    assert all(0.0 <= s["value"] <= 1.0 for s in run.scores if s["metric"] != "sample_len")
    assert run.task_versions["smoke_mmlu"] == "1.0" and run.lm_eval_version.startswith("0.4")


def test_evaluation_group_for_one_arm(resources, home, query, tiny_causal_lm):
    pool = pd.DataFrame(
        [
            {
                "source": "s",
                "sample_id": f"id{i}",
                "prompt": f"What is {i} plus {i}?",
                "completion": f"{i} plus {i} is {2 * i}.",
            }
            for i in range(6)
        ]
    )
    rows = pool.assign(
        arm="full_low",
        position=range(6),
        pool="rated_pool",
        origin="original",
        member_ids=[[x] for x in pool["sample_id"]],
        long_tail_score=None,
    )
    WarehouseResource(home=str(home)).replace_partition(
        "training_sets", rows, "arm", "full_low", column_types={"member_ids": "VARCHAR[]"}
    )
    # Held-out answers no training row holds: every model also scores their log-likelihood.
    heldout = pd.DataFrame(
        [
            {
                "position": i,
                "source": "s",
                "sample_id": f"held{i}",
                "prompt": f"What is {i} times {i}?",
                "completion": f"{i} times {i} is {i * i}.",
                "overall": 8,
                "overall_compressed": 4,
            }
            for i in range(7, 11)
        ]
    )
    WarehouseResource(home=str(home)).replace_partition("heldout_instructions", heldout)
    group = assets_of_groups("evaluation", checks=False)
    # Every smoke task, 2 items each (the demo preset scores smoke_mmlu uncapped: 273 items).
    eval_cfg = {"limit": 2, "batch_size": 2, "smoke_tasks": ",".join(SMOKE_TASKS), "uncapped": ""}
    lora = {
        "base_model": tiny_causal_lm,
        "max_steps": 2,
        "lora_r": 4,
        "lora_alpha": 8,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
    }
    run_config = {"ops": {"downstream_models": {"config": lora}, "benchmark_scores": {"config": eval_cfg}}}
    per_arm = [a for a in group if a.partitions_def is not None]
    result = dg.materialize(
        [*per_arm, *definitions.defs.asset_checks],
        resources=resources,
        partition_key="full_low",
        run_config=run_config,
    )
    assert result.success and checks_by_name(result)["scores_in_unit_range"].passed
    model = query("select * from downstream_models")
    assert model["rows"].tolist() == [6] and model["steps"].tolist() == [2]
    # benchmark_scores got the adapter (no merged copy on disk) as downstream_models[full_low]'s value, with its
    # training format; lm-eval loaded base + adapter.
    value = result.output_for_node("downstream_models")
    assert value.path == model["adapter_path"].iat[0] and value.steps == 2 and model["merged_path"].iat[0] == ""
    assert (Path(value.path) / "adapter_config.json").is_file() and not (Path(value.path).parent / "merged").exists()
    # Unchanged inputs: the second run trains nothing and evaluates nothing, and says so.
    evaluated_at = query("select max(evaluated_at) t from benchmark_scores")["t"].iat[0]
    again = dg.materialize(
        per_arm,
        resources=resources,
        partition_key="full_low",
        run_config=run_config,
    )
    assert again.success and again.output_for_node("downstream_models").fingerprint == value.fingerprint
    for name in ("downstream_models", "benchmark_scores"):
        assert again.asset_materializations_for_node(name)[0].metadata["reused"].value is True
    assert query("select max(evaluated_at) t from benchmark_scores")["t"].iat[0] == evaluated_at
    assert value.training_settings["chat_template"] == "none" and value.data_version == model["data_version"].iat[0]
    assert (home / "artifacts" / "asset_values" / "downstream_models" / "full_low.json").is_file()
    assert (
        model["chat_template"].tolist() == ["none"]
        and (query("select * from benchmark_scores")["chat_template"] == "none").all()
    )
    # Scoring in another format than the model was trained in is refused, not run.
    # The stored downstream_models[full_low] value is loaded, not retrained: only benchmark_scores is selected.
    mismatch = dg.materialize(
        per_arm,
        selection=["benchmark_scores"],
        resources=resources,
        partition_key="full_low",
        raise_on_error=False,
        run_config={"ops": {"benchmark_scores": {"config": {**eval_cfg, "chat_template": "apply"}}}},
    )
    assert not mismatch.success
    failure = next(e for e in mismatch.all_events if e.is_step_failure).step_failure_data.error.message
    assert "trained with chat_template='none'" in failure and "chat_template='apply'" in failure
    assert (home / "artifacts" / "downstream" / "full_low").is_dir()
    assert "adapter_config.json" in {
        p.name for p in (next((home / "artifacts" / "downstream" / "full_low").iterdir()) / "adapter").iterdir()
    }
    unpartitioned = [a for a in group if a.partitions_def is None]
    report = dg.materialize(
        [*unpartitioned, *definitions.defs.asset_checks],
        resources=resources,
        run_config={"ops": {"base_model_scores": {"config": {**eval_cfg, "base_model": tiny_causal_lm}}}},
    )
    assert report.success and checks_by_name(report)["same_eval_settings"].passed
    table = query("select * from benchmark_report order by arm")
    assert table["arm"].tolist() == ["base", "full_low"] and "delta_vs_full_low" in table.columns
    # The arm and the base model (one tokenizer, same held-out rows) read one task folder named by its inputs;
    # nothing is written at the top, where arms evaluated at once would rewrite each other's files.
    tasks = home / "artifacts" / "eval_tasks"
    assert [p.name.startswith("heldout-") for p in tasks.iterdir()] == [True]
    names = {p.name for p in next(tasks.iterdir()).iterdir()}
    assert {f"{HELDOUT_TASK}.jsonl", f"{HELDOUT_TASK}.yaml", *(f"{t}.yaml" for t in SMOKE_TASKS)} <= names
    scores = query("select * from benchmark_scores")
    assert set(scores["task"]) == {*SMOKE_TASKS, HELDOUT_TASK} and (scores["limit_items"] == 2).all()
    assert (scores["label"] == SMOKE_LABEL).all()
    # The held-out task: one log-likelihood per held-out row, <= 0, with its interval; accuracies keep [0, 1].
    ll = scores[(scores["task"] == HELDOUT_TASK) & (scores["metric"] == "ll_per_token")].iloc[0]
    assert ll["scale"] == "log_likelihood" and ll["headline"] and ll["value"] < 0
    assert list(ll["item_ids"]) == heldout["sample_id"].tolist() and len(ll["item_values"]) == 4
    assert ll["ci_low"] <= ll["value"] <= ll["ci_high"] and ll["value"] == pytest.approx(sum(ll["item_values"]) / 4)
    mmlu = scores[(scores["task"] == "smoke_mmlu") & (scores["metric"] == "acc")].iloc[0]
    assert mmlu["scale"] == "unit" and len(mmlu["item_values"]) == 2 and set(mmlu["item_values"]) <= {0.0, 1.0}
    # The average covers the accuracies only; each score has its interval; the arm is compared with base.
    row = table.set_index("arm").loc["full_low"]
    assert row["average"] == pytest.approx(row[list(SMOKE_TASKS)].mean()) and HELDOUT_TASK in table.columns
    assert row[f"{HELDOUT_TASK}_ci_low"] <= row[HELDOUT_TASK] <= row[f"{HELDOUT_TASK}_ci_high"]
    comparisons = query("select * from benchmark_comparisons")
    assert set(comparisons["task"]) == {*SMOKE_TASKS, HELDOUT_TASK} and set(comparisons["baseline"]) == {"base"}
    pair = comparisons.set_index("task").loc[HELDOUT_TASK]
    base_ll = query(
        "select item_values from base_model_scores where task = ? and metric = 'll_per_token'", [HELDOUT_TASK]
    )["item_values"].iat[0]
    assert pair["n"] == 4 and pair["mean_diff"] == pytest.approx(ll["value"] - sum(base_ll) / 4)
    assert pair["diff_low"] <= pair["mean_diff"] <= pair["diff_high"]
    assert pair["differs"] == (pair["diff_low"] > 0 or pair["diff_high"] < 0)
    md = report.asset_materializations_for_node("benchmark_report")[0].metadata
    assert "smoke-level" in md["report"].value and md["plot"].value.startswith("![")
    assert "vs base (paired diff [95% CI])" in md["report"].value and md["intervals"].value.startswith("![")
    # A model folder deleted since training is named, not evaluated; an arm never trained says what to run.
    import shutil

    shutil.rmtree(value.path)
    for arm, expected in (
        ("full_low", "no longer exists (deleted or moved?): rematerialise downstream_models[full_low]"),
        ("original_high", "materialise downstream_models[original_high] first"),
    ):
        gone = dg.materialize(
            per_arm,
            selection=["benchmark_scores"],
            resources=resources,
            partition_key=arm,
            raise_on_error=False,
            run_config={"ops": {"benchmark_scores": {"config": eval_cfg}}},
        )
        assert not gone.success
        assert expected in str([e.step_failure_data.error for e in gone.all_events if e.is_step_failure])
