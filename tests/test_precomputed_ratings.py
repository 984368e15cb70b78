"""Ratings a source brings along (manifest `precomputed:`): validated at ingest, recorded without judge calls."""

import json

import pytest

from lm_mixup_assets.lib.ingest import ingest_source
from lm_mixup_assets.lib.manifest import ManifestError, load_manifest
from tests.helpers import checks_by_name, materialize_source

ROWS = [
    {"prompt": "What is 2+2?", "completion": "4.", "gpt_overall": 9, "gpt_rarity": 3},  # 1 ok, compressed 5
    {"prompt": "Name a colour.", "completion": "Blue.", "gpt_overall": "6", "gpt_rarity": 2},  # 2 ok, string int
    {"prompt": "Capital of France?", "completion": "Paris.", "gpt_rarity": 4},  # 3 no overall column
    {"prompt": "Say hi", "completion": "hi", "gpt_overall": 11, "gpt_rarity": 4},  # 4 out of range
    {"prompt": "Say bye", "completion": "bye", "gpt_overall": None, "gpt_rarity": 4},  # 5 empty
    {"prompt": "Add 1 and 1", "completion": "2", "gpt_overall": 7.5, "gpt_rarity": 4},  # 6 not an integer
    {
        "prompt": "Name a colour.",
        "completion": "Blue.",
        "gpt_overall": 8,
        "gpt_rarity": 2,
    },  # 7 duplicate of 2, other score
    {"prompt": "Spell cat", "completion": "c-a-t", "gpt_overall": 4, "gpt_rarity": 0},  # 8 rarity out of range
    {"prompt": "Largest planet?", "completion": "Jupiter.", "gpt_overall": 5},  # 9 no rarity column
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def manifest(tmp_path, name, path, precomputed):
    m = tmp_path / "manifest.yaml"
    m.write_text(
        f"sources:\n  {name}:\n    path: {path}\n    precomputed:\n"
        + "".join(f"      {line}\n" for line in precomputed.strip().splitlines())
    )
    return str(m)


COLUMNS = """judge_model: "gpt-4o-mini (test release)"
rubric_version: ds2
scores: {overall: gpt_overall, rarity: gpt_rarity}"""


def test_columns_bad_rows_rejected_with_reasons_and_nothing_defaulted(tmp_path):
    m = manifest(tmp_path, "user", write_jsonl(tmp_path / "pool.jsonl", ROWS), COLUMNS)
    result = ingest_source(load_manifest(m).source("user"))
    assert result.input_rows == 9 == len(result.rows) + len(result.rejected) + result.duplicates
    reasons = dict(zip(result.rejected["position"], result.rejected["reason"]))
    assert reasons == {
        3: "precomputed overall: column 'gpt_overall' is missing",
        4: "precomputed overall=11 outside 1-10 (column 'gpt_overall')",
        5: "precomputed overall (column 'gpt_overall') is empty",
        6: "precomputed overall=7.5 is not an integer (column 'gpt_overall')",
        8: "precomputed rarity=0 outside 1-10 (column 'gpt_rarity')",
        9: "precomputed rarity: column 'gpt_rarity' is missing",
    }
    assert result.duplicates == 1 and result.precomputed_conflicts == 1  # row 7 folded into row 2; row 2's score kept
    scores = result.precomputed.merge(result.rows[["sample_id", "position"]], on="sample_id").set_index("position")
    assert sorted(scores.index) == [1, 2]
    assert scores.loc[1, ["overall", "overall_compressed", "rarity"]].tolist() == [9, 5, 3]
    assert scores.loc[2, ["overall", "overall_compressed", "rarity"]].tolist() == [6, 2, 2]
    assert scores["complexity"].isna().all() and scores["informativeness"].isna().all()  # not named: not invented
    assert set(scores["judge_model"]) == {"gpt-4o-mini (test release)"} and set(scores["rubric_version"]) == {"ds2"}


def test_nested_columns_and_the_references_pre_rated_layout(tmp_path):
    rows = [
        {
            "prompt": "p1",
            "completion": "c1",
            "rating_detail": {
                "Rarity": 5,
                "Complexity": 6,
                "Informativeness": 7,
                "Overall": 8,
                "Overall_compressed": 4,
            },
        },
        {"prompt": "p2", "completion": "c2", "rating_detail": {"Rarity": 5}},
    ]
    m = manifest(
        tmp_path,
        "user",
        write_jsonl(tmp_path / "pool.jsonl", rows),
        """judge_model: gpt-4o-mini
scores: {overall: rating_detail.Overall, rarity: rating_detail.Rarity, complexity: rating_detail.Complexity, informativeness: rating_detail.Informativeness}""",
    )
    result = ingest_source(load_manifest(m).source("user"))
    assert result.precomputed[
        ["rarity", "complexity", "informativeness", "overall", "overall_compressed"]
    ].values.tolist() == [[5, 6, 7, 8, 4]]
    assert result.rejected["reason"].tolist() == ["precomputed overall: column 'rating_detail.Overall' is missing"]


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_scores_file_of_compressed_labels_aligned_by_position(tmp_path, suffix):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(1, 7)]
    labels = [5, 0, 4, 6, -1]  # DS2 released compressed labels 0-5; 6 and -1 are out of range, row 6 has none
    path = tmp_path / f"labels{suffix}"
    if suffix == ".pt":
        import torch

        torch.save(labels, path)
    else:
        path.write_text(json.dumps(labels))
    m = manifest(
        tmp_path,
        "user",
        write_jsonl(tmp_path / "pool.jsonl", rows),
        f"""judge_model: "gpt-4o-mini (DS2 release)"
rubric_version: ds2
scores_file: {{path: {path.name}, holds: overall_compressed}}""",
    )
    result = ingest_source(load_manifest(m).source("user"))
    assert dict(zip(result.rejected["position"], result.rejected["reason"])) == {
        4: "precomputed overall_compressed=6 outside 0-5 (scores_file entry 4)",
        5: "precomputed overall_compressed=-1 outside 0-5 (scores_file entry 5)",
        6: "precomputed scores: scores_file has 5 entries, none for position 6",
    }
    got = result.precomputed.merge(result.rows[["sample_id", "position"]], on="sample_id").sort_values("position")
    assert got["overall_compressed"].tolist() == [5, 0, 4] and got["overall"].isna().all()


def test_scores_file_with_ds2s_four_scores_rejects_its_failed_calls(tmp_path):
    rows = [{"prompt": "q1", "completion": "a1"}, {"prompt": "q2", "completion": "a2"}]
    (tmp_path / "scores.json").write_text(
        json.dumps([[3, 4, 5, 7], [0, 0, 0, 0]])
    )  # [0,0,0,0]: a failed call in DS2's output
    m = manifest(
        tmp_path,
        "user",
        write_jsonl(tmp_path / "pool.jsonl", rows),
        """judge_model: gpt-4o-mini
scores_file: {path: scores.json, holds: all_four}""",
    )
    result = ingest_source(load_manifest(m).source("user"))
    assert result.precomputed[
        ["rarity", "complexity", "informativeness", "overall", "overall_compressed"]
    ].values.tolist() == [[3, 4, 5, 7, 3]]
    assert result.rejected["reason"].tolist() == ["precomputed rarity=0 outside 1-10 (scores_file entry 2)"]


@pytest.mark.parametrize(
    "precomputed, why",
    [
        ("scores: {overall: x}", "judge_model"),
        ("judge_model: m\nscores: {overall: x, overall_compressed: y}", "exactly one of `overall`"),
        ("judge_model: m\nscores: {rarity: x}", "exactly one of `overall`"),
        ("judge_model: m\nscores: {overall: x, quality: y}", "unknown score names \\['quality'\\]"),
        (
            "judge_model: m\nscores: {overall: x}\nscores_file: {path: s.json, holds: overall}",
            "exactly one of `scores`",
        ),
        ("judge_model: m\nscores_file: {path: s.json, holds: overall_rating}", "`holds` must be one of"),
        ("judge_model: m\nscores_file: {path: s.csv, holds: overall}", "must end in one of"),
    ],
)
def test_manifest_validation(tmp_path, precomputed, why):
    m = manifest(tmp_path, "user", tmp_path / "pool.jsonl", precomputed)
    with pytest.raises(ManifestError, match=why):
        load_manifest(m)


def test_rated_pool_records_a_precomputed_judge_with_accounting_checks_green(tmp_path, resources, query):
    m = manifest(tmp_path, "chatterbot", write_jsonl(tmp_path / "pool.jsonl", ROWS), COLUMNS)
    config = {"ops": {"ingest_pool_source": {"config": {"manifest": m, "max_rejected_fraction": 0.9}}}}
    result = materialize_source("chatterbot", resources, run_config=config)
    checks = checks_by_name(result)
    assert {
        "raw_pool_accounting",
        "rated_pool_accounting",
        "rated_pool_score_ranges",
        "quality_split_accounting",
    } <= set(checks)
    assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items() if not c.passed}
    assert query("select count(*) n from rejected_rows where source = 'chatterbot'")["n"][0] == 6
    rated = query("select * from rated_pool where source = 'chatterbot' order by overall")
    assert rated["overall"].tolist() == [6, 9] and rated["overall_compressed"].tolist() == [2, 5]
    assert set(rated["status"]) == {"ok"} and set(rated["judge_backend"]) == {"precomputed"}
    assert set(rated["judge_model"]) == {"gpt-4o-mini (test release)"} and set(rated["rubric_version"]) == {"ds2"}
    assert (rated["prompt_tokens"] == 0).all() and rated["complexity"].isna().all()
    md = result.asset_materializations_for_node("rated_pool")[0].metadata
    assert md["judge_rows_sent"].value == 0 and md["rated_ok"].value == 2
    assert query("select count(*) n from high_quality_pool where source = 'chatterbot'")["n"][0] == 1
    assert query("select count(*) n from low_quality_pool where source = 'chatterbot'")["n"][0] == 1
    assert query("select count(*) n from information_schema.tables where table_name = 'judge_cache'")["n"][0] == 0


def test_compressed_only_labels_through_dagster_then_back_to_the_judge(tmp_path, resources, query):
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(1, 6)]
    (tmp_path / "labels.json").write_text(json.dumps([5, 4, 3, 0, 1]))
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    m = manifest(
        tmp_path,
        "chatterbot",
        pool,
        """judge_model: "gpt-4o-mini (DS2 release)"
rubric_version: ds2
scores_file: {path: labels.json, holds: overall_compressed}""",
    )
    result = materialize_source(
        "chatterbot", resources, run_config={"ops": {"ingest_pool_source": {"config": {"manifest": m}}}}
    )
    assert all(c.passed for c in checks_by_name(result).values())
    rated = query(
        "select overall, overall_compressed from rated_pool where source = 'chatterbot' order by overall_compressed"
    )
    assert rated["overall_compressed"].tolist() == [0, 1, 3, 4, 5] and rated["overall"].isna().all()
    assert query("select count(*) n from high_quality_pool where source = 'chatterbot'")["n"][0] == 2  # labels >= 4

    # Without `precomputed:` the same source is judged again (its stored ratings are replaced).
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"sources:\n  chatterbot:\n    path: {pool}\n")
    again = materialize_source(
        "chatterbot", resources, run_config={"ops": {"ingest_pool_source": {"config": {"manifest": str(plain)}}}}
    )
    assert all(c.passed for c in checks_by_name(again).values())
    rated = query("select * from rated_pool where source = 'chatterbot'")
    assert set(rated["judge_backend"]) == {"heuristic"} and rated["overall"].notna().all()
