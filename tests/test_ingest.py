"""Ingest on its own: every input format, every kind of bad row, source-level errors."""

import json

import pandas as pd
import pytest

from lm_mixup_assets.lib.ingest import RowError, SourceError, ingest_source, make_sample_id, record_to_pair
from lm_mixup_assets.lib.manifest import ManifestError, SourceSpec, load_manifest
from tests.bad_input import (
    EXPECTED_DUPLICATES,
    EXPECTED_INGESTED,
    EXPECTED_INPUT_ROWS,
    EXPECTED_REJECTIONS,
    write_bad_jsonl,
    write_good_jsonl,
)


def spec(path, **kw):
    fmt = kw.pop("format", None) or path.suffix.lstrip(".")
    return SourceSpec(name=kw.pop("name", "user"), path=str(path), format=fmt, **kw)


def test_bad_jsonl_every_row_accounted_for_with_position_and_reason(tmp_path):
    result = ingest_source(spec(write_bad_jsonl(tmp_path / "bad.jsonl")))
    assert result.input_rows == EXPECTED_INPUT_ROWS
    assert len(result.rows) == EXPECTED_INGESTED
    assert result.duplicates == EXPECTED_DUPLICATES
    assert result.input_rows == len(result.rows) + len(result.rejected) + result.duplicates
    reasons = dict(zip(result.rejected["position"], result.rejected["reason"]))
    assert set(reasons) == set(EXPECTED_REJECTIONS)
    for line, fragment in EXPECTED_REJECTIONS.items():
        assert fragment in reasons[line], (line, reasons[line])
    assert (result.rejected["locator"] == [f"line {p}" for p in result.rejected["position"]]).all()
    # raw text is kept (truncated) so a person can see the row; invalid bytes stay visible, escaped
    raw7 = result.rejected.set_index("position").loc[7, "raw_text"]
    assert "caf\\xe9" in raw7
    assert result.rejected["raw_text"].str.len().max() <= 500


def test_normalisation_bom_crlf_and_duplicates(tmp_path):
    rows = ingest_source(spec(write_bad_jsonl(tmp_path / "bad.jsonl"))).rows.set_index("position")
    assert rows.loc[1, "prompt"] == "What is 2+2?"  # BOM gone
    assert rows.loc[1, "duplicate_count"] == 2  # line 10 exact, line 11 after normalising
    assert rows.loc[2, "prompt"] == "Name a colour." and "\r" not in rows.loc[2, "completion"]
    assert rows.loc[12, "prompt"] == "Capital of France?" and rows.loc[12, "completion"] == "Paris."
    assert rows.loc[13, "prompt"] == "Translate to French\n\ncat" and rows.loc[13, "input_format"] == "instruction"
    assert rows.loc[1, "sample_id"] == make_sample_id("user", "What is 2+2?", "2+2 equals 4.")


def test_sample_id_is_stable_and_source_scoped():
    a = make_sample_id("s1", "p", "c")
    assert a == make_sample_id("s1", "p", "c")
    assert a != make_sample_id("s2", "p", "c")
    assert a != make_sample_id("s1", "p", "c2")


def test_csv_json_parquet_and_field_mapping(tmp_path):
    csv = tmp_path / "pool.csv"
    csv.write_text(
        'question,answer\r\n"What is DNA?","A molecule."\r\n"Empty answer?",\r\n"x","y",extra\r\n', encoding="utf-8"
    )
    r = ingest_source(spec(csv, fields={"prompt": "question", "completion": "answer"}))
    assert len(r.rows) == 1 and r.rows.loc[0, "prompt"] == "What is DNA?"
    assert list(r.rejected["reason"]) == ["empty completion", "row has more fields than the header"]
    assert list(r.rejected["position"]) == [2, 3]

    js = tmp_path / "pool.json"
    js.write_text(json.dumps({"data": [{"prompt": "a?", "completion": "b."}, {"prompt": "c?", "completion": None}]}))
    r = ingest_source(spec(js))
    assert len(r.rows) == 1 and list(r.rejected["reason"]) == ["missing completion"]

    pq = tmp_path / "pool.parquet"
    pd.DataFrame(
        {
            "instruction": ["Add 2 and 3", "Say hi"],
            "input": ["", None],
            "output": ["5", "hi"],
            "origin": ["math", "chat"],
        }
    ).to_parquet(pq)
    r = ingest_source(spec(pq, filter_column="origin", filter_value="math"))
    assert r.input_rows == 1 and r.rows.loc[0, "prompt"] == "Add 2 and 3"


def test_record_layouts():
    assert record_to_pair({"prompt": " p ", "completion": "c"})[:2] == ("p", "c")
    p, c, fmt = record_to_pair(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "how are you?"},
                {"role": "assistant", "content": "fine"},
            ]
        }
    )
    assert fmt == "messages" and c == "fine" and p.startswith("User: hi")
    with pytest.raises(RowError, match="no prompt/completion"):
        record_to_pair({"question": "q", "answer": "a"})
    with pytest.raises(RowError, match="input has type"):
        record_to_pair({"instruction": "i", "input": 3, "output": "o"})


def test_source_level_errors_are_actionable(tmp_path, monkeypatch):
    with pytest.raises(SourceError, match="file not found: .*missing.jsonl"):
        ingest_source(spec(tmp_path / "missing.jsonl"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SourceError, match="not valid JSON"):
        ingest_source(spec(broken))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SourceError, match="could not load Hugging Face dataset 'nobody/no-such-dataset'.*Offline"):
        ingest_source(SourceSpec(name="hf", hf="nobody/no-such-dataset"))


def test_manifest_validation(tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text("sources:\n  mine:\n    path: data.jsonl\n    fields: {prompt: q, completion: a}\n")
    manifest = load_manifest(str(m))
    assert manifest.sources["mine"].path == str(tmp_path / "data.jsonl")
    assert manifest.sources["mine"].format == "jsonl"
    with pytest.raises(ManifestError, match="source 'other' is not in the pool manifest.*mine"):
        manifest.source("other")
    m.write_text("sources:\n  mine:\n    path: a.jsonl\n    hf: x/y\n")
    with pytest.raises(ManifestError, match="exactly one of builtin/path/hf"):
        load_manifest(str(m))
    m.write_text("sources:\n  mine:\n    path: a.txt\n")
    with pytest.raises(ManifestError, match="cannot tell the format"):
        load_manifest(str(m))
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(str(tmp_path / "nope.yaml"))


def test_demo_sources_ingest():
    m = load_manifest("demo")
    assert set(m.sources) == {"chatterbot", "chitchat", "humaneval"}
    he = ingest_source(m.source("humaneval"))
    assert len(he.rows) == 164 and he.rejected.empty
    assert he.rows["completion"].str.contains("return").mean() > 0.9
    cc = ingest_source(m.source("chitchat"))
    assert cc.input_rows == 1500  # capped by the manifest's limit


# --------------------------------------------------------------------------- through Dagster: one transaction


def _ingest_run(tmp_path, resources, data, selection=None):
    """Materialise the ingest step (and raw_pool's checks) for partition chatterbot from ``data``."""
    import dagster as dg

    import definitions

    m = tmp_path / "m.yaml"
    m.write_text(f"sources:\n  chatterbot:\n    path: {data}\n")
    config = {"ops": {"ingest_pool_source": {"config": {"manifest": str(m)}}}}
    ingest = [
        a for a in definitions.defs.assets if isinstance(a, dg.AssetsDefinition) and dg.AssetKey("raw_pool") in a.keys
    ]
    checks = [
        c for c in definitions.defs.asset_checks if {k.asset_key for k in c.check_keys} == {dg.AssetKey("raw_pool")}
    ]
    return dg.materialize(
        [*ingest, *checks],
        resources=resources,
        partition_key="chatterbot",
        run_config=config,
        raise_on_error=False,
        selection=selection,
    )


def _ingest_state(query):
    log = query("select input_rows, ingested, rejected, duplicates from ingest_log where source = 'chatterbot'")
    raw = query("select count(*) n from raw_pool where source = 'chatterbot'")["n"][0]
    rejected = query("select count(*) n from rejected_rows where source = 'chatterbot'")["n"][0]
    return tuple(log.iloc[0]), raw, rejected


def test_a_failed_reingest_leaves_the_previous_state_whole(tmp_path, resources, query):
    good = write_good_jsonl(tmp_path / "good.jsonl", n=2)
    assert _ingest_run(tmp_path, resources, good).success
    before = _ingest_state(query)
    assert before == ((2, 2, 0, 0), 2, 0)

    bad = write_bad_jsonl(tmp_path / "bad.jsonl")  # 9 of 15 rejected > the default 50%
    result = _ingest_run(tmp_path, resources, bad)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error
    assert "9 of 15 rows rejected" in str(failure) and "Nothing was written" in str(failure)
    # nothing of the failed attempt reached the accounted tables: log and tables still agree, 2 = 2 + 0 + 0
    assert _ingest_state(query) == before
    # the attempt's rejected rows are kept as evidence, outside the accounting
    evidence = query(
        "select position, reason from failed_ingest_rejections where source = 'chatterbot' order by position"
    )
    assert list(evidence["position"]) == sorted(EXPECTED_REJECTIONS)

    # a good re-ingest replaces everything at once and clears the evidence
    assert _ingest_run(tmp_path, resources, write_good_jsonl(tmp_path / "good3.jsonl", n=3)).success
    assert _ingest_state(query) == ((3, 3, 0, 0), 3, 0)
    assert query("select count(*) n from failed_ingest_rejections")["n"][0] == 0


def test_a_source_error_on_reingest_changes_nothing(tmp_path, resources, query):
    assert _ingest_run(tmp_path, resources, write_good_jsonl(tmp_path / "good.jsonl", n=2)).success
    lfs = tmp_path / "lfs.jsonl"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 99\n")
    result = _ingest_run(tmp_path, resources, lfs)
    assert not result.success
    assert "Git LFS pointer" in str(
        next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error
    )
    assert _ingest_state(query) == ((2, 2, 0, 0), 2, 0)


def test_ingest_tables_from_before_the_file_column_gain_it(tmp_path, resources, home, query):
    import duckdb

    con = duckdb.connect(str(home / "warehouse.duckdb"))
    con.execute(
        "create table raw_pool (source varchar, sample_id varchar, position bigint, locator varchar, prompt varchar,"
        " completion varchar, input_format varchar, duplicate_count bigint)"
    )
    con.execute("insert into raw_pool values ('other', 'x', 1, 'line 1', 'p', 'c', 'prompt_completion', 0)")
    con.close()
    assert _ingest_run(tmp_path, resources, write_good_jsonl(tmp_path / "good.jsonl", n=2)).success
    got = query("select source, coalesce(file, '(none)') file from raw_pool order by source, position")
    assert got.values.tolist() == [["chatterbot", str(tmp_path / "good.jsonl")]] * 2 + [["other", "(none)"]]


def test_raw_pool_can_be_materialised_without_rejected_rows(tmp_path, resources, query):
    result = _ingest_run(tmp_path, resources, write_good_jsonl(tmp_path / "good.jsonl", n=2), selection=["raw_pool"])
    assert result.success
    assert [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()] == ["raw_pool"]
    assert _ingest_state(query) == ((2, 2, 0, 0), 2, 0)  # written together all the same
