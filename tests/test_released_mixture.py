"""The released MIXTURE (dokiik/MIXTURE layout) read from the tiny hand-written fixture in tests/fixtures/."""

import json
import shutil
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

import definitions
from lm_mixup_assets.lib import released_mixture as R
from lm_mixup_assets.lib.training import user_turn
from tests.helpers import checks_by_name

FIXTURE = Path(__file__).parent / "fixtures" / "mixture_release"
# What the fixture holds (see its README): data_sft per task and split, data_grpo per split.
SFT_COUNTS = {
    ("qa", "train"): 3,
    ("mcq", "train"): 2,
    ("tfq", "train"): 2,
    ("cs", "train"): 2,
    ("paragraph", "train"): 2,
    ("qa", "test"): 1,
    ("mcq", "test"): 1,
    ("tfq", "test"): 1,
    ("cs", "test"): 1,
    ("paragraph", "test"): 1,
}
GRPO_COUNTS = {
    ("qa", "train"): 1,
    ("mcq", "train"): 1,
    ("tfq", "train"): 1,
    ("cs", "train"): 1,
    ("paragraph", "train"): 1,
    ("qa", "test"): 1,
    ("paragraph", "test"): 1,
}


def test_released_task_spellings_map_onto_ours():
    assert {
        name: R.task_from_released(name)
        for name in ["qa", "mcq", "tfq", "cs", "para", "para_mixup", "QA_MIXUP", "paragraph"]
    } == {
        "qa": "qa",
        "mcq": "mcq",
        "tfq": "tfq",
        "cs": "cs",
        "para": "paragraph",
        "para_mixup": "paragraph",
        "QA_MIXUP": "qa",
        "paragraph": "paragraph",
    }
    with pytest.raises(ValueError, match="unknown released task type 'essay_mixup'"):
        R.task_from_released("essay_mixup")


def test_sft_part_loads_with_the_right_counts_per_task_and_lineage():
    release = R.load_released_mixture(str(FIXTURE), "data_sft")
    assert Counter((r["task"], r["split"]) for r in release.rows) == SFT_COUNTS
    assert release.rejects == [] and release.label == str(FIXTURE.resolve())
    assert len({r["example_id"] for r in release.rows}) == 16
    qa_train = [r for r in release.rows if r["origin_file"] == "data_sft/qa/merged_train_qa_noisy.json"]
    assert [r["origin_row"] for r in qa_train] == [0, 1, 2]
    raw = json.loads((FIXTURE / "data_sft/qa/merged_train_qa_noisy.json").read_text())[1]
    row = qa_train[1]
    # the reference's user turn: instruction, one newline, the variants; what training then sends unchanged
    assert row["input"] == raw["instruction"] + "\n" + raw["input"]
    assert user_turn(row) == row["input"]
    assert row["output"] == raw["output"] and row["cot"] == raw["cot"] and row["n_variants"] == 3
    para = [r for r in release.rows if r["task"] == "paragraph"]
    assert {r["origin_task_type"] for r in para} == {"para"} and len(para) == 3
    assert [r for r in release.rows if r["cot"] == ""]  # the release's cot is optional; empty stays empty


def test_grpo_part_reads_task_type_per_row():
    release = R.load_released_mixture(str(FIXTURE), "data_grpo")
    assert Counter((r["task"], r["split"]) for r in release.rows) == GRPO_COUNTS
    assert {r["origin_task_type"] for r in release.rows} == {
        "qa_mixup",
        "mcq_mixup",
        "tfq_mixup",
        "cs_mixup",
        "para_mixup",
    }
    assert all(r["instruction"] == "" and r["cot"] == "" for r in release.rows)
    only = R.load_released_mixture(str(FIXTURE), "data_grpo", tasks=["paragraph"])
    assert [(r["split"], r["origin_file"], r["origin_row"]) for r in only.rows] == [
        ("train", "data_grpo/train.json", 4),
        ("test", "data_grpo/test.json", 1),
    ]


def test_other_layouts_and_bad_rows(tmp_path):
    # the data_sft folder itself (the reference's sft/data copy), and flat files without task folders
    assert len(R.load_released_mixture(str(FIXTURE / "data_sft")).rows) == 16
    flat = tmp_path / "flat" / "data_sft"
    flat.mkdir(parents=True)
    for path in (FIXTURE / "data_sft").rglob("*.json"):
        shutil.copy(path, flat / path.name)
    assert Counter((r["task"], r["split"]) for r in R.load_released_mixture(str(flat.parent)).rows) == SFT_COUNTS

    bad = tmp_path / "bad"
    shutil.copytree(FIXTURE, bad)
    grpo = bad / "data_grpo" / "train.json"
    rows = json.loads(grpo.read_text()) + [
        {"input": "x", "output": "", "task_type": "qa_mixup"},
        {"input": "x", "output": "y", "task_type": "essay_mixup"},
        "not a record",
    ]
    grpo.write_text(json.dumps(rows))
    release = R.load_released_mixture(str(bad), "data_grpo")
    assert len(release.rows) == 7
    assert [(r["origin_file"], r["origin_row"]) for r in release.rejects] == [
        ("data_grpo/train.json", i) for i in (5, 6, 7)
    ]
    reasons = [r["reason"] for r in release.rejects]
    assert (
        reasons[0] == "empty output" and "essay_mixup" in reasons[1] and reasons[2] == "record is a str, not an object"
    )

    (bad / "data_sft" / "merged_train_qa_noisy.json").write_text("[]")  # a second qa/train file
    with pytest.raises(ValueError, match="two released files for task 'qa', split 'train'"):
        R.load_released_mixture(str(bad))
    with pytest.raises(FileNotFoundError, match="no released MIXTURE files"):
        R.load_released_mixture(str(tmp_path / "flat"), "data_grpo")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        R.load_released_mixture(str(tmp_path / "missing"))


def test_hf_path_offline_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="could not fetch the dataset 'dokiik/MIXTURE-not-cached'"):
        R.load_released_mixture("hf:dokiik/MIXTURE-not-cached")


def _mixture_only():
    asset = next(a for a in definitions.defs.assets if a.node_def.name == "mixture")
    checks = [c for c in definitions.defs.asset_checks if any(k.asset_key.path[-1] == "mixture" for k in c.check_keys)]
    return [asset, *checks]


def test_mixture_asset_reads_the_release_without_upstream_tables(resources, query, home):
    from lm_mixup_assets.training import _mixture_rows

    config = {"ops": {"mixture": {"config": {"source": "released", "released_path": str(FIXTURE)}}}}
    result = dg.materialize(_mixture_only(), resources=resources, run_config=config)  # empty warehouse
    assert result.success
    checks = checks_by_name(result)
    assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items()}
    mix = query("select * from mixture")
    assert Counter(zip(mix["task"], mix["split"])) == SFT_COUNTS
    assert (mix["source"] == "released").all() and (mix["origin"] == str(FIXTURE.resolve())).all()
    assert mix["paragraph_id"].isna().all() and mix["origin_row"].notna().all()
    assert set(mix["origin_task_type"]) == {"qa", "mcq", "tfq", "cs", "para"}
    meta = result.asset_materializations_for_node("mixture")[0].metadata
    assert (
        meta["train"].value == 11
        and meta["test"].value == 5
        and meta["variants_per_example"].value == {"2": 14, "3": 2}
    )  # qa train row 1 and the tfq test row have 3
    # the training stage reads it as it reads a built MIXTURE
    rows = _mixture_rows(resources["warehouse"], "train")
    assert len(rows) == 11 and {"instruction", "input", "output", "cot", "task", "n_variants"} <= set(rows[0])
    export = [json.loads(x) for x in (home / "artifacts/mixture/mixture_test.jsonl").read_text().splitlines()]
    assert len(export) == 5 and {e["origin_file"].split("/")[1] for e in export} == {"qa", "mcq", "tfq", "cs", "para"}


def test_mixture_asset_refuses_a_release_with_too_many_bad_rows(resources, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURE, bad)
    (bad / "data_grpo" / "test.json").write_text(
        json.dumps(
            [
                {"input": "x", "output": "", "task_type": "qa_mixup"},
                {"input": "x", "output": "y", "task_type": "qa_mixup"},
            ]
        )
    )
    config = {
        "ops": {"mixture": {"config": {"source": "released", "released_path": str(bad), "released_part": "data_grpo"}}}
    }
    result = dg.materialize(_mixture_only(), resources=resources, run_config=config, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "data_grpo/test.json" in failure and "'origin_row': 0" in failure and "empty output" in failure

    config = {"ops": {"mixture": {"config": {"source": "released", "released_path": ""}}}}
    result = dg.materialize(_mixture_only(), resources=resources, run_config=config, raise_on_error=False)
    assert "no released MIXTURE path" in result.get_step_failure_events()[0].event_specific_data.error.message
