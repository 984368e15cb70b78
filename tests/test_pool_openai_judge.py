"""rated_pool with the `openai` judge backend against a real local HTTP server with injected faults."""

import json

import pytest

import definitions
from lm_mixup_assets.lib.rubric import SYSTEM_PROMPT  # noqa: F401 (the server sees it as the system turn)
from resources import JudgeResource, WarehouseResource
from tests.helpers import checks_by_name, materialize_source
from tests.openai_server import OpenAICompatServer, expected_scores

API_KEY = "sk-test-secret-do-not-leak-12345"


@pytest.fixture(autouse=True)
def api_key_in_environment(monkeypatch):
    """The openai judge reads its key from the environment at run time; it is never a config value."""
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)


def pool_assets():
    return [
        *[
            a
            for a in definitions.defs.assets
            if a.partitions_def is not None and set(a.group_names_by_key.values()) == {"pool"}
        ],
        *definitions.defs.asset_checks,
    ]


def openai_resources(home, server, **judge):
    return {
        "warehouse": WarehouseResource(home=str(home)),
        "judge": JudgeResource(
            backend="openai",
            model="judge-test",
            base_url=server.base_url,
            concurrency=8,
            timeout_s=1.5,
            max_retries=3,
            max_parse_retries=1,
            **judge,
        ),
    }


def test_transient_faults_end_ok_and_a_second_run_sends_zero_requests(home, query):
    faults = {
        1: [{"status": 429, "retry_after": 1}],
        2: [{"status": 500}],
        3: [{"hang": 5}],  # longer than timeout_s: the client times out and retries
        4: [{"content": "I think this is a fine sample!"}],  # garbage: re-asked
        5: [{"drop": True}],
    }
    with OpenAICompatServer(faults=faults) as server:
        result = materialize_source("humaneval", openai_resources(home, server), assets=pool_assets())
        assert result.success
        first = server.request_count()
        rated = query("select * from rated_pool where source = 'humaneval'")
        assert len(rated) == 164 and (rated["status"] == "ok").all()
        assert first >= 164 + 5  # each fault cost one extra request
        # every score is exactly what the server answered for that prompt: nothing made up
        answers = server.stats()
        assert answers["requests"] == first
        for row in rated.head(20).itertuples():
            from lm_mixup_assets.lib.rubric import render_judge_prompt

            assert {
                k: getattr(row, k) for k in ("rarity", "complexity", "informativeness", "overall")
            } == expected_scores(render_judge_prompt(row.prompt, row.completion))
        md = result.asset_materializations_for_node("rated_pool")[0].metadata
        assert md["judge_rows_sent"].value == 164 and md["judge_prompt_tokens"].value > 0
        # rows and HTTP requests apart: every retry and re-ask is a request the server saw
        assert md["judge_http_requests"].value == first > 164
        stats = md["client_stats"].value
        assert (
            stats["rate_limited"] >= 1
            and stats["server_errors"] >= 1
            and stats["timeouts"] >= 1
            and stats["parse_retries"] >= 1
        )

        again = materialize_source("humaneval", openai_resources(home, server), assets=pool_assets())
        assert again.success
        assert server.request_count() == first  # zero new requests: all answered from the cache
        md2 = again.asset_materializations_for_node("rated_pool")[0].metadata
        assert md2["judge_rows_sent"].value == 0 and md2["judge_http_requests"].value == 0
        assert md2["cache_hits"].value == 164


def test_persistent_failures_are_recorded_never_scored_and_retried_next_run(home, query):
    faults = {
        "def truncate_number": [{"content": "not json at all", "sticky": True}],
        "def below_zero": [{"status": 503, "sticky": True}],
    }
    with OpenAICompatServer(faults=faults) as server:
        result = materialize_source("humaneval", openai_resources(home, server), assets=pool_assets())
        assert result.success
        rated = query("select * from rated_pool where source = 'humaneval'").set_index("sample_id")
        failed = rated[rated["status"] != "ok"]
        assert sorted(failed["status"]) == ["api_error", "parse_error"]
        assert failed[["rarity", "complexity", "informativeness", "overall", "overall_compressed"]].isna().all().all()
        parse_row = failed[failed["status"] == "parse_error"].iloc[0]
        assert "truncate_number" in parse_row["prompt"] and "no JSON object" in parse_row["error"]
        api_row = failed[failed["status"] == "api_error"].iloc[0]
        assert "below_zero" in api_row["prompt"] and "503" in api_row["error"]
        checks = checks_by_name(result)
        assert checks["rated_pool_accounting"].passed and checks["quality_split_accounting"].passed
        hi = query("select count(*) n from high_quality_pool where source='humaneval'")["n"][0]
        lo = query("select count(*) n from low_quality_pool where source='humaneval'")["n"][0]
        assert hi + lo == 162  # failures are in neither split

        # nothing leaks the key: errors, metadata, the whole warehouse
        dump = json.dumps(
            [str(v.value) for v in result.asset_materializations_for_node("rated_pool")[0].metadata.values()]
        )
        assert API_KEY not in dump
        for table in ("rated_pool", "judge_cache"):
            assert API_KEY not in query(f"select * from {table}").to_csv()

        before = server.request_count()
        materialize_source("humaneval", openai_resources(home, server), assets=pool_assets())
        resent = server.request_count() - before
        # only the two failed rows are asked again (each with its bounded retries)
        assert 2 <= resent <= 2 * (3 + 1 + 1)


def test_missing_api_key_is_a_clear_error(home, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = JudgeResource(backend="openai", model="m", base_url="http://127.0.0.1:9/v1")
    resources = {"warehouse": WarehouseResource(home=str(home)), "judge": judge}
    result = materialize_source("humaneval", resources, assets=pool_assets(), raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "OPENAI_API_KEY" in str(failure.event_specific_data.error)


def test_unknown_backend_is_rejected(home):
    judge = JudgeResource(backend="llama", model="m")
    with pytest.raises(Exception, match="judge backend 'llama' is unknown"):
        judge.validate()
