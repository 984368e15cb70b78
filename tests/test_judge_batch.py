"""The judge through the OpenAI Batch API (JudgeResource(batch=True)), against the local server's /v1/files and
/v1/batches (tests/openai_server.py): real openai client, real DuckDB, real cache. Polls are immediate
(batch_poll_interval_s=0), so every test takes about a second."""

from __future__ import annotations

import json

import dagster as dg
import pytest

import definitions
from lm_mixup_assets.lib.openai_batch import (
    MAX_BATCH_BYTES,
    MAX_BATCH_REQUESTS,
    BatchStore,
    parse_batch_line,
    render_request_line,
    request_set_hash,
    split_lines,
)
from lm_mixup_assets.lib.openai_judge import OpenAIJudgeClient
from lm_mixup_assets.lib.rubric import render_judge_prompt, render_judge_request
from resources import JudgeResource, WarehouseResource
from tests.helpers import materialize_source
from tests.openai_server import OpenAICompatServer, expected_scores

pytestmark = pytest.mark.timeout(60)

API_KEY = "sk-test-batch-SECRET-0123456789abcdef"
SCORES = ("rarity", "complexity", "informativeness", "overall")


@pytest.fixture(autouse=True)
def api_key_in_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)


def rows(n: int, tag: str = "row") -> tuple[list[str], list[str]]:
    return [f"{tag} {i}: write a haiku about the number {i}" for i in range(n)], [f"answer {i}" for i in range(n)]


def user_message(prompt: str, completion: str) -> str:
    return render_judge_prompt(prompt, completion)  # what the server hashes into its scores


def judge(server, **kw) -> JudgeResource:
    fields = {
        "backend": "openai",
        "model": "judge-test",
        "base_url": server.base_url,
        "batch": True,
        "batch_poll_interval_s": 0.0,
        "concurrency": 8,
        "timeout_s": 5.0,
        "max_retries": 1,
        "max_parse_retries": 1,
        **kw,
    }
    return JudgeResource(**fields)


def warehouse(tmp_path, name="home") -> WarehouseResource:
    return WarehouseResource(home=str(tmp_path / name))


def batch_inputs(server) -> list[list[dict]]:
    """The JSONL files the client uploaded, parsed, in upload order."""
    return [
        [json.loads(line) for line in f["text"].splitlines()]
        for f in server.uploaded_files()
        if f["purpose"] == "batch"
    ]


def cache_keys(wh: WarehouseResource) -> set[str]:
    return set(wh.query("select cache_key from judge_cache")["cache_key"])


# --------------------------------------------------------------------------- pure parts


def test_split_lines_reads_one_file_ahead_only():
    rendered: list[int] = []

    def lines():
        for i in range(10):
            rendered.append(i)  # rendering happens here, as the splitter asks
            yield f"id{i}", b"x" * 10

    files = split_lines(lines(), max_requests=4)
    assert len(next(files)) == 4 and rendered == [0, 1, 2, 3, 4]  # the 5th line told it the file was full
    assert [len(f) for f in files] == [4, 2] and rendered == list(range(10))


def test_split_lines_respects_request_and_byte_limits():
    lines = [
        (f"id{i}", render_request_line(f"id{i}", {"model": "m", "messages": [{"role": "user", "content": "x" * i}]}))
        for i in range(10)
    ]
    assert [len(c) for c in split_lines(lines, max_requests=4)] == [4, 4, 2]
    size = len(lines[5][1])
    chunks = list(split_lines(lines, max_bytes=2 * size))
    assert all(sum(len(line) for _, line in c) <= 2 * size or len(c) == 1 for c in chunks)
    assert [cid for c in chunks for cid, _ in c] == [cid for cid, _ in lines]  # order kept, nothing lost
    assert len(list(split_lines(lines))) == 1 and (MAX_BATCH_REQUESTS, MAX_BATCH_BYTES) == (50_000, 200_000_000)


def test_request_line_and_batch_line_formats():
    body = {"model": "m", "messages": [{"role": "user", "content": "héllo"}], "temperature": 0.0, "max_tokens": 8}
    record = json.loads(render_request_line("k1", body))
    assert record == {"custom_id": "k1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    assert request_set_hash(["a", "b"], "m", "ds2") == request_set_hash(["b", "a"], "m", "ds2")
    assert request_set_hash(["a", "b"], "m", "ds2") != request_set_hash(["a", "b"], "m2", "ds2")
    assert request_set_hash(["a", "b"], "m", "ds2") != request_set_hash(["a", "b"], "m", "pool_quality_v1")

    ok = parse_batch_line(
        json.dumps(
            {
                "custom_id": "k1",
                "error": None,
                "response": {
                    "status_code": 200,
                    "body": {
                        "choices": [{"message": {"content": "{}"}}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
                    },
                },
            }
        )
    )
    assert (ok.content, ok.prompt_tokens, ok.completion_tokens, ok.error) == ("{}", 3, 1, None)
    http = parse_batch_line(
        json.dumps({"custom_id": "k2", "response": {"status_code": 429, "body": {"error": {"message": "slow down"}}}})
    )
    assert http.error == "batch request answered 429: slow down"
    expired = parse_batch_line(
        json.dumps({"custom_id": "k3", "response": None, "error": {"code": "batch_expired", "message": "not run"}})
    )
    assert expired.error == "batch request failed: batch_expired: not run"
    assert parse_batch_line("not json {") is None and parse_batch_line('{"no": "custom id"}') is None


# --------------------------------------------------------------------------- the resource, end to end


def test_batch_scores_equal_the_online_judges_and_are_cached(tmp_path):
    prompts, completions = rows(12)
    lines: list[str] = []
    with OpenAICompatServer() as server:
        online, online_keys = judge(server, batch=False).rate_pairs(prompts, completions, warehouse(tmp_path, "online"))
        assert server.request_count() == 12
        wh = warehouse(tmp_path)
        batch, keys = judge(server).rate_pairs(prompts, completions, wh, progress=lines.append)
        stats = server.stats()
        assert stats["requests"] == 12  # no online request: every answer came from the batch
        assert stats["batches_created"] == 1 and stats["files_uploaded"] == 1 and stats["batch_requests"] == 12
        uploaded = batch_inputs(server)

    assert keys == online_keys  # one cache key either way: answers bought online or in a batch are shared
    assert [o.status for o in batch.outcomes] == ["ok"] * 12
    assert [o.scores for o in batch.outcomes] == [o.scores for o in online.outcomes]
    assert [o.scores for o in batch.outcomes] == [
        expected_scores(user_message(p, c)) for p, c in zip(prompts, completions)
    ]
    assert [(o.prompt_tokens, o.completion_tokens) for o in batch.outcomes] == [
        (o.prompt_tokens, o.completion_tokens) for o in online.outcomes
    ]
    assert cache_keys(wh) == set(keys)

    # The JSONL: one POST /v1/chat/completions per row, custom_id = cache key, body = the online request body.
    client = OpenAIJudgeClient(
        base_url="http://unused/v1", api_key="x", model="judge-test", temperature=0.0, max_tokens=128
    )
    assert [r["custom_id"] for r in uploaded[0]] == keys
    assert [r["body"] for r in uploaded[0]] == [
        client.request_body(render_judge_request(p, c)) for p, c in zip(prompts, completions)
    ]
    assert all(r["method"] == "POST" and r["url"] == "/v1/chat/completions" for r in uploaded[0])

    # One progress line per poll, with the request counts.
    polls = [line for line in lines if line.startswith("batch batch-")]
    assert len(polls) == 2 and "in_progress, 0/12 done" in polls[0] and "completed, 12/12 done, 0 failed" in polls[1]
    assert batch.stats["batches_created"] == 1 and batch.stats["batch_polls"] == 2
    assert batch.stats["requests_sent"] == 12 and batch.requests_made == 12
    recorded = BatchStore(wh.connect).rows()
    assert list(recorded["status"]) == ["completed"] and recorded["collected_at"].notna().all()
    assert list(recorded["request_count"]) == [12]

    with OpenAICompatServer() as server:  # a re-run answers from the cache: no batch, no request
        again, _ = judge(server).rate_pairs(prompts, completions, wh)
        assert server.stats()["batches_created"] == 0 and server.request_count() == 0
    assert all(again.from_cache) and [o.scores for o in again.outcomes] == [o.scores for o in batch.outcomes]


def test_batch_price_is_half_the_online_price():
    online = JudgeResource(backend="openai", model="gpt-4o-mini", base_url="http://x/v1")
    batch = JudgeResource(backend="openai", model="gpt-4o-mini", base_url="http://x/v1", batch=True)
    assert online.cost_usd(1_000_000, 1_000_000) == pytest.approx(0.75)
    assert batch.cost_usd(1_000_000, 1_000_000) == pytest.approx(0.375)
    with pytest.raises(dg.Failure, match="batch=true needs backend 'openai'"):
        JudgeResource(backend="heuristic", batch=True).validate()


def test_a_restarted_run_resumes_the_recorded_batch_instead_of_paying_again(tmp_path):
    prompts, completions = rows(8)
    wh = warehouse(tmp_path)
    with OpenAICompatServer(batch_polls=3) as server:
        # The first run polls once and gives up (as a killed run would): the batch is already recorded.
        with pytest.raises(dg.Failure, match="still running.*run again to resume") as failure:
            judge(server, batch_max_wait_s=0).rate_pairs(prompts, completions, wh)
        recorded = BatchStore(wh.connect).rows()
        assert len(recorded) == 1 and recorded["collected_at"].isna().all()
        batch_id = recorded["batch_id"][0]
        assert recorded["status"][0] == "in_progress" and recorded["request_count"][0] == 8
        assert batch_id in failure.value.description
        assert cache_keys(wh) == set()

        # The next run, with two more rows: the recorded batch is polled to its end, only the new rows are sent.
        lines: list[str] = []
        p2, c2 = prompts + ["extra A: rate me", "extra B: rate me"], completions + ["a", "b"]
        result, keys = judge(server).rate_pairs(p2, c2, wh, progress=lines.append)
        stats = server.stats()
        sizes = [len(f) for f in batch_inputs(server)]
    assert stats["batches_created"] == 2 and stats["files_uploaded"] == 2
    assert f"resuming batch {batch_id} (8 of the requests wanted)" in " ".join(lines)
    assert result.stats["batches_resumed"] == 1 and result.stats["batches_created"] == 1
    assert [o.status for o in result.outcomes] == ["ok"] * 10
    assert [o.scores for o in result.outcomes] == [expected_scores(user_message(p, c)) for p, c in zip(p2, c2)]
    assert sizes == [8, 2]
    recorded = BatchStore(wh.connect).rows()
    assert recorded["batch_id"][0] == batch_id and recorded["collected_at"].notna().all()
    assert set(recorded["status"]) == {"completed"} and cache_keys(wh) == set(keys)


def test_a_failed_batch_gives_api_error_rows_and_the_next_run_a_new_batch(tmp_path):
    prompts, completions = rows(6)
    wh = warehouse(tmp_path)
    script = [
        {
            "status": "failed",
            "errors": [{"code": "token_limit_exceeded", "message": "Enqueued token limit reached for judge-test"}],
        }
    ]
    lines: list[str] = []
    with OpenAICompatServer(batch_script=script) as server:
        failed, _ = judge(server).rate_pairs(prompts, completions, wh, progress=lines.append)
        assert all(o.status == "api_error" and o.scores is None for o in failed.outcomes)
        assert all("failed: token_limit_exceeded: Enqueued token limit reached" in o.error for o in failed.outcomes)
        assert any(
            "failed: token_limit_exceeded" in line and "a later run sends them in a new batch" in line for line in lines
        )
        assert cache_keys(wh) == set()
        recorded = BatchStore(wh.connect).rows()
        assert list(recorded["status"]) == ["failed"] and "token_limit_exceeded" in recorded["errors"][0]

        fixed, _ = judge(server).rate_pairs(prompts, completions, wh)  # the next batch is a default one
        assert server.stats()["batches_created"] == 2
    assert [o.status for o in fixed.outcomes] == ["ok"] * 6


def test_an_expired_batch_keeps_what_it_answered_and_the_rest_are_api_error(tmp_path):
    prompts, completions = rows(6)
    wh = warehouse(tmp_path)
    with OpenAICompatServer(batch_script=[{"status": "expired", "complete": 2}]) as server:
        expired, keys = judge(server).rate_pairs(prompts, completions, wh)
        assert [o.status for o in expired.outcomes] == ["ok"] * 2 + ["api_error"] * 4
        assert all("batch_expired" in o.error and o.scores is None for o in expired.outcomes[2:])
        assert expired.outcomes[0].scores == expected_scores(user_message(prompts[0], completions[0]))
        assert cache_keys(wh) == set(keys[:2])  # answers the API billed are kept

        again, _ = judge(server).rate_pairs(prompts, completions, wh)
        assert [len(f) for f in batch_inputs(server)] == [6, 4]  # only the unanswered rows again
    assert [o.status for o in again.outcomes] == ["ok"] * 6 and sum(again.from_cache) == 2


def test_error_and_garbage_lines_fail_only_their_rows_and_parse_errors_are_reasked_online(tmp_path):
    prompts, completions = rows(8)
    wh = warehouse(tmp_path)
    faults = {
        "row 1:": [{"status": 500}],
        "row 3:": [{"drop": True}],
        "row 4:": [{"status": 400}],
        "row 2:": [{"content": "I liked it!"}],
    }
    with OpenAICompatServer(faults=faults, batch_script=[{"garbage": ["row 5:"]}]) as server:
        result, _ = judge(server).rate_pairs(prompts, completions, wh)
        assert server.request_count() == 1  # the online re-ask of row 2's unparsable answer
        status = [o.status for o in result.outcomes]
        assert status == ["ok", "api_error", "ok", "api_error", "api_error", "api_error", "ok", "ok"]
        out = result.outcomes
        assert "answered 500" in out[1].error and "server_error" in out[3].error and "answered 400" in out[4].error
        assert "no line for this request" in out[5].error
        assert out[2].attempts == 2 and out[2].scores == expected_scores(user_message(prompts[2], completions[2]))
        assert out[2].completion_tokens > len(out[2].raw_answer.split())  # the batch answer was paid for too
        for i in (0, 6, 7):
            assert out[i].scores == expected_scores(user_message(prompts[i], completions[i]))
        assert result.stats["batch_errored_lines"] == 4 and result.stats["batch_garbage_lines"] == 1
        assert result.stats["batch_parse_errors"] == 1 and result.stats["parse_retries"] == 1

        # The next run sends a batch of the four failed rows only.
        again, _ = judge(server).rate_pairs(prompts, completions, wh)
        assert [len(f) for f in batch_inputs(server)] == [8, 4]
    assert [o.status for o in again.outcomes] == ["ok"] * 8


def test_without_parse_retries_an_unparsable_batch_answer_is_a_parse_error(tmp_path):
    prompts, completions = rows(3)
    with OpenAICompatServer(faults={"row 1:": [{"content": "no scores here"}]}) as server:
        result, _ = judge(server, max_parse_retries=0).rate_pairs(prompts, completions, warehouse(tmp_path))
        assert server.request_count() == 0
    o = result.outcomes[1]
    assert o.status == "parse_error" and o.scores is None and o.raw_answer == "no scores here" and o.error
    assert [x.status for x in result.outcomes] == ["ok", "parse_error", "ok"]


def test_rows_over_the_per_batch_limit_are_split_into_several_batches(tmp_path):
    prompts, completions = rows(10)
    wh = warehouse(tmp_path)
    with OpenAICompatServer(batch_max_requests=4) as server:  # the server refuses bigger files, as the API does
        result, keys = judge(server, batch_max_requests=4).rate_pairs(prompts, completions, wh)
        assert server.stats()["batches_created"] == 3
        assert [[r["custom_id"] for r in f] for f in batch_inputs(server)] == [keys[:4], keys[4:8], keys[8:]]
    assert [o.status for o in result.outcomes] == ["ok"] * 10
    recorded = BatchStore(wh.connect).rows()
    assert sorted(recorded["request_count"]) == [2, 4, 4] and set(recorded["status"]) == {"completed"}
    assert recorded["request_set"].nunique() == 3


def test_the_key_is_in_no_batch_file_no_warehouse_table_and_no_error(tmp_path):
    prompts, completions = rows(4)
    wh = warehouse(tmp_path)
    script = [{"status": "failed", "errors": [{"code": "x", "message": f"echo {API_KEY}"}]}]
    with OpenAICompatServer(
        require_api_key=API_KEY, batch_script=script, faults={"row 2:": [{"status": 500}]}
    ) as server:
        failed, _ = judge(server).rate_pairs(prompts, completions, wh)  # the failure text echoes the key
        ok, _ = judge(server).rate_pairs(prompts, completions, wh)
        texts = [f["text"] for f in server.uploaded_files()]
    assert [o.status for o in ok.outcomes] == ["ok", "ok", "api_error", "ok"]
    assert texts and not any(API_KEY in t for t in texts)
    assert not any(API_KEY in (o.error or "") for o in failed.outcomes + ok.outcomes)
    with wh.connect() as con:
        for (table,) in con.execute("select table_name from information_schema.tables").fetchall():
            assert API_KEY not in con.execute(f'select * from "{table}"').df().to_csv(), table
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path

    # A refused key: a clear failure that names the cause, not the key the server echoed.
    with OpenAICompatServer(require_api_key="another-key") as server, pytest.raises(dg.Failure, match="401") as refused:
        judge(server).rate_pairs(*rows(2, "other"), wh)
    assert "check OPENAI_API_KEY" in str(refused.value) and API_KEY not in str(refused.value)


def test_rated_pool_through_the_batch_judge(home, query):
    assets = [a for a in definitions.defs.assets if a.node_def.name in ("ingest_pool_source", "rated_pool")]
    with OpenAICompatServer(mode="thread") as server:  # no child process to start: the cheapest end-to-end run
        resources = {"warehouse": WarehouseResource(home=str(home)), "judge": judge(server)}
        result = materialize_source("humaneval", resources, assets=assets)
        assert result.success
        stats = server.stats()
    assert stats["requests"] == 0 and stats["batches_created"] == 1 and stats["batch_requests"] == 164
    rated = query("select * from rated_pool where source = 'humaneval'")
    assert len(rated) == 164 and (rated["status"] == "ok").all() and set(rated["judge_backend"]) == {"openai"}
    for row in rated.head(20).itertuples():
        assert {k: getattr(row, k) for k in SCORES} == expected_scores(user_message(row.prompt, row.completion))
    md = result.asset_materializations_for_node("rated_pool")[0].metadata
    assert md["judge_rows_sent"].value == 164 and md["judge_http_requests"].value == 164
    assert md["client_stats"].value["batches_created"] == 1
    batches = query("select status, request_count, collected_at from judge_batches")
    assert list(batches["status"]) == ["completed"] and list(batches["request_count"]) == [164]
    assert query("select count(*) n from judge_cache")["n"][0] == 164


def test_answers_collected_but_not_yet_durable_are_downloaded_again_not_bought_again(tmp_path):
    from lm_mixup_assets.lib.openai_judge import OpenAIBatchJudgeClient

    prompts = [f"row {i}: rate me" for i in range(5)]
    store = BatchStore(warehouse(tmp_path).connect)
    with OpenAICompatServer() as server:

        def client():
            return OpenAIBatchJudgeClient(
                server.base_url, API_KEY, "judge-test", store=store, poll_interval_s=0, defer_collected=True
            )

        items = [(f"key-{i}", p) for i, p in enumerate(prompts)]
        first = client().rate_all(items)  # collected, but the caller never confirmed its answers durable
        assert store.rows()["collected_at"].isna().all()
        again = client()
        second = again.rate_all(items)  # as after a crash: the same output is downloaded, nothing is bought
        again.confirm_collected()
        stats = server.stats()
    assert stats["batches_created"] == 1 and stats["file_downloads"] == 2
    assert again.stats["batches_resumed"] == 1 and again.stats["batches_created"] == 0
    assert [o.scores for o in second] == [o.scores for o in first] == [expected_scores(p) for p in prompts]
    assert store.rows()["collected_at"].notna().all()
