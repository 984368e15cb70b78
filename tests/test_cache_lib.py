"""lib/cache.py, the one write-through cache behind judge_cache and generation_cache, on each warehouse backend."""

import pytest

from lm_mixup_assets.lib.cache import CacheTable, answer_with_cache
from lm_mixup_assets.lib.generation import GENERATION_CACHE, GenerationOutcome
from lm_mixup_assets.lib.judging import JUDGE_CACHE

TABLE = CacheTable(
    "echo_cache",
    """create table if not exists echo_cache (
    cache_key varchar, text varchar, created_at timestamp)""",
    lambda r: ("ok", r.text),
)


# Both backends; the catalog's kind does not change the cache's SQL (the Postgres catalog: tests/test_warehouse.py).
pytestmark = pytest.mark.parametrize("warehouse_backend", ["duckdb", "ducklake"], indirect=True)


@pytest.fixture
def connect(warehouse_backend, home):
    from resources import warehouse_resource

    return warehouse_resource(home=str(home)).connect


def row_of(key, outcome):
    return {"text": outcome[1]} if outcome[0] == "ok" else None  # failures are not stored


def test_duplicates_asked_once_failures_asked_again_and_hits_free(connect):
    asked: list[list[str]] = []

    def answer(todo, on_result):
        asked.append(list(todo))
        out = [("failed", None) if r.startswith("bad") else ("ok", r.upper()) for r in todo]
        for i, o in enumerate(out):
            on_result(i, o)
        return out

    requests = ["a", "b", "a", "bad"]
    first = answer_with_cache(requests, requests, connect, TABLE, answer, row_of)
    assert asked == [["a", "b", "bad"]]  # "a" twice in the call, asked once
    assert first.outcomes == [("ok", "A"), ("ok", "B"), ("ok", "A"), ("failed", None)]
    assert first.from_cache == [False] * 4 and first.requests_made == 3 and first.cache_writes >= 1

    lines: list[str] = []
    again = answer_with_cache(requests, requests, connect, TABLE, answer, row_of, progress=lines.append)
    assert asked[-1] == ["bad"]  # only the failure is paid again
    assert again.from_cache == [True, True, True, False] and again.outcomes[:3] == first.outcomes[:3]
    assert lines[0] == "3 of 4 rows from the cache; asking 1"
    with connect() as con:
        rows = con.execute("select cache_key, text, created_at is not null from echo_cache order by 1").fetchall()
    assert rows == [("a", "A", True), ("b", "B", True)]


def test_answers_before_a_failure_are_kept(connect):

    def dies_after_two(todo, on_result):
        on_result(0, ("ok", "X"))
        on_result(1, ("ok", "Y"))
        raise RuntimeError("backend lost")

    with pytest.raises(RuntimeError, match="backend lost"):
        answer_with_cache(["x", "y", "z"], ["x", "y", "z"], connect, TABLE, dies_after_two, row_of)
    assert TABLE.lookup(connect, ["x", "y", "z"]) == {"x": ("ok", "X"), "y": ("ok", "Y")}


def test_no_keys_touch_no_table(connect):
    result = answer_with_cache([], [], connect, TABLE, lambda todo, cb: pytest.fail("nothing to ask"), row_of)
    assert result.outcomes == [] and result.requests_made == 0
    with connect() as con:
        assert con.execute(
            "select count(*) from information_schema.tables where table_catalog = current_database()"
        ).fetchone() == (0,)


def test_judge_and_generation_caches_are_two_tables_of_one_kind(connect):
    GENERATION_CACHE.store(
        connect,
        [
            {
                "cache_key": "k",
                "backend": "b",
                "model": "m",
                "params": "{}",
                "text": "hi",
                "prompt_tokens": 3,
                "completion_tokens": 1,
            }
        ],
    )
    assert GENERATION_CACHE.lookup(connect, ["k", "other"]) == {
        "k": GenerationOutcome(status="ok", raw_answer="hi", prompt_tokens=3, completion_tokens=1)
    }
    assert JUDGE_CACHE.lookup(connect, ["k"]) == {}  # keyed apart: another table


def test_storing_a_key_again_keeps_the_one_row(connect):
    # No key constraint (its index made every commit slow): the insert itself skips stored keys.
    TABLE.store(connect, [{"cache_key": "k", "text": "first"}, {"cache_key": "m", "text": "M"}])
    TABLE.store(connect, [{"cache_key": "k", "text": "again"}, {"cache_key": "n", "text": "N"}])
    with connect() as con:
        rows = con.execute("select cache_key, text from echo_cache order by 1").fetchall()
    assert rows == [("k", "first"), ("m", "M"), ("n", "N")]
