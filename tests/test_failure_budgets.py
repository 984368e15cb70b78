"""Failure budgets: an asset whose judge or generator calls mostly failed is red, its rows are kept, and a
re-run pays only for the failures. Real HTTP against the local server (tests/openai_server.py)."""

import dagster as dg
import pytest

import definitions
from lm_mixup_assets.lib.budgets import assess, describe, redact
from resources import JudgeResource, WarehouseResource
from resources.generator import GeneratorResource
from tests.helpers import materialize_source
from tests.openai_server import OpenAICompatServer, prompt_hash

API_KEY = "sk-budget-test-SECRET-0123456789"
ROWS = 164  # humaneval in the demo manifest


@pytest.fixture(autouse=True)
def api_key_in_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)


def nodes(*names):
    return [a for a in definitions.defs.assets if a.node_def.name in names]


def rating_assets():
    return nodes("ingest_pool_source", "rated_pool")


def judge_for(server, **kw):
    return JudgeResource(
        backend="openai",
        model="judge-test",
        base_url=server.base_url,
        concurrency=8,
        timeout_s=5,
        max_retries=1,
        max_parse_retries=1,
        **kw,
    )


def resources_for(home, server, **kw):
    return {"warehouse": WarehouseResource(home=str(home)), "judge": judge_for(server, **kw)}


def step_failure(result, node):
    return next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE" and e.step_key == node)


def failure_text(result, node) -> str:
    error, parts = step_failure(result, node).event_specific_data.error, []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


def garbage(user_message: str) -> str:
    return "Sure! I would rate this sample quite highly overall."  # no JSON: parse_error after the re-asks


# --------------------------------------------------------------------------- pure logic


def test_assess_counts_the_failed_statuses_against_the_budget():
    statuses = ["ok", "parse_error", "api_error", "ok", "ok", "ok", "ok", "ok"]
    details = [
        None,
        "no JSON object; answer starts 'Sure'",
        f"401 Unauthorized: Incorrect API key {API_KEY}",
        None,
        None,
        None,
        None,
        None,
    ]
    report = assess("judge calls of x", statuses, details, ["api_error", "parse_error"], 0.25, [API_KEY])
    assert (report.total, report.failed, report.fraction) == (8, 2, 0.25)
    assert not report.exceeded  # at the budget is within it; only more than it fails
    assert report.by_status == {"api_error": 1, "parse_error": 1}
    assert API_KEY not in " ".join(report.samples) and "***" in report.samples[1]
    tighter = assess("judge calls of x", statuses, details, ["api_error", "parse_error"], 0.2)
    assert tighter.exceeded
    text = describe([tighter])
    assert "2 of 8 failed (25.0%: 1 api_error, 1 parse_error); budget max_failed_fraction=0.2" in text
    assert text.count("e.g. ") == 2
    # only the named statuses count: a distiller's parse_error is a quality outcome under its own budget
    assert assess("gen", statuses, details, ["api_error"], 0.1).failed == 1
    assert assess("none", [], [], ["api_error"], 0.0).fraction == 0.0
    with pytest.raises(ValueError, match="fraction in"):
        assess("x", ["ok"], [None], ["api_error"], 1.5)


def test_redact_removes_the_key_and_key_shaped_text():
    assert redact(f"bad key {API_KEY}!", [API_KEY]) == "bad key ***!"
    assert redact("Incorrect API key provided: sk-abcdefghij1234") == "Incorrect API key provided: sk-***"
    assert redact("keep the word k", ["k"]) == "keep the word k"  # too short to be a key: not blanked


# --------------------------------------------------------------------------- rated_pool


def test_a_judge_that_answers_garbage_for_every_row_fails_the_run_and_keeps_the_rows(home, query):
    with OpenAICompatServer(answer_fn=garbage, mode="thread") as server:
        pool = [
            a
            for a in definitions.defs.assets
            if a.group_names_by_key and set(a.group_names_by_key.values()) == {"pool"} and a.partitions_def is not None
        ]
        result = materialize_source(
            "humaneval",
            resources_for(home, server),
            raise_on_error=False,
            assets=[*pool, *definitions.defs.asset_checks],
        )
        assert server.request_count() == ROWS * 2  # each row asked, then re-asked once
    assert not result.success
    text = failure_text(result, "rated_pool")
    assert f"judge calls of humaneval: {ROWS} of {ROWS} failed (100.0%: {ROWS} parse_error)" in text
    assert "budget max_failed_fraction=0.05" in text and text.count("e.g. parse_error") == 3
    assert "answer starts 'Sure! I would rate" in text
    failure = step_failure(result, "rated_pool").event_specific_data
    assert failure.user_failure_data.metadata["failed"].value == ROWS
    # the rows are the evidence: written, each with its status and no score
    rated = query("select status, overall from rated_pool where source = 'humaneval'")
    assert len(rated) == ROWS and (rated["status"] == "parse_error").all() and rated["overall"].isna().all()
    # and nothing downstream ran on them
    assert not result.asset_materializations_for_node("rated_pool")
    assert not [
        e
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
        and e.asset_key.to_user_string() in ("high_quality_pool", "low_quality_pool")
    ]


def test_a_rerun_after_fixing_the_judge_pays_only_for_the_failed_rows(home, query):
    def garbage_for_a_quarter(user_message: str) -> str:
        if prompt_hash(user_message)[0] in "0123":
            return garbage(user_message)
        from tests.openai_server import default_answer

        return default_answer(user_message)

    with OpenAICompatServer(answer_fn=garbage_for_a_quarter, mode="thread") as server:
        first = materialize_source(
            "humaneval", resources_for(home, server), raise_on_error=False, assets=rating_assets()
        )
    assert not first.success
    failed = int(query("select count(*) n from rated_pool where status = 'parse_error'")["n"][0])
    assert 0.05 * ROWS < failed < 0.5 * ROWS
    assert f"{failed} of {ROWS} failed" in failure_text(first, "rated_pool")

    with OpenAICompatServer(mode="thread") as fixed:
        again = materialize_source("humaneval", resources_for(home, fixed), assets=rating_assets())
        assert again.success
        assert fixed.request_count() == failed  # the ok rows came from the judge cache
    md = again.asset_materializations_for_node("rated_pool")[0].metadata
    assert md["cache_hits"].value == ROWS - failed and md["judge_rows_sent"].value == failed
    assert md["judge_http_requests"].value == failed and md["judge_failed_fraction"].value == 0.0
    assert (query("select status from rated_pool where source = 'humaneval'")["status"] == "ok").all()


def test_http_401_for_every_row_fails_without_showing_the_key(home, query):
    with OpenAICompatServer(require_api_key="the-right-key", mode="thread") as server:
        result = materialize_source(
            "humaneval", resources_for(home, server), raise_on_error=False, assets=rating_assets()
        )
        assert server.request_count() == ROWS  # a 401 is not retried
    assert not result.success
    text = failure_text(result, "rated_pool")
    assert f"{ROWS} of {ROWS} failed (100.0%: {ROWS} api_error)" in text and "401 Unauthorized" in text
    assert API_KEY not in text and "SECRET" not in text  # the server echoed the key; the samples are redacted
    assert (query("select status from rated_pool")["status"] == "api_error").all()


def test_failures_within_the_budget_succeed_with_the_rate_in_metadata(home):
    faults = {
        "def truncate_number": [{"status": 503, "sticky": True}],
        "def below_zero": [{"content": "no scores here", "sticky": True}],
    }
    with OpenAICompatServer(faults=faults, mode="thread") as server:
        result = materialize_source("humaneval", resources_for(home, server), assets=rating_assets())
    assert result.success
    md = result.asset_materializations_for_node("rated_pool")[0].metadata
    assert md["judge_failed_rows"].value == 2 and md["judge_failed_fraction"].value == round(2 / ROWS, 4)
    assert md["judge_max_failed_fraction"].value == 0.05


def test_the_budget_is_per_run_config(home):
    with OpenAICompatServer(answer_fn=garbage, mode="thread") as server:
        result = materialize_source(
            "humaneval",
            resources_for(home, server),
            assets=rating_assets(),
            run_config={"ops": {"rated_pool": {"config": {"max_failed_fraction": 1.0}}}},
        )
    assert result.success  # accepted on purpose: every row still carries its parse_error
    assert result.asset_materializations_for_node("rated_pool")[0].metadata["judge_failed_fraction"].value == 1.0


# --------------------------------------------------------------------------- a generator: the MIXTURE writer


def test_a_writer_that_fails_every_call_fails_mixture_targets_and_keeps_the_rows(resources, query):
    res = dict(resources)
    with OpenAICompatServer(faults={"": [{"status": 500, "sticky": True}]}, mode="thread") as server:
        res["mixture_writer"] = GeneratorResource(
            backend="openai", model="writer", base_url=server.base_url, max_retries=1, timeout_s=5
        )
        config = {
            "ops": {
                "wiki_paragraphs": {"config": {"max_paragraphs": 3}},
                "mixture_targets": {"config": {"writer": "llm", "tasks": ["qa"]}},
            }
        }
        result = dg.materialize(
            nodes("wiki_paragraphs", "mixture_targets"), resources=res, run_config=config, raise_on_error=False
        )
        assert server.request_count() == 6  # 3 targets, each tried and retried once
    assert not result.success
    assert "generator calls of mixture_targets: 3 of 3 failed (100.0%: 3 api_error)" in failure_text(
        result, "mixture_targets"
    )
    targets = query("select kept, drop_reason from mixture_targets")
    assert len(targets) == 3 and not targets["kept"].any()
    assert targets["drop_reason"].str.contains("500").all()


def test_generator_usage_counts_rows_and_http_requests_apart(home):
    chats = [[{"role": "user", "content": "Name a primary colour."}], [{"role": "user", "content": "Name a planet."}]]
    with OpenAICompatServer(faults={1: [{"status": 429}], 2: [{"status": 500}]}, mode="thread") as server:
        gen = GeneratorResource(backend="openai", model="gpt-4o-mini", base_url=server.base_url, concurrency=1)
        usage: dict = {}
        out, _ = gen.generate(chats, WarehouseResource(home=str(home)), usage=usage)
        sent = server.request_count()
    assert [o.status for o in out] == ["ok", "ok"]
    assert usage["rows"] == 2 and usage["generated"] == 2 and usage["retries"] == 2
    assert usage["http_requests"] == sent == 4
    tokens_in, tokens_out = usage["prompt_tokens"], usage["completion_tokens"]
    assert usage["cost_usd"] == round((tokens_in * 0.15 + tokens_out * 0.60) / 1e6, 6)  # gpt-4o-mini's price


def test_profiles_state_every_budget():
    from lm_mixup_assets.config import resolved_settings
    from lm_mixup_assets.distill import DistillConfig, RescueYieldConfig
    from lm_mixup_assets.mixture import MixtureConfig, TargetsConfig, VariantsConfig
    from lm_mixup_assets.pool import RatedPoolConfig
    from lm_mixup_assets.training import MixtureEvalConfig

    configs = (
        RatedPoolConfig,
        TargetsConfig,
        VariantsConfig,
        MixtureConfig,
        DistillConfig,
        RescueYieldConfig,
        MixtureEvalConfig,
    )
    for profile in ("demo", "paper"):
        for config in configs:
            assert resolved_settings(config.settings_model, profile)[0].max_failed_fraction == 0.05
    # an unparsed distiller answer is a quality outcome: all accepted on the demo's 135M model, half on the paper's
    assert resolved_settings(DistillConfig.settings_model, "demo")[0].max_parse_error_fraction == 1.0
    assert resolved_settings(DistillConfig.settings_model, "paper")[0].max_parse_error_fraction == 0.5
    for config in configs:  # the launchpad shows each budget with its description, the default and the profiles'
        description = config.model_fields["max_failed_fraction"].description
        assert "Failure budget" in description and "Default 0.05" in description
