"""The judge renders, looks up and sends a large pool one chunk at a time, with outcomes in input order."""

import pytest

from lm_mixup_assets.lib.rubric import RUBRIC_VERSION, get_rubric, judge_cache_key
from resources import JudgeResource, WarehouseResource
from tests.openai_server import OpenAICompatServer, expected_scores

ROWS = 130
CHUNK = 50  # 3 chunks: 50, 50, 30


@pytest.fixture(autouse=True)
def api_key_in_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")


def pairs(n: int, repeat: tuple[int, int] = (10, 120)) -> tuple[list[str], list[str]]:
    prompts = [f"Question {i}: what is {i} squared?" for i in range(n)]
    completions = [f"{i} squared is {i * i}." for i in range(n)]
    # a row repeated in a later chunk: answered from the cache the first chunk filled, not asked again
    first, again = repeat
    prompts[again], completions[again] = prompts[first], completions[first]
    return prompts, completions


def test_pool_larger_than_a_chunk_is_rated_in_order_with_progress_per_chunk(home):
    prompts, completions = pairs(ROWS)
    rubric = get_rubric(RUBRIC_VERSION)
    users = [rubric.render(p, c).user for p, c in zip(prompts, completions)]
    warehouse = WarehouseResource(home=str(home))
    with OpenAICompatServer(latency_s=0.01) as server:
        judge = JudgeResource(
            backend="openai", model="judge-test", base_url=server.base_url, concurrency=8, chunk_rows=CHUNK
        )
        lines: list[str] = []
        rating, keys = judge.rate_pairs(prompts, completions, warehouse, progress=lines.append)
        assert server.request_count() == ROWS - 1  # the repeated row was not paid twice
        assert [o.scores for o in rating.outcomes] == [expected_scores(u) for u in users]
        assert all(o.status == "ok" for o in rating.outcomes)
        assert keys == [judge_cache_key("openai", "judge-test", RUBRIC_VERSION, u, 0.0) for u in users]
        assert rating.from_cache == [i == 120 for i in range(ROWS)]
        assert rating.requests_made == ROWS - 1
        assert rating.stats["requests_sent"] == ROWS - 1  # counters summed over the chunks
        chunk_lines = [line for line in lines if line.startswith("judge chunk")]
        assert chunk_lines == [
            "judge chunk 1/3: rows 0-49 of 130",
            "judge chunk 2/3: rows 50-99 of 130",
            "judge chunk 3/3: rows 100-129 of 130",
        ]
        # each chunk reports its cache lookup before it sends anything
        assert sum("answered from the judge cache" in line for line in lines) == 3

        again, again_keys = judge.rate_pairs(prompts, completions, warehouse)
        assert server.request_count() == ROWS - 1  # everything from the cache
        assert again_keys == keys and all(again.from_cache)
        assert [o.scores for o in again.outcomes] == [o.scores for o in rating.outcomes]


def test_chunk_size_does_not_change_the_heuristic_outcomes(home):
    prompts, completions = pairs(40, repeat=(3, 35))
    one = JudgeResource(chunk_rows=4096).rate_pairs(prompts, completions, WarehouseResource(home=str(home / "a")))
    many = JudgeResource(chunk_rows=7).rate_pairs(prompts, completions, WarehouseResource(home=str(home / "b")))
    assert [o.scores for o in one[0].outcomes] == [o.scores for o in many[0].outcomes]
    assert one[1] == many[1] and len(many[0].outcomes) == 40
    assert many[0].from_cache == [i == 35 for i in range(40)]  # the repeat comes from an earlier chunk's answer


def test_a_chunk_answered_by_the_cache_adds_no_client_counters(home):
    prompts, completions = pairs(ROWS)
    warehouse = WarehouseResource(home=str(home))
    with OpenAICompatServer(latency_s=0.0) as server:
        judge = JudgeResource(
            backend="openai", model="judge-test", base_url=server.base_url, concurrency=8, chunk_rows=CHUNK
        )
        judge.rate_pairs(prompts[CHUNK : 2 * CHUNK], completions[CHUNK : 2 * CHUNK], warehouse)  # chunk 2 cached
        server.reset_stats()
        rating, _ = judge.rate_pairs(prompts, completions, warehouse)
        sent = server.request_count()
        assert sent == ROWS - CHUNK - 1  # chunks 1 and 3 only, the repeated row once
        assert rating.requests_made == sent
        assert rating.stats["requests_sent"] == sent  # the cached chunk did not count chunk 1's calls again
