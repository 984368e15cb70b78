"""The pool group materialised through Dagster into a temporary warehouse."""

import subprocess
import sys

import dagster as dg
import pytest

import definitions
from tests.bad_input import (
    EXPECTED_DUPLICATES,
    EXPECTED_INGESTED,
    EXPECTED_INPUT_ROWS,
    EXPECTED_REJECTIONS,
    write_bad_jsonl,
)
from tests.helpers import checks_by_name, materialize_source


def test_definitions_hold_the_pool_graph():
    graph = definitions.defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw_pool", "rejected_rows", "rated_pool", "high_quality_pool", "low_quality_pool", "pool_summary"} <= keys
    for key in ("raw_pool", "rejected_rows", "rated_pool", "high_quality_pool", "low_quality_pool", "pool_summary"):
        assert graph.get(dg.AssetKey(key)).group_name == "pool"
    parts = graph.get(dg.AssetKey("rated_pool")).partitions_def
    assert parts.get_partition_keys() == ["chatterbot", "chitchat", "humaneval"]
    assert graph.get(dg.AssetKey("pool_summary")).partitions_def is None
    assert {dg.AssetKey("rated_pool")} == set(graph.get(dg.AssetKey("high_quality_pool")).parent_keys)
    assert definitions.defs.resolve_job_def("per_source_job") is not None


def test_humaneval_partition_materialises_with_checks_green(resources, query):
    result = materialize_source("humaneval", resources)
    assert result.success
    checks = checks_by_name(result)
    assert {
        "raw_pool_accounting",
        "rated_pool_accounting",
        "rated_pool_score_ranges",
        "rated_pool_no_empty_text",
        "quality_split_accounting",
        "raw_pool_unique_ids",
    } <= set(checks)
    assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items() if not c.passed}

    rated = query("select * from rated_pool where source = 'humaneval'")
    assert len(rated) == 164 and (rated["status"] == "ok").all()
    assert rated["overall"].between(1, 10).all()
    assert (rated["overall_compressed"] == rated["overall"].clip(4, 9) - 4).all()
    assert set(rated["judge_model"]) == {"heuristic-v1"}
    high = query("select count(*) n from high_quality_pool where source = 'humaneval'")["n"][0]
    low = query("select count(*) n from low_quality_pool where source = 'humaneval'")["n"][0]
    assert high + low == 164 and high > low  # reference solutions rate high under the heuristic
    assert query("select min(overall_compressed) m from high_quality_pool")["m"][0] >= 4

    mats = result.asset_materializations_for_node("rated_pool")
    md = mats[0].metadata
    assert md["dagster/row_count"].value == 164 and md["judge_rows_sent"].value == 164
    assert md["score_histogram"].value.startswith("![")


def test_second_run_is_answered_from_the_judge_cache(resources):
    materialize_source("humaneval", resources)
    again = materialize_source("humaneval", resources)
    md = again.asset_materializations_for_node("rated_pool")[0].metadata
    assert md["judge_rows_sent"].value == 0 and md["cache_hits"].value == 164


def test_threshold_is_launchpad_config(resources, query):
    # One threshold, one config: the split step writes both pools (tests/test_split_threshold.py has the rest).
    config = {"ops": {"quality_split": {"config": {"quality_threshold": 5}}}}
    result = materialize_source("humaneval", resources, run_config=config)
    assert checks_by_name(result)["quality_split_accounting"].passed
    assert query("select min(overall) m from high_quality_pool")["m"][0] == 9  # compressed 5 == Overall >= 9


def _user_manifest(tmp_path, name, path, extra=""):
    m = tmp_path / "manifest.yaml"
    m.write_text(f"sources:\n  {name}:\n    path: {path}\n{extra}")
    return str(m)


def test_bad_input_file_through_dagster_accounting_exact(tmp_path, resources, query):
    bad = write_bad_jsonl(tmp_path / "bad.jsonl")
    # A user manifest can be chosen per run in the launchpad; the partition name must exist in it.
    manifest = _user_manifest(tmp_path, "chatterbot", bad)
    config = {"ops": {"ingest_pool_source": {"config": {"manifest": manifest, "max_rejected_fraction": 0.7}}}}
    result = materialize_source("chatterbot", resources, run_config=config)
    assert result.success and all(c.passed for c in checks_by_name(result).values())
    rejected = query("select position, reason from rejected_rows where source = 'chatterbot' order by position")
    assert list(rejected["position"]) == sorted(EXPECTED_REJECTIONS)
    log = query("select * from ingest_log where source = 'chatterbot'").iloc[0]
    assert (log.input_rows, log.ingested, log.duplicates) == (
        EXPECTED_INPUT_ROWS,
        EXPECTED_INGESTED,
        EXPECTED_DUPLICATES,
    )
    assert query("select count(*) n from rated_pool where source = 'chatterbot'")["n"][0] == EXPECTED_INGESTED


def test_too_many_rejections_fail_the_partition_with_reasons(tmp_path, resources, query):
    bad = write_bad_jsonl(tmp_path / "bad.jsonl")  # 9 of 15 rows rejected = 60%
    config = {"ops": {"ingest_pool_source": {"config": {"manifest": _user_manifest(tmp_path, "chatterbot", bad)}}}}
    result = materialize_source("chatterbot", resources, run_config=config, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "9 of 15 rows rejected" in message and "max_rejected_fraction" in message
    # nothing of the failed attempt enters the accounted tables; its rejected rows are kept as evidence
    assert query("select count(*) n from failed_ingest_rejections where source = 'chatterbot'")["n"][0] == 9


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("path: /nonexistent/pool.jsonl", "file not found: /nonexistent/pool.jsonl"),
        ("hf: nobody/no-such-dataset", "could not load Hugging Face dataset"),
    ],
)
def test_source_level_problems_fail_with_an_actionable_error(tmp_path, resources, entry, expected):
    m = tmp_path / "m.yaml"
    m.write_text(f"sources:\n  humaneval:\n    {entry}\n")
    config = {"ops": {"ingest_pool_source": {"config": {"manifest": str(m)}}}}
    result = materialize_source("humaneval", resources, run_config=config, raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert expected in str(failure.event_specific_data.error)


def test_unknown_source_in_manifest_names_the_known_ones(tmp_path, resources):
    m = tmp_path / "m.yaml"
    m.write_text(f"sources:\n  mine:\n    path: {tmp_path / 'x.jsonl'}\n")
    config = {"ops": {"ingest_pool_source": {"config": {"manifest": str(m)}}}}
    result = materialize_source("humaneval", resources, run_config=config, raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "source 'humaneval' is not in the pool manifest" in str(failure.event_specific_data.error)
    assert "mine" in str(failure.event_specific_data.error)


def test_partitions_follow_the_manifest_env(tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text("sources:\n  alpha:\n    path: a.jsonl\n  beta:\n    hf: org/beta\n")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from lm_mixup_assets.partitions import source_partitions as p; print(p.get_partition_keys())",
        ],
        env={**__import__("os").environ, "LM_MIXUP_POOL_MANIFEST": str(m)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "['alpha', 'beta']"


def test_pool_summary_across_sources(resources, query):
    for source in ("humaneval", "chatterbot"):
        materialize_source(source, resources)
    summary_asset = [
        a
        for a in definitions.defs.assets
        if a.partitions_def is None and "pool_summary" in {k.path[-1] for k in a.keys}
    ]
    result = dg.materialize(summary_asset, resources=resources)
    assert result.success
    s = query("select * from pool_summary order by source").set_index("source")
    assert list(s.index) == ["chatterbot", "humaneval"]
    assert (s["input_rows"] == s["raw"] + s["rejected"] + s["duplicates"]).all()
    assert (s["rated_ok"] + s["rated_failed"] == s["raw"]).all()
    assert (s["high"] + s["low"] == s["rated_ok"]).all()
    assert s.loc["chatterbot", "duplicates"] > 1000  # tech_support.yml repeats the same pairs
    md = result.asset_materializations_for_node("pool_summary")[0].metadata
    assert md["score_histograms"].value.startswith("![")
