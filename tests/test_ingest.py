"""Ingest on its own: every input format, every kind of bad row, source-level errors."""

import json

import pandas as pd
import pytest

from lm_mixup_assets.lib.ingest import SourceError, ingest_source, make_sample_id, record_to_pair, RowError
from lm_mixup_assets.lib.manifest import ManifestError, SourceSpec, load_manifest

from tests.bad_input import (EXPECTED_DUPLICATES, EXPECTED_INGESTED, EXPECTED_INPUT_ROWS, EXPECTED_REJECTIONS,
                        write_bad_jsonl)


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
    csv.write_text('question,answer\r\n"What is DNA?","A molecule."\r\n"Empty answer?",\r\n"x","y",extra\r\n', encoding="utf-8")
    r = ingest_source(spec(csv, fields={"prompt": "question", "completion": "answer"}))
    assert len(r.rows) == 1 and r.rows.loc[0, "prompt"] == "What is DNA?"
    assert list(r.rejected["reason"]) == ["empty completion", "row has more fields than the header"]
    assert list(r.rejected["position"]) == [2, 3]

    js = tmp_path / "pool.json"
    js.write_text(json.dumps({"data": [{"prompt": "a?", "completion": "b."}, {"prompt": "c?", "completion": None}]}))
    r = ingest_source(spec(js))
    assert len(r.rows) == 1 and list(r.rejected["reason"]) == ["missing completion"]

    pq = tmp_path / "pool.parquet"
    pd.DataFrame({"instruction": ["Add 2 and 3", "Say hi"], "input": ["", None], "output": ["5", "hi"],
                  "origin": ["math", "chat"]}).to_parquet(pq)
    r = ingest_source(spec(pq, filter_column="origin", filter_value="math"))
    assert r.input_rows == 1 and r.rows.loc[0, "prompt"] == "Add 2 and 3"


def test_record_layouts():
    assert record_to_pair({"prompt": " p ", "completion": "c"})[:2] == ("p", "c")
    p, c, fmt = record_to_pair({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                             {"role": "user", "content": "how are you?"}, {"role": "assistant", "content": "fine"}]})
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
