"""Running it like a platform: graph snapshot, jobs, executors, GPU tags, parallel writers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import definitions
from lm_mixup_assets.scaling import GPU_POOL, k8s_executor_config, select_executor

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"
ROOT = Path(__file__).resolve().parent.parent


def graph_snapshot() -> dict:
    graph = definitions.defs.resolve_asset_graph()
    specs = {s.key: s for c in definitions.defs.asset_checks for s in c.check_specs}
    out = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        out[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": node.partitions_def.get_partition_keys() if node.partitions_def else None,
            # A check's flags show in review too: blocking, and partitioned like its asset (one result per partition).
            "checks": {
                c.name: {"blocking": specs[c].blocking, "partitioned": specs[c].partitions_def is not None}
                for c in sorted(node.check_keys, key=lambda c: c.name)
            },
        }
    return out


def test_asset_graph_matches_the_snapshot():
    """A rename or a new dependency shows up in review. Refresh: UPDATE_SNAPSHOTS=1 pytest tests/test_platform.py"""
    current = graph_snapshot()
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert SNAPSHOT.exists(), "no snapshot yet: run UPDATE_SNAPSHOTS=1 pytest tests/test_platform.py"
    assert current == json.loads(SNAPSHOT.read_text()), (
        "asset graph changed; if intended, refresh with UPDATE_SNAPSHOTS=1"
    )


def test_jobs_cover_every_stage():
    names = {j.name for j in definitions.defs.jobs}
    assert {"pool_job", "clusters_job", "per_source_job", "all_sources_job", "lm_mixup_job"} <= names
    per_source = definitions.defs.resolve_job_def("per_source_job")
    assert per_source.partitions_def.get_partition_keys() == ["chatterbot", "chitchat", "humaneval"]
    selected = {k.to_user_string() for k in per_source.asset_layer.executable_asset_keys}
    assert {"raw_pool", "rated_pool", "low_quality_clusters", "cluster_inputs"} <= selected
    assert "pool_summary" not in selected
    assert {"distill_job", "long_tail_job", "training_sets_job", "per_arm_job", "report_job"} <= names
    per_arm = {
        k.to_user_string() for k in definitions.defs.resolve_job_def("per_arm_job").asset_layer.executable_asset_keys
    }
    assert per_arm == {"training_sets", "downstream_models", "benchmark_scores"}
    distill = {
        k.to_user_string() for k in definitions.defs.resolve_job_def("distill_job").asset_layer.executable_asset_keys
    }
    assert distill == {"distilled_pool", "rated_distilled", "distilled_high"}
    arms = definitions.defs.resolve_job_def("training_sets_job").partitions_def.get_partition_keys()
    assert arms == ["mixup50_ori50", "original_high", "full_low"]


def test_gpu_steps_carry_pool_and_pod_resources():
    gpu_steps = {a.node_def.name: a.node_def for a in definitions.defs.assets if a.node_def.pool == GPU_POOL}
    assert {
        "low_quality_clusters",
        "sft_checkpoint",
        "grpo_checkpoint",
        "distilled_pool",
        "long_tail_scores",
        "downstream_models",
        "benchmark_scores",
        "base_model_scores",
    } <= set(gpu_steps)
    for node_def in gpu_steps.values():
        tags = node_def.tags["dagster-k8s/config"]
        tags = json.loads(tags) if isinstance(tags, str) else tags  # Dagster stores dict tags as JSON
        assert tags["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_executor_is_chosen_by_environment(monkeypatch):
    assert select_executor("in_process").name == "in_process"
    assert select_executor("multiprocess").name == "multiprocess"
    monkeypatch.setenv("LM_MIXUP_IMAGE", "registry.example/lm-mixup:1.0")
    monkeypatch.setenv("LM_MIXUP_K8S_HOME", "/mnt/lm-mixup")  # the pods' mount path, passed as their LM_MIXUP_HOME
    k8s = select_executor("k8s")  # builds the cluster configuration; needs no cluster
    assert k8s.name == "k8s"
    cfg = k8s_executor_config()
    assert cfg["job_image"] == "registry.example/lm-mixup:1.0"
    assert "LM_MIXUP_HOME=/mnt/lm-mixup" in cfg["env_vars"]
    assert cfg["volume_mounts"][0]["mount_path"] == "/mnt/lm-mixup"
    with pytest.raises(ValueError, match="choose one of"):
        select_executor("spark")


def test_k8s_pods_write_through_a_postgres_catalog_with_credentials_from_a_secret(monkeypatch):
    monkeypatch.delenv("LM_MIXUP_WAREHOUSE_BACKEND", raising=False)
    monkeypatch.setenv("LM_MIXUP_WAREHOUSE_CATALOG", "postgres://lm_mixup@pg.lm-mixup.svc:5432/lake")
    monkeypatch.setenv("LM_MIXUP_WAREHOUSE_DATA_PATH", "s3://lm-mixup-lake/tables/")
    monkeypatch.setenv("LM_MIXUP_K8S_WAREHOUSE_SECRET", "lake-credentials")
    cfg = k8s_executor_config()
    assert {
        "LM_MIXUP_WAREHOUSE_BACKEND=ducklake",
        "LM_MIXUP_WAREHOUSE_CATALOG=postgres://lm_mixup@pg.lm-mixup.svc:5432/lake",
        "LM_MIXUP_WAREHOUSE_DATA_PATH=s3://lm-mixup-lake/tables/",
    } <= set(cfg["env_vars"])
    assert "lake-credentials" in cfg["env_secrets"]  # PGPASSWORD, AWS_* live there, never in config
    assert not any("PASSWORD" in v or "AWS_" in v for v in cfg["env_vars"])
    monkeypatch.setenv("LM_MIXUP_WAREHOUSE_CATALOG", "/data/lm_mixup/lake/catalog.sqlite")
    with pytest.raises(ValueError, match="not safe across hosts"):
        k8s_executor_config()
    monkeypatch.setenv("LM_MIXUP_WAREHOUSE_BACKEND", "duckdb")
    with pytest.raises(ValueError, match="cannot share a DuckDB file"):
        k8s_executor_config()


PARALLEL_RUN = """
import sys, dagster as dg, definitions
from resources import build_resources
assets = [a for a in definitions.defs.assets if a.partitions_def is not None
          and set(a.group_names_by_key.values()) == {"pool"}]
r = dg.materialize([*assets, *definitions.defs.asset_checks], resources=build_resources(home=sys.argv[2]),
                   partition_key=sys.argv[1], raise_on_error=False)
print("RESULT", sys.argv[1], r.success)
sys.exit(0 if r.success else 1)
"""


def three_parallel_source_runs(home, query):
    env = {**os.environ, "LM_MIXUP_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PARALLEL_RUN, s, str(home)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for s in ("humaneval", "chatterbot", "chitchat")
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    counts = query("select source, count(*) n from rated_pool group by 1 order by 1")
    assert counts["source"].tolist() == ["chatterbot", "chitchat", "humaneval"]
    assert query("select count(*) n from judge_cache")["n"][0] == counts["n"].sum()


def test_parallel_source_runs_share_the_warehouse_without_lock_failures(home, query):
    """A backfill whose runs execute at once: three processes writing one DuckDB file."""
    three_parallel_source_runs(home, query)


@pytest.mark.slow
def test_parallel_source_runs_commit_concurrently_to_a_lake(home, query, monkeypatch):
    """The same backfill on a lake (SQLite catalog): no lock, conflicting commits retried, every run's
    commits in the lake's history."""
    monkeypatch.setenv("LM_MIXUP_WAREHOUSE_BACKEND", "ducklake")
    three_parallel_source_runs(home, query)
    steps = query("select commit_extra_info from lake.snapshots() where commit_message like 'run %'")
    partitions = {json.loads(x)["partition"] for x in steps["commit_extra_info"]}
    assert partitions == {"chatterbot", "chitchat", "humaneval"}


def test_no_stage_module_imports_another():
    """Stages share code through lib/ and small shared modules, never through each other."""
    import ast
    from pathlib import Path

    stages = {"pool", "clusters", "mixture", "training", "distill", "selection", "evaluation"}
    root = Path(__file__).resolve().parents[1] / "lm_mixup_assets"
    crossings = []
    for stage in sorted(stages):
        tree = ast.parse((root / f"{stage}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module.removeprefix("lm_mixup_assets.")} | (
                    {a.name for a in node.names} if node.module == "lm_mixup_assets" else set()
                )
            elif isinstance(node, ast.Import):
                names = {a.name.removeprefix("lm_mixup_assets.") for a in node.names}
            else:
                continue
            crossings += [f"{stage} imports {n}" for n in names & (stages - {stage})]
    assert crossings == []
