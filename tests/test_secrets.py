"""Secrets are never config: no key field on any resource; a backend switched to openai per run reads
OPENAI_API_KEY from the environment; the key is found nowhere in run storage or the warehouse."""

from pathlib import Path

import dagster as dg
import duckdb

import definitions
from resources import build_resources
from resources.generator import GeneratorResource
from resources.judge import JudgeResource
from tests.openai_server import OpenAICompatServer

SENTINEL = "sk-sentinel-7f3a9c-NEVER-STORE-THIS-KEY"
MARKER = "judge-model-marker-4d1e"  # a config value: it must be found where the key must not


def rating_assets():
    return [a for a in definitions.defs.assets if a.node_def.name in ("ingest_pool_source", "rated_pool")]


def openai_judge_run_config(server) -> dict:
    """The launchpad's per-run switch of the judge to openai: no key anywhere in it."""
    return {
        "resources": {
            "judge": {
                "config": {
                    "backend": "openai",
                    "base_url": server.base_url,
                    "model": MARKER,
                    "concurrency": 8,
                    "max_retries": 0,
                    "max_parse_retries": 0,
                }
            }
        }
    }


def test_no_resource_has_a_key_field():
    for cls in (JudgeResource, GeneratorResource):
        assert "api_key" not in cls.model_fields
        assert cls.model_fields["api_key_env"].default == "OPENAI_API_KEY"  # a name, not a value
    for name, resource in build_resources(profile="paper").items():
        config = resource.model_dump() if hasattr(resource, "model_dump") else {}
        assert not [k for k in config if k.endswith("api_key")], name


def test_a_backend_switched_to_openai_per_run_reads_the_key_from_the_environment(home, monkeypatch, query):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    resources = build_resources(profile="demo", home=str(home))  # heuristic judge by profile
    with OpenAICompatServer(require_api_key=SENTINEL, mode="thread") as server:
        result = dg.materialize(
            rating_assets(), resources=resources, partition_key="humaneval", run_config=openai_judge_run_config(server)
        )
        assert result.success and server.request_count() == 164  # every request carried the right key
    rated = query("select status, judge_backend, judge_model from rated_pool")
    assert (rated["status"] == "ok").all() and set(rated["judge_backend"]) == {"openai"}


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _warehouse_rows_containing(warehouse: Path, needle: str) -> list[str]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        hits = []
        columns = con.execute(
            "select table_name, column_name from information_schema.columns "
            "where data_type in ('VARCHAR', 'VARCHAR[]', 'JSON')"
        ).fetchall()
        for table, column in columns:
            n = con.execute(
                f'select count(*) from "{table}" where cast("{column}" as varchar) like ?', [f"%{needle}%"]
            ).fetchone()[0]
            if n:
                hits.append(f"{table}.{column}")
        return hits
    finally:
        con.close()


def test_the_key_is_found_nowhere_in_run_storage_or_the_warehouse(home, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    resources = build_resources(profile="demo", home=str(home))
    storage = tmp_path / "dagster_home"
    storage.mkdir()
    with dg.instance_for_test(temp_dir=str(storage)) as instance:
        # One run that succeeds, and one the server refuses with a 401 that echoes the key (as the real
        # API does): its rows, errors, logs and the budget's failure must all be redacted.
        with OpenAICompatServer(require_api_key=SENTINEL, mode="thread") as server:
            ok = dg.materialize(
                rating_assets(),
                resources=resources,
                partition_key="humaneval",
                instance=instance,
                run_config=openai_judge_run_config(server),
            )
        assert ok.success
        with OpenAICompatServer(require_api_key="another-key", mode="thread") as server:
            refused = dg.materialize(
                rating_assets(),
                resources=resources,
                partition_key="chitchat",
                instance=instance,
                run_config=openai_judge_run_config(server),
                raise_on_error=False,
            )
        assert not refused.success
        failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
        assert "401 Unauthorized" in str(failure.event_specific_data.error)  # the cause is named ...
        assert len(instance.get_runs()) == 2
    # ... and the key is nowhere: not in run config, events, logs, metadata or failures
    assert _files_containing(storage, MARKER.encode())  # control: run config is stored and greppable
    assert _files_containing(storage, SENTINEL.encode()) == []
    assert _files_containing(home, SENTINEL.encode()) == []  # warehouse file (+ WAL) and artifacts
    warehouse = home / "warehouse.duckdb"
    assert _warehouse_rows_containing(warehouse, MARKER)  # control: the judge model is a stored value
    assert _warehouse_rows_containing(warehouse, SENTINEL) == []
    assert _warehouse_rows_containing(warehouse, "SENTINEL") == []  # no part of it either
