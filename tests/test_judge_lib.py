"""Rubric parsing, compression, the heuristic judge and the SQL model layer, without Dagster."""

import duckdb
import pandas as pd
import pytest

from lm_mixup_assets.lib.heuristic_judge import score_pair
from lm_mixup_assets.lib.rubric import (
    JudgeParseError,
    compress_overall,
    judge_cache_key,
    parse_judge_answer,
    render_judge_prompt,
)
from lm_mixup_assets.lib.sql_models import SqlModelError, materialise_model, parse_model


@pytest.mark.parametrize(
    "text",
    [
        '{"Rarity": 3, "Complexity": 4, "Informativeness": 5, "Overall": 6}',
        'Sure! ```json\n{"rarity": "3", "complexity": 4.0, "informativeness": 5, "overall": 6}\n```',
        'Scores: {"RARITY": 3, "Complexity": 4, "Informativeness": 5, "Overall": 6} hope this helps',
    ],
)
def test_parse_accepts_wrapped_json(text):
    assert parse_judge_answer(text) == {"rarity": 3, "complexity": 4, "informativeness": 5, "overall": 6}


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty"),
        ("I would rate this highly.", "no JSON object"),
        ('{"Rarity": 3, "Complexity": 4, "Informativeness": 5}', "missing key 'overall'"),
        ('{"Rarity": 11, "Complexity": 4, "Informativeness": 5, "Overall": 6}', "outside 1-10"),
        ('{"Rarity": 3.5, "Complexity": 4, "Informativeness": 5, "Overall": 6}', "not an integer"),
        ('{"Rarity": true, "Complexity": 4, "Informativeness": 5, "Overall": 6}', "boolean"),
        ("[3, 4, 5, 6]", "not an object"),
    ],
)
def test_parse_rejects_garbage_instead_of_guessing(text, why):
    with pytest.raises(JudgeParseError, match=why):
        parse_judge_answer(text)


def test_compression_matches_the_method():
    assert [compress_overall(o) for o in range(1, 11)] == [0, 0, 0, 0, 1, 2, 3, 4, 5, 5]


def test_prompt_and_cache_key():
    rendered = render_judge_prompt("What is {x}?", "A {json} answer")
    assert "What is {x}?" in rendered and '"Rarity": <int>' in rendered
    k = judge_cache_key("openai", "gpt-4o-mini", "pool_quality_v1", rendered)
    assert k != judge_cache_key("openai", "gpt-4o", "pool_quality_v1", rendered)
    assert k == judge_cache_key("openai", "gpt-4o-mini", "pool_quality_v1", rendered)


def test_heuristic_judge_orders_rows_sensibly():
    weak = score_pair("What is photosynthesis?", "plants")
    strong = score_pair(
        "Explain photosynthesis and why it matters for life on Earth.",
        "Photosynthesis is the process by which plants, algae and cyanobacteria convert light energy into chemical "
        "energy.\n1. Light reactions in the thylakoid membranes split water, releasing oxygen and producing ATP and NADPH.\n"
        "2. The Calvin cycle in the stroma fixes carbon dioxide into glucose using that ATP and NADPH.\n"
        "It matters because it supplies nearly all the oxygen in the atmosphere and the organic carbon at the base of "
        "almost every food chain.",
    )
    for key in ("rarity", "complexity", "informativeness", "overall"):
        assert 1 <= weak[key] <= 10 and 1 <= strong[key] <= 10
    assert strong["overall"] >= 8 > weak["overall"]
    assert score_pair("Say hi", "hi") == score_pair("Say hi", "hi")  # deterministic
    assert (
        score_pair("Repeat: the cat sat", "the cat sat")["overall"]
        < score_pair("Repeat: the cat sat", "The cat sat.")["overall"] + 1
    )


def test_sql_model_partitioned_ref_and_var(tmp_path):
    f = tmp_path / "big_things.sql"
    f.write_text(
        "-- description: big ones\n-- group: g\n-- partitioned_by: source\n-- var: min_size int 5\n"
        "select source, id, size from {{ ref('things') }} where size >= {{ var('min_size') }}\n"
    )
    model = parse_model(f)
    assert model.refs == ["things"] and model.group == "g" and model.vars == {"min_size": (int, 5)}
    con = duckdb.connect()
    con.register("t", pd.DataFrame({"source": ["a", "a", "b"], "id": [1, 2, 3], "size": [3, 9, 9]}))
    con.execute("create table things as select * from t")
    assert materialise_model(con, model, {}, "a") == 1
    assert materialise_model(con, model, {}, "b") == 1
    assert materialise_model(con, model, {"min_size": 1}, "a") == 2  # replaces only partition a
    assert con.execute("select source, count(*) from big_things group by 1 order by 1").fetchall() == [
        ("a", 2),
        ("b", 1),
    ]
    with pytest.raises(SqlModelError, match="not a int"):
        model.render({"min_size": "lots"}, "a")
    with pytest.raises(SqlModelError, match="partition value is required"):
        model.render({}, None)
    f.write_text("-- var: x int 1\nselect {{ var('y') }}\n")
    with pytest.raises(SqlModelError, match="var 'y' is used but not declared"):
        parse_model(f).render({})
