"""OpenAIJudgeClient against the local OpenAI-compatible server (tests/openai_server.py).

Fast: every server answers at once unless a test injects latency or a fault.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

try:
    from tests.openai_server import OpenAICompatServer, expected_scores
except ImportError:  # pytest run without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.openai_server import OpenAICompatServer, expected_scores

from lm_mixup_assets.lib import chat_transport
from lm_mixup_assets.lib.openai_judge import OpenAIJudgeClient
from lm_mixup_assets.lib.rubric import SYSTEM_PROMPT

pytestmark = pytest.mark.timeout(60)

API_KEY = "sk-test-SECRET-0123456789abcdef"
FAILED = ("parse_error", "api_error")


def make_client(srv: OpenAICompatServer, **kw) -> OpenAIJudgeClient:
    kw.setdefault("concurrency", 8)
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.1)
    return OpenAIJudgeClient(base_url=srv.base_url, api_key=kw.pop("api_key", API_KEY), model="judge-test", **kw)


def prompts(n: int, tag: str = "row") -> list[str]:
    return [f"{tag} {i}: rate this instruction/response pair" for i in range(n)]


def words(text: str) -> int:
    return max(1, len(text.split()))


def assert_no_invented_scores(outcomes) -> None:
    for o in outcomes:
        assert o.status in ("ok", *FAILED)
        if o.status == "ok":
            assert o.scores is not None and o.error is None
        else:
            assert o.scores is None and o.error
        assert API_KEY not in (o.error or "") and API_KEY not in repr(o)


# --------------------------------------------------------------------------- happy path


@pytest.mark.parametrize(
    "backend,uvloop",
    [("auto", None), ("httpx", False)],
    ids=["aiohttp+uvloop", "httpx+asyncio"],
)
def test_all_ok_returns_server_scores_and_tokens(backend, uvloop):
    ps = prompts(40)
    seen: dict[int, object] = {}
    with OpenAICompatServer() as srv:
        client = make_client(srv, http_backend=backend, use_uvloop=uvloop)
        outcomes = client.rate_all(ps, on_result=lambda i, o: seen.setdefault(i, o))
        assert srv.request_count() == len(ps)
    assert [o.status for o in outcomes] == ["ok"] * len(ps)
    for p, o in zip(ps, outcomes):
        assert o.scores == expected_scores(p)
        assert o.attempts == 1
        # The server counts whitespace words: system + user prompt, and the answer.
        assert o.prompt_tokens == words(SYSTEM_PROMPT) + words(p)
        assert o.completion_tokens == words(o.raw_answer)
    # on_result: once per row, with the very outcome returned
    assert sorted(seen) == list(range(len(ps)))
    assert all(seen[i] is outcomes[i] for i in seen)
    assert client.stats["requests_sent"] == len(ps) and client.stats["retries"] == 0


def test_empty_input_sends_nothing():
    with OpenAICompatServer() as srv:
        assert make_client(srv).rate_all([]) == []
        assert srv.request_count() == 0


# --------------------------------------------------------------------------- transport retries


def test_429_retry_after_is_honoured():
    ps = prompts(4)
    with OpenAICompatServer(faults={"row 2:": [{"status": 429, "retry_after": 1}]}) as srv:
        client = make_client(srv, backoff_max_s=5.0)
        t0 = time.perf_counter()
        outcomes = client.rate_all(ps)
        elapsed = time.perf_counter() - t0
        assert srv.prompt_count(ps[2]) == 2
    o = outcomes[2]
    assert o.status == "ok" and o.scores == expected_scores(ps[2])
    assert o.attempts == 2
    # The jittered backoff alone would be <= 0.01 s; Retry-After said 1 s.
    assert o.latency_s >= 1.0 and elapsed >= 1.0
    assert client.stats["rate_limited"] == 1 and client.stats["retries"] == 1


def test_retry_after_is_capped_by_backoff_max():
    ps = prompts(1)
    with OpenAICompatServer(faults={"row 0:": [{"status": 429, "retry_after": 120}]}) as srv:
        outcomes = make_client(srv, backoff_max_s=0.2).rate_all(ps)
    assert outcomes[0].status == "ok"
    assert outcomes[0].latency_s < 5.0


def test_5xx_is_retried():
    ps = prompts(6)
    faults = {"row 1:": [{"status": 500}, {"status": 503}], "row 4:": [{"status": 502}]}
    with OpenAICompatServer(faults=faults) as srv:
        client = make_client(srv)
        outcomes = client.rate_all(ps)
        assert srv.request_count() == len(ps) + 3
    assert all(o.status == "ok" for o in outcomes)
    assert [o.attempts for o in outcomes] == [1, 3, 1, 1, 2, 1]
    assert all(o.scores == expected_scores(p) for p, o in zip(ps, outcomes))
    assert client.stats["server_errors"] == 3 and client.stats["retries"] == 3


def test_5xx_until_retries_exhausted_is_api_error():
    ps = prompts(3)
    with OpenAICompatServer(faults={"row 1:": [{"status": 500, "sticky": True}]}) as srv:
        outcomes = make_client(srv, max_retries=2).rate_all(ps)
        assert srv.prompt_count(ps[1]) == 3
    o = outcomes[1]
    assert o.status == "api_error" and o.scores is None
    assert o.attempts == 3
    assert "500" in o.error and "gave up after 3 attempts" in o.error
    assert outcomes[0].status == outcomes[2].status == "ok"
    assert_no_invented_scores(outcomes)


BACKENDS = pytest.mark.parametrize("backend", ["auto", "httpx"])


@BACKENDS
def test_hang_beyond_timeout_is_retried_then_succeeds(backend):
    ps = prompts(3)
    with OpenAICompatServer(faults={"row 0:": [{"hang": 5}]}) as srv:
        client = make_client(srv, timeout_s=0.5, http_backend=backend)
        t0 = time.perf_counter()
        outcomes = client.rate_all(ps)
        assert time.perf_counter() - t0 < 4
        assert srv.prompt_count(ps[0]) == 2
    assert all(o.status == "ok" for o in outcomes)
    assert outcomes[0].attempts == 2 and outcomes[0].latency_s >= 0.5
    assert client.stats["timeouts"] == 1


def test_always_hanging_ends_api_error():
    ps = prompts(2)
    with OpenAICompatServer(faults={"row 1:": [{"hang": 10, "sticky": True}]}) as srv:
        client = make_client(srv, timeout_s=0.3, max_retries=1)
        outcomes = client.rate_all(ps)
    assert outcomes[0].status == "ok"
    o = outcomes[1]
    assert o.status == "api_error" and o.scores is None and o.attempts == 2
    assert "timed out" in o.error
    assert client.stats["timeouts"] == 2


@BACKENDS
def test_dropped_connection_is_retried(backend):
    ps = prompts(3)
    with OpenAICompatServer(faults={"row 2:": [{"drop": True}]}) as srv:
        client = make_client(srv, http_backend=backend)
        outcomes = client.rate_all(ps)
    assert all(o.status == "ok" for o in outcomes)
    assert outcomes[2].attempts == 2
    assert client.stats["connection_errors"] == 1


def test_unreachable_server_is_api_error():
    client = OpenAIJudgeClient(
        base_url="http://127.0.0.1:9/v1", api_key=API_KEY, model="m", max_retries=1, backoff_base_s=0.01, timeout_s=2
    )
    outcomes = client.rate_all(prompts(2))
    assert [o.status for o in outcomes] == ["api_error", "api_error"]
    assert all("connection error" in o.error for o in outcomes)
    assert_no_invented_scores(outcomes)


# --------------------------------------------------------------------------- not retried


def test_401_is_not_retried_and_key_is_not_leaked():
    ps = prompts(3)
    # The server echoes the presented key in its 401 message, like the real API does.
    with OpenAICompatServer(require_api_key="the-right-key") as srv:
        client = make_client(srv)
        outcomes = client.rate_all(ps)
        assert srv.request_count() == len(ps)  # one attempt per row, no retries
    for o in outcomes:
        assert o.status == "api_error" and o.scores is None and o.attempts == 1
        assert o.error.startswith("401 Unauthorized from http://127.0.0.1:")
        assert "check OPENAI_API_KEY" in o.error
        assert API_KEY not in o.error and "SECRET" not in o.error
    assert client.stats["client_errors"] == len(ps) and client.stats["retries"] == 0


@pytest.mark.parametrize("status", [400, 404, 422])
def test_other_4xx_not_retried(status):
    ps = prompts(2)
    with OpenAICompatServer(faults={"row 0:": [{"status": status, "sticky": True}]}) as srv:
        outcomes = make_client(srv).rate_all(ps)
        assert srv.prompt_count(ps[0]) == 1
    assert outcomes[0].status == "api_error" and outcomes[0].attempts == 1
    assert str(status) in outcomes[0].error
    assert outcomes[1].status == "ok"


# --------------------------------------------------------------------------- parse errors


def test_garbage_answer_is_reasked_then_ok():
    ps = prompts(2)
    with OpenAICompatServer(faults={"row 1:": [{"content": "not json at all"}]}) as srv:
        client = make_client(srv)
        outcomes = client.rate_all(ps)
    o = outcomes[1]
    assert o.status == "ok" and o.scores == expected_scores(ps[1]) and o.attempts == 2
    # tokens of the rejected answer are counted too: they were paid for
    assert o.completion_tokens == words("not json at all") + words(o.raw_answer)
    assert o.prompt_tokens == 2 * (words(SYSTEM_PROMPT) + words(ps[1]))
    assert client.stats["parse_retries"] == 1


def test_persistent_garbage_is_parse_error_without_scores():
    ps = prompts(2)
    faults = {"row 0:": [{"content": "not json at all", "sticky": True}]}
    with OpenAICompatServer(faults=faults) as srv:
        client = make_client(srv, max_parse_retries=2)
        outcomes = client.rate_all(ps)
        assert srv.prompt_count(ps[0]) == 3
    o = outcomes[0]
    assert o.status == "parse_error"
    assert o.scores is None
    assert o.raw_answer == "not json at all"
    assert o.error and o.attempts == 3
    assert o.completion_tokens == 3 * words("not json at all")
    assert outcomes[1].status == "ok"


def test_out_of_range_scores_are_not_clamped():
    ps = prompts(1)
    bad = '{"rarity": 11, "complexity": 5, "informativeness": 5, "overall": 5}'
    with OpenAICompatServer(faults={"row 0:": [{"content": bad, "sticky": True}]}) as srv:
        outcomes = make_client(srv, max_parse_retries=0).rate_all(ps)
    assert outcomes[0].status == "parse_error" and outcomes[0].scores is None
    assert "outside 1-10" in outcomes[0].error


# --------------------------------------------------------------------------- mixed, bounds, callers


def test_mixed_faults_every_row_final_and_no_key_in_errors():
    ps = prompts(30)
    faults = {
        "row 3:": [{"status": 429, "retry_after": 0}],
        "row 5:": [{"status": 500, "sticky": True}],
        "row 7:": [{"content": "{}", "sticky": True}],
        "row 11:": [{"status": 401, "message": f"Incorrect API key provided: {API_KEY}"}],
        "row 13:": [{"drop": True}, {"status": 502}],
        "row 17:": [
            {
                "content": "Sure! ```json\n"
                + '{"Rarity": 3, "Complexity": 4, "Informativeness": 5, "Overall": 6}'
                + "\n```"
            }
        ],
    }
    with OpenAICompatServer(faults=faults) as srv:
        outcomes = make_client(srv, max_retries=2, max_parse_retries=1).rate_all(ps)
    assert_no_invented_scores(outcomes)
    status = {i: o.status for i, o in enumerate(outcomes)}
    assert status[5] == "api_error" and status[11] == "api_error" and status[7] == "parse_error"
    assert status[3] == status[13] == status[17] == "ok"
    assert outcomes[17].scores == {"rarity": 3, "complexity": 4, "informativeness": 5, "overall": 6}
    assert sum(s == "ok" for s in status.values()) == 27
    assert "sk-***" in outcomes[11].error or "***" in outcomes[11].error


def test_concurrency_bound_is_respected():
    ps = prompts(40)
    with OpenAICompatServer(latency_s=0.05) as srv:
        make_client(srv, concurrency=5).rate_all(ps)
        stats = srv.stats()
    assert stats["requests"] == 40
    assert stats["max_in_flight"] == 5
    assert stats["chat_connections"] <= 5  # keep-alive: no connection churn


def test_on_result_error_propagates():
    def boom(i, o):
        raise RuntimeError("disk full")

    with OpenAICompatServer(latency_s=0.01) as srv:
        with pytest.raises(RuntimeError, match="disk full"):
            make_client(srv).rate_all(prompts(20), on_result=boom)


def test_works_from_a_plain_thread_and_inside_a_running_loop():
    ps = prompts(5)
    with OpenAICompatServer() as srv:
        client = make_client(srv)
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("out", client.rate_all(ps)))
        t.start()
        t.join(30)
        assert [o.status for o in box["out"]] == ["ok"] * 5

        async def inside_loop():
            return client.rate_all(ps)

        assert [o.status for o in asyncio.run(inside_loop())] == ["ok"] * 5


def test_thread_mode_server_with_custom_answer():
    with OpenAICompatServer(
        mode="thread", answer_fn=lambda m: '{"rarity":1,"complexity":2,"informativeness":3,"overall":4}'
    ) as srv:
        outcomes = make_client(srv).rate_all(prompts(3))
        assert srv.request_count() == 3
    assert all(o.scores == {"rarity": 1, "complexity": 2, "informativeness": 3, "overall": 4} for o in outcomes)


def test_retry_after_header_parsing():
    ra = chat_transport._retry_after
    assert ra({"retry-after": "2"}) == 2.0
    assert ra({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert ra({}) is None
    assert ra({"retry-after": "soon"}) is None
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 20 <= ra({"retry-after": http_date}) <= 31


def test_repr_and_errors_never_show_the_key():
    client = OpenAIJudgeClient(base_url="http://x/v1", api_key=API_KEY, model="m")
    assert API_KEY not in repr(client)
    assert API_KEY not in client._redact(f"bad key {API_KEY} and sk-proj-abc***xyz123")


# --------------------------------------------------------------------------- rate-limit headers


def test_ratelimit_reset_durations_are_parsed():
    d = chat_transport._parse_duration
    assert d("1s") == 1.0 and d("6m0s") == 360.0 and d("20ms") == pytest.approx(0.02)
    assert (
        d("1h2m3.5s") == pytest.approx(3723.5)
        and d("0.5s") == 0.5
        and d("2") == 2.0
        and d("150us") == pytest.approx(1.5e-4)
    )
    assert d(None) is None and d("") is None and d("soon") is None and d("5 s") is None and d("1s2x") is None
    reset = chat_transport._rate_limit_reset
    both = {"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "6m0s"}
    assert reset(
        {**both, "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "812"}
    ) == pytest.approx(0.02)
    assert reset({**both, "x-ratelimit-remaining-requests": "3", "x-ratelimit-remaining-tokens": "0"}) == 360.0
    assert reset(both) == 360.0  # which one ran out is not said: the later reset is safe
    assert reset({"x-ratelimit-reset-tokens": "1s"}) == 1.0 and reset({}) is None


def test_429_waits_for_the_exhausted_rate_limit_window():
    ps = prompts(3)
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "200000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "1s",
    }
    with OpenAICompatServer(faults={"row 1:": [{"status": 429, "headers": headers}]}) as srv:
        client = make_client(srv, backoff_max_s=5.0)
        outcomes = client.rate_all(ps)
        assert srv.prompt_count(ps[1]) == 2
    o = outcomes[1]
    assert o.status == "ok" and o.attempts == 2 and o.scores == expected_scores(ps[1])
    # The tokens window ran out and resets in 1 s (the jittered backoff alone would be <= 0.01 s).
    assert 1.0 <= o.latency_s < 3.0
    assert client.stats["rate_limited"] == 1


def test_ratelimit_wait_is_capped_and_retry_after_comes_first():
    ps = prompts(2)
    long_reset = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}
    faults = {
        "row 0:": [{"status": 429, "headers": long_reset}],
        "row 1:": [{"status": 429, "retry_after": 0, "headers": long_reset}],
    }
    with OpenAICompatServer(faults=faults) as srv:
        t0 = time.perf_counter()
        outcomes = make_client(srv, backoff_max_s=0.3).rate_all(ps)
        elapsed = time.perf_counter() - t0
    assert [o.status for o in outcomes] == ["ok", "ok"]
    assert outcomes[0].latency_s >= 0.3  # 6 minutes, capped at backoff_max_s
    assert outcomes[1].latency_s < 0.3  # Retry-After: 0 said now
    assert elapsed < 3.0
