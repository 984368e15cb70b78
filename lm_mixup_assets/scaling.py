"""How steps run: the executor chosen by profile and environment, and the tags GPU steps carry.

``LM_MIXUP_EXECUTOR`` picks the executor; unset, the profile does (:data:`PROFILE_EXECUTORS`):

- ``in_process`` (the demo profile's): one process, steps in order. On a
  2-core machine it is the fastest (no per-step process start) and DuckDB sees
  one writer. What a step left on the GPU stays for the next ones, so only the
  generator's engines are released per asset (``GeneratorResource.session``).
- ``multiprocess`` (the paper profile's): every step in its own process
  (``LM_MIXUP_MAX_CONCURRENT`` at once, GPU steps ``LM_MIXUP_GPUS`` at once), so
  a step's models, vLLM engines and CUDA context end with it. Safe with DuckDB
  because every write opens a short connection and waits for the file lock
  (``lib/warehouse.py``); a lake needs no lock.
- ``k8s``: ``dagster-k8s``'s ``k8s_job_executor`` (install the ``k8s`` extra),
  one pod per step; GPU steps get their GPU through the op tags below. Image,
  namespace and the shared data root come from the environment; tables go
  through a lake (Postgres catalog, object storage), never a shared DuckDB file.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from lm_mixup_assets.lib.disk import InsufficientDiskSpace

EXECUTORS = ("in_process", "multiprocess", "k8s")

#: The executor of each profile when ``LM_MIXUP_EXECUTOR`` is unset. The paper profile's GPU steps load
#: models of several GiB and vLLM engines that reserve most of the device: each runs in its own process.
PROFILE_EXECUTORS = {"demo": "in_process", "paper": "multiprocess"}
#: Whether an executor runs every step in a process (or pod) of its own, so GPU memory ends with the step.
ISOLATES_STEPS = {"in_process": False, "multiprocess": True, "k8s": True}

#: Dagster concurrency pool for steps that need a GPU (limit it with
#: ``dagster instance concurrency set gpu <n>``, or in the UI, to the GPU count).
GPU_POOL = "gpu"
#: Op tag every GPU step carries: the executors' run-scoped limit (``LM_MIXUP_GPUS``) counts it, since
#: ``tag_concurrency_limits`` reads tags, not pools.
GPU_TAG = "lm_mixup/gpu"


def gpu_step_limits() -> list[dict]:
    """At most ``LM_MIXUP_GPUS`` (1) GPU steps of a run at once, whatever the executor's step concurrency."""
    return [{"key": GPU_TAG, "value": "true", "limit": int(os.environ.get("LM_MIXUP_GPUS", "1"))}]


def gpu_op_tags(gpus: int = 1, memory: str = "32Gi", cpu: str = "8") -> dict:
    """Pod resources for a GPU step under ``k8s_job_executor`` (inert in-process) and the GPU step tag."""
    limits = {"nvidia.com/gpu": str(gpus), "memory": memory}
    return {
        GPU_TAG: "true",
        "dagster-k8s/config": {
            "container_config": {"resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}},
            "pod_spec_config": {
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            },
        },
    }


def k8s_warehouse_env() -> list[str]:
    """The pods' warehouse: always a lake, never a DuckDB file on a shared volume (one writer, a lock that
    does not cross hosts). Catalog URL and data path pass as plain values when set here; the credentials
    (``PGPASSWORD``, ``AWS_*``) come from the warehouse Secret, which may also hold the catalog URL."""
    backend = os.environ.get("LM_MIXUP_WAREHOUSE_BACKEND", "ducklake")
    if backend != "ducklake":
        raise ValueError(
            f"LM_MIXUP_WAREHOUSE_BACKEND={backend!r} with the k8s executor: pods on several hosts cannot "
            "share a DuckDB file; use ducklake with a Postgres catalog (docs/scaling.md)"
        )
    catalog = os.environ.get("LM_MIXUP_WAREHOUSE_CATALOG", "")
    if catalog and not catalog.lower().startswith(("postgres://", "postgresql://")):
        raise ValueError(
            f"LM_MIXUP_WAREHOUSE_CATALOG={catalog!r} with the k8s executor: a catalog file on a shared "
            "volume is not safe across hosts; use a postgres:// URL (docs/scaling.md)"
        )
    env = ["LM_MIXUP_WAREHOUSE_BACKEND=ducklake"]
    for name in ("LM_MIXUP_WAREHOUSE_CATALOG", "LM_MIXUP_WAREHOUSE_DATA_PATH", "LM_MIXUP_WAREHOUSE_METADATA_SCHEMA"):
        if os.environ.get(name):
            env.append(f"{name}={os.environ[name]}")
    return env


def k8s_executor_config() -> dict:
    """Config for ``k8s_job_executor`` from the environment (no cluster needed to build it)."""
    # The pods' home: where the data volume is mounted inside them (LM_MIXUP_HOME has one default, .lm_mixup,
    # for processes on this machine; a pod's home is a mount path, named apart).
    root = os.environ.get("LM_MIXUP_K8S_HOME", "/data/lm_mixup")
    return {
        "job_image": os.environ.get("LM_MIXUP_IMAGE", "lm-mixup:latest"),
        "job_namespace": os.environ.get("LM_MIXUP_K8S_NAMESPACE", "lm-mixup"),
        "max_concurrent": int(os.environ.get("LM_MIXUP_MAX_CONCURRENT", "8")),
        # Every pod sees the same data root (a PVC or an object-store mount) for artifacts, and writes
        # tables through the lake; secrets come from k8s Secrets, not from config.
        "env_vars": [
            f"LM_MIXUP_HOME={root}",
            f"LM_MIXUP_PROFILE={os.environ.get('LM_MIXUP_PROFILE', 'paper')}",
            *k8s_warehouse_env(),
        ],
        "env_secrets": [
            os.environ.get("LM_MIXUP_K8S_SECRET", "lm-mixup-secrets"),
            os.environ.get("LM_MIXUP_K8S_WAREHOUSE_SECRET", "lm-mixup-warehouse"),
        ],
        "volume_mounts": [{"name": "data", "mount_path": root}],
        "volumes": [
            {
                "name": "data",
                "persistent_volume_claim": {"claim_name": os.environ.get("LM_MIXUP_K8S_PVC", "lm-mixup-data")},
            }
        ],
        # One step at a time per GPU: GPU steps queue for the GPUs.
        "tag_concurrency_limits": gpu_step_limits(),
    }


def multiprocess_executor_config() -> dict:
    """Config for ``multiprocess_executor``: one process per step, GPU steps limited to the GPU count."""
    return {
        "max_concurrent": int(os.environ.get("LM_MIXUP_MAX_CONCURRENT", "2")),
        "tag_concurrency_limits": gpu_step_limits(),
    }


def executor_name(profile: str | None = None) -> str:
    """``LM_MIXUP_EXECUTOR`` when set, else the profile's executor (:data:`PROFILE_EXECUTORS`)."""
    explicit = os.environ.get("LM_MIXUP_EXECUTOR", "").strip()
    if explicit:
        return explicit
    if profile is None:
        from resources.profiles import active_profile

        profile = active_profile()
    return PROFILE_EXECUTORS.get(profile, "in_process")


def select_executor(name: str | None = None) -> dg.ExecutorDefinition:
    name = (name or executor_name()).strip()
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor.configured(multiprocess_executor_config())
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError:
            raise ImportError("LM_MIXUP_EXECUTOR=k8s needs dagster-k8s: pip install -e '.[k8s]'") from None
        return k8s_job_executor.configured(k8s_executor_config())
    raise ValueError(f"LM_MIXUP_EXECUTOR={name!r}; choose one of {EXECUTORS}")


@contextmanager
def failing_on_full_disk() -> Iterator[None]:
    """A run that would not fit on its disk (``lib/disk.py``'s check, before anything is written) fails as a
    Dagster ``Failure``: the reason and the numbers, with them as metadata, and no traceback to read."""
    try:
        yield
    except InsufficientDiskSpace as exc:
        raise dg.Failure(description=str(exc), metadata=exc.plan.metadata()) from None
