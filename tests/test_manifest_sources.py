"""Real pools in the manifest: several files per source, list and expression filters, the
instruction/input join, and clear errors for LFS pointers and mappings that match nothing."""

import json

import pandas as pd
import pytest

from lm_mixup_assets.lib.ingest import SourceError, ingest_source, load_scores_file
from lm_mixup_assets.lib.manifest import ManifestError, PrecomputedSpec, load_manifest

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345678\n"
)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def manifest(tmp_path, body):
    m = tmp_path / "pool.yaml"
    m.write_text("sources:\n  mine:\n" + "".join(f"    {line}\n" for line in body.strip().splitlines()))
    return load_manifest(str(m)).source("mine")


def pair(i):
    return {"prompt": f"question {i}?", "completion": f"answer {i}."}


def test_two_jsonl_shards_by_glob_keep_per_file_accounting(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    # shard 2 is named so that it sorts after shard 1; its line 2 repeats shard 1's line 1
    write_jsonl(data / "train-00001.jsonl", [pair(1), {"prompt": "no answer"}, pair(2)])
    write_jsonl(data / "train-00002.jsonl", [pair(3), pair(1), pair(4)])
    write_jsonl(data / "other.jsonl", [pair(99)])  # not matched by the glob
    spec = manifest(tmp_path, "path: data/train-*.jsonl")
    assert spec.format == "jsonl"
    r = ingest_source(spec)
    assert (r.input_rows, len(r.rows), len(r.rejected), r.duplicates) == (6, 4, 1, 1)
    shard1, shard2 = str(data / "train-00001.jsonl"), str(data / "train-00002.jsonl")
    got = list(zip(r.rows["file"], r.rows["position"], r.rows["locator"], r.rows["prompt"]))
    assert got == [
        (shard1, 1, "train-00001.jsonl line 1", "question 1?"),
        (shard1, 3, "train-00001.jsonl line 3", "question 2?"),
        (shard2, 1, "train-00002.jsonl line 1", "question 3?"),
        (shard2, 3, "train-00002.jsonl line 3", "question 4?"),
    ]
    assert r.rows.set_index("prompt").loc["question 1?", "duplicate_count"] == 1  # shard 2 line 2
    assert r.rejected[["file", "position", "locator", "reason"]].values.tolist() == [
        [shard1, 2, "train-00001.jsonl line 2", "missing completion"]
    ]


def test_a_list_of_files_and_globs_with_parquet_shards(tmp_path):
    for i in (1, 2):
        pd.DataFrame(
            {"instruction": [f"task {i}a", f"task {i}b"], "input": ["", "ctx"], "output": [f"out {i}a", f"out {i}b"]}
        ).to_parquet(tmp_path / f"part-{i}.parquet")
    write_jsonl(tmp_path / "extra.jsonl", [pair(7)])
    spec = manifest(tmp_path, "path: [extra.jsonl, 'part-*.parquet']")
    assert spec.format is None  # mixed formats: each file read by its own extension
    r = ingest_source(spec)
    assert list(r.rows["prompt"]) == ["question 7?", "task 1a", "task 1b\n\nctx", "task 2a", "task 2b\n\nctx"]
    assert list(r.rows["locator"]) == [
        "extra.jsonl line 1",
        "part-1.parquet row 1",
        "part-1.parquet row 2",
        "part-2.parquet row 1",
        "part-2.parquet row 2",
    ]
    assert r.formats == {"prompt_completion": 1, "instruction": 4}


def test_a_glob_that_matches_nothing_is_a_source_error(tmp_path):
    spec = manifest(tmp_path, "path: shards/*.parquet")
    with pytest.raises(SourceError, match=r"the glob .*shards/\*\.parquet matches no files"):
        ingest_source(spec)


DOLLY = [
    {"instruction": "What is a llama?", "context": "", "response": "An animal.", "category": "open_qa"},
    {"instruction": "Summarise", "context": "Long text.", "response": "Short.", "category": "summarization"},
    {"instruction": "Who wrote Hamlet?", "context": "", "response": "Shakespeare.", "category": "closed_qa"},
    {"instruction": "Brainstorm names", "context": "", "response": "A, B", "category": "brainstorming"},
    {"instruction": "Capital of Peru?", "context": "", "response": "Lima", "category": "open_qa"},
]
DOLLY_FIELDS = "fields: {input: context, output: response}"


def test_filter_on_a_list_of_values(tmp_path):
    write_jsonl(tmp_path / "dolly.jsonl", DOLLY)
    spec = manifest(
        tmp_path, f"path: dolly.jsonl\n{DOLLY_FIELDS}\nfilter: {{column: category, value: [open_qa, closed_qa]}}"
    )
    assert spec.filter_value == ("open_qa", "closed_qa")
    r = ingest_source(spec)
    assert r.input_rows == 3  # rows outside the slice are not input rows of this source
    assert list(r.rows["position"]) == [1, 3, 5]
    assert list(r.rows["completion"]) == ["An animal.", "Shakespeare.", "Lima"]


def test_filter_by_a_duckdb_expression(tmp_path):
    write_jsonl(tmp_path / "dolly.jsonl", DOLLY + [[1, 2]])  # a non-object row belongs to no slice
    spec = manifest(
        tmp_path,
        f"path: dolly.jsonl\n{DOLLY_FIELDS}\nfilter: {{expression: \"category like '%qa' and length(response) > 4\"}}",
    )
    r = ingest_source(spec)
    assert r.input_rows == 2 and list(r.rows["position"]) == [1, 3]  # 'Lima' is 4 characters


def test_expression_filter_reaches_nested_columns_and_survives_mixed_types(tmp_path):
    rows = [
        {"meta": {"lang": "en"}, "prompt": "hi", "completion": "hello", "n": 1},
        {"meta": {"lang": "fr"}, "prompt": "salut", "completion": "bonjour", "n": 2},
        {"meta": {"lang": "en"}, "prompt": "bye", "completion": "goodbye", "n": "three"},  # n: mixed type
    ]
    write_jsonl(tmp_path / "m.jsonl", rows)
    r = ingest_source(manifest(tmp_path, "path: m.jsonl\nfilter: {expression: \"meta.lang = 'en'\"}"))
    assert list(r.rows["prompt"]) == ["hi", "bye"]


def test_expression_filter_errors_are_clear_and_safe(tmp_path):
    write_jsonl(tmp_path / "dolly.jsonl", DOLLY)
    spec = manifest(tmp_path, "path: dolly.jsonl\nfilter: {expression: \"categroy = 'open_qa'\"}")
    with pytest.raises(SourceError, match="categroy.*the records have: category, context, instruction, response"):
        ingest_source(spec)
    spec = manifest(
        tmp_path, "path: dolly.jsonl\nfilter: {expression: \"(select count(*) from read_csv('/etc/hostname')) > 0\"}"
    )
    with pytest.raises(SourceError, match="may only use the records' columns"):
        ingest_source(spec)
    with pytest.raises(ManifestError, match="one SQL expression, not several statements"):
        manifest(tmp_path, 'path: dolly.jsonl\nfilter: {expression: "true) from records; drop table x; select (1"}')
    with pytest.raises(ManifestError, match="not a valid DuckDB SQL expression"):
        manifest(tmp_path, "path: dolly.jsonl\nfilter: {expression: \"category = = 'x'\"}")


def test_a_filter_column_no_record_has_lists_the_columns(tmp_path):
    write_jsonl(tmp_path / "dolly.jsonl", DOLLY)
    spec = manifest(tmp_path, "path: dolly.jsonl\nfilter: {column: dataset, value: dolly}")
    with pytest.raises(
        SourceError, match="'dataset' is not a column of any record; the records have: category, context"
    ):
        ingest_source(spec)


@pytest.mark.parametrize(
    "join, expected",
    [
        (None, "Summarise\n\nLong text."),  # the default: a blank line
        ('" "', "Summarise Long text."),
        ('"{instruction}\\n\\nInput: {input}"', "Summarise\n\nInput: Long text."),
        (
            '"### Instruction:\\n{instruction}\\n### Input:\\n{input}"',
            "### Instruction:\nSummarise\n### Input:\nLong text.",
        ),
    ],
)
def test_instruction_and_input_join_is_configurable(tmp_path, join, expected):
    write_jsonl(tmp_path / "dolly.jsonl", DOLLY[:2])
    spec = manifest(tmp_path, f"path: dolly.jsonl\n{DOLLY_FIELDS}" + (f"\ninput_join: {join}" if join else ""))
    prompts = list(ingest_source(spec).rows["prompt"])
    assert prompts == ["What is a llama?", expected]  # an empty input never gets the join


def test_a_bad_join_template_is_a_manifest_error(tmp_path):
    with pytest.raises(
        ManifestError, match=r"exactly \{instruction\} and \{input\}, got \['instruction', 'question'\]"
    ):
        manifest(tmp_path, 'path: a.jsonl\ninput_join: "{instruction} {question}"')


def test_a_git_lfs_pointer_is_a_source_error_saying_how_to_fetch_it(tmp_path):
    (tmp_path / "train.jsonl").write_text(LFS_POINTER)
    with pytest.raises(
        SourceError,
        match=r"train.jsonl is a Git LFS pointer file, not the data \(the real file has 12345678 "
        r"bytes\).*git lfs pull",
    ):
        ingest_source(manifest(tmp_path, "path: train.jsonl"))
    (tmp_path / "scores.pt").write_text(LFS_POINTER)  # DS2's released scores are a common case
    pre = PrecomputedSpec(judge_model="x", scores_file=str(tmp_path / "scores.pt"), file_holds="overall_compressed")
    with pytest.raises(SourceError, match="scores_file: .*scores.pt is a Git LFS pointer"):
        load_scores_file(pre, "mine")


def test_a_fields_mapping_that_matches_nothing_lists_the_file_columns(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"question": "q?", "answer_text": "a.", "id": 1}] * 3)
    spec = manifest(tmp_path, "path: qa.jsonl\nfields: {prompt: question, completion: answer}")
    with pytest.raises(
        SourceError,
        match=r"completion -> 'answer' matches no column of any record; "
        r"the records have: answer_text, id, question",
    ):
        ingest_source(spec)


def test_scores_file_entries_align_across_shards_before_the_filter(tmp_path):
    write_jsonl(tmp_path / "a-1.jsonl", [{**pair(1), "k": "x"}, {**pair(2), "k": "y"}])
    write_jsonl(tmp_path / "a-2.jsonl", [{**pair(3), "k": "x"}])
    (tmp_path / "scores.json").write_text("[5, 0, 3]")  # record 1, 2, 3 over both shards
    spec = manifest(
        tmp_path,
        "path: a-*.jsonl\nfilter: {column: k, value: x}\nprecomputed:\n"
        "  judge_model: m\n  scores_file: {path: scores.json, holds: overall_compressed}",
    )
    r = ingest_source(spec)
    got = r.precomputed.merge(r.rows[["sample_id", "prompt"]], on="sample_id").set_index("prompt")["overall_compressed"]
    assert got.to_dict() == {"question 1?": 5, "question 3?": 3}
