"""GPU memory lifecycle: one generation engine per process, released when its asset ends; one lm-eval model per
evaluated model; GPU steps in their own process on the paper profile. Real engines (transformers backend, tiny
model) on CPU; the CUDA checks skip without a device."""

import shutil
import weakref

import dagster as dg
import pandas as pd
import pytest
import torch

import definitions
from lm_mixup_assets import scaling
from lm_mixup_assets.lib import generation
from lm_mixup_assets.lib.checkpoints import ModelCheckpoint
from lm_mixup_assets.lib.generation import fit_gpu_memory_utilization
from resources import generator as generator_module
from resources.generator import GeneratorResource

CHAT = [[{"role": "user", "content": "Say hello."}]]


@pytest.fixture
def engines(monkeypatch):
    """Every TransformersGenerator built during the test (weak references) and how many others held weights then."""
    built: list[weakref.ref] = []
    resident_at_start: list[int] = []
    real_init = generation.TransformersGenerator.__init__

    def counting_init(self, *args, **kwargs):
        resident_at_start.append(sum(1 for r in built if r() is not None and r().model is not None))
        real_init(self, *args, **kwargs)
        built.append(weakref.ref(self))

    monkeypatch.setattr(generation.TransformersGenerator, "__init__", counting_init)
    generator_module.release_engines()
    yield built, resident_at_start
    generator_module.release_engines()


def _copies(folder: str, tmp_path, n: int) -> list[str]:
    """``n`` copies of one model folder: distinct paths, hence distinct engines."""
    return [str(shutil.copytree(folder, tmp_path / f"model-{i}")) for i in range(n)]


def test_session_releases_the_engine_and_its_weights(home, tiny_causal_lm, engines):
    from resources import WarehouseResource

    built, _ = engines
    gen = GeneratorResource(backend="transformers", model=tiny_causal_lm, device="cpu", max_new_tokens=2)
    warehouse = WarehouseResource(home=str(home))
    with gen.session():
        outs, _ = gen.generate(CHAT, warehouse)
        assert outs[0].status == "ok" and len(generator_module._ENGINES) == 1
    assert generator_module._ENGINES == {}
    assert len(built) == 1 and (built[0]() is None or built[0]().model is None)  # weights dropped, not only unlisted


def test_a_second_model_replaces_the_first(home, tiny_causal_lm, tmp_path, engines):
    from resources import WarehouseResource

    built, resident_at_start = engines
    first, second = _copies(tiny_causal_lm, tmp_path, 2)
    gen = GeneratorResource(backend="transformers", model=first, device="cpu", max_new_tokens=2)
    warehouse = WarehouseResource(home=str(home))
    gen.generate(CHAT, warehouse)
    gen.generate(CHAT, warehouse, model=second)
    assert len(built) == 2 and resident_at_start == [0, 0]  # the first was closed before the second loaded
    assert len(generator_module._ENGINES) == 1
    gen.release()
    assert generator_module._ENGINES == {}


def test_resource_teardown_releases_what_a_step_left(home, tiny_causal_lm, engines):
    from resources import WarehouseResource

    # An asset that generates without session(): the run's end still frees the engine.
    @dg.asset
    def generates_without_session(generator: GeneratorResource) -> None:
        generator.generate(CHAT, WarehouseResource(home=str(home)))
        assert len(generator_module._ENGINES) == 1

    gen = GeneratorResource(backend="transformers", model=tiny_causal_lm, device="cpu", max_new_tokens=2)
    assert dg.materialize([generates_without_session], resources={"generator": gen}).success
    assert generator_module._ENGINES == {}


@pytest.mark.slow  # ~5 s: three model loads, the embedder and a Dagster run
def test_mixture_eval_loads_one_model_at_a_time_and_releases_the_last(
    resources, home, tiny_causal_lm, tmp_path, engines
):
    from resources.checkpoint_store import CHECKPOINT_IO_MANAGER

    built, resident_at_start = engines
    base, sft, grpo = _copies(tiny_causal_lm, tmp_path, 3)
    value = ModelCheckpoint.of_folder(
        grpo,
        "grpo_checkpoint",
        started_from=ModelCheckpoint.of_folder(
            sft, "sft_checkpoint", started_from=ModelCheckpoint.of_folder(base, "base_policy")
        ),
    )
    resources[CHECKPOINT_IO_MANAGER].handle_output(
        dg.build_output_context(asset_key=dg.AssetKey("grpo_checkpoint")), value
    )
    rows = pd.DataFrame(
        [
            {
                "example_id": f"e{i}",
                "instruction": "Merge the variants.",
                "input": f"Variant {i}.",
                "output": "<answer>A merged answer.</answer>",
                "cot": "",
                "task": "qa",
                "n_variants": 2,
                "split": "test",
            }
            for i in range(2)
        ]
    )
    resources["warehouse"].replace_partition("mixture", rows)
    (home / "artifacts" / "rating_library").mkdir(parents=True, exist_ok=True)  # no answer parses: no library read

    seen: list[int] = []

    @dg.asset(deps=["mixture_eval"])
    def after_mixture_eval() -> None:  # the next step of the same in-process run
        seen.append(len(generator_module._ENGINES))

    assets = [
        next(a for a in definitions.defs.assets if dg.AssetKey(k) in a.keys).to_source_asset()
        for k in ("grpo_checkpoint", "mixture", "rating_library")
    ]
    mixture_eval = next(a for a in definitions.defs.assets if dg.AssetKey("mixture_eval") in a.keys)
    res = {**resources, "generator": GeneratorResource(backend="transformers", model=tiny_causal_lm, device="cpu")}
    result = dg.materialize(
        [*assets, mixture_eval, after_mixture_eval],
        resources=res,
        run_config={
            "ops": {"mixture_eval": {"config": {"max_examples": 2, "max_new_tokens": 4, "max_failed_fraction": 1.0}}}
        },
    )
    assert result.success
    assert len(built) == 3  # base, SFT, GRPO
    assert resident_at_start == [0, 0, 0]  # each loaded only after the one before was released
    assert seen == [0]  # nothing left on the device for the steps after it


@pytest.mark.slow  # ~5 s: two lm-eval runs
def test_evaluate_model_builds_one_lm_eval_model_for_every_call(tmp_path, tiny_causal_lm, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from lm_mixup_assets.lib.eval_tasks import Benchmark, build_smoke_tasks, evaluate_model

    built = build_smoke_tasks(tmp_path / "tasks")
    made: list[weakref.ref] = []
    real_init = HFLM.__init__

    def counting_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    monkeypatch.setattr(HFLM, "__init__", counting_init)
    task = "smoke_mmlu"
    # Two shot counts: two simple_evaluate calls, formerly two model loads.
    benchmarks = [
        Benchmark("zero", (task,), 0, task, ("acc", "none")),
        Benchmark("one", (task,), 1, task, ("acc", "none")),
    ]
    run = evaluate_model(tiny_causal_lm, benchmarks, built.folder, limit=1, batch_size=1, device="cpu")
    assert {r["num_fewshot"] for r in run.scores} == {0, 1}
    assert len(made) == 1
    assert made[0]() is None or made[0]()._model is None  # released before evaluate_model returned


def test_vllm_share_is_capped_to_the_free_memory():
    gib = 2**30
    assert fit_gpu_memory_utilization(0.85, 140 * gib, 140 * gib) == 0.85  # an empty device: as configured
    # 30 GiB held by another model: 0.85 would fail vLLM's start-up check; the share shrinks to fit.
    share = fit_gpu_memory_utilization(0.85, 110 * gib, 140 * gib)
    assert share * 140 * gib <= 110 * gib and share > 0.7
    with pytest.raises(RuntimeError, match="LM_MIXUP_EXECUTOR=multiprocess"):
        fit_gpu_memory_utilization(0.85, 2 * gib, 140 * gib)
    with pytest.raises(ValueError):
        fit_gpu_memory_utilization(1.5, 140 * gib, 140 * gib)


def test_the_paper_profile_runs_each_step_in_its_own_process(monkeypatch):
    monkeypatch.delenv("LM_MIXUP_EXECUTOR", raising=False)
    assert scaling.executor_name("paper") == "multiprocess" and scaling.ISOLATES_STEPS["multiprocess"]
    assert scaling.executor_name("demo") == "in_process"
    monkeypatch.setenv("LM_MIXUP_PROFILE", "paper")
    assert scaling.select_executor().name == "multiprocess"
    monkeypatch.setenv("LM_MIXUP_EXECUTOR", "in_process")  # an explicit choice still wins
    assert scaling.select_executor().name == "in_process"
    monkeypatch.setenv("LM_MIXUP_GPUS", "2")
    limits = scaling.multiprocess_executor_config()["tag_concurrency_limits"]
    assert limits == [{"key": scaling.GPU_TAG, "value": "true", "limit": 2}]
    assert scaling.k8s_executor_config()["tag_concurrency_limits"] == limits


def test_every_gpu_step_carries_the_tag_the_limit_counts():
    gpu_steps = [a.node_def for a in definitions.defs.assets if a.node_def.pool == scaling.GPU_POOL]
    assert gpu_steps and all(n.tags.get(scaling.GPU_TAG) == "true" for n in gpu_steps)


def _gpu_steps_job():
    # Module level: the multiprocess executor rebuilds the job in each step's process.
    import os

    @dg.asset(pool=scaling.GPU_POOL, op_tags=scaling.gpu_op_tags())
    def first_gpu_step() -> int:
        return os.getpid()

    @dg.asset(pool=scaling.GPU_POOL, op_tags=scaling.gpu_op_tags())
    def second_gpu_step(first_gpu_step: int) -> None:
        assert os.getpid() != first_gpu_step and os.getpid() != int(os.environ["LM_MIXUP_TEST_PARENT_PID"])

    job = dg.define_asset_job("gpu_steps", executor_def=scaling.select_executor("multiprocess"))
    io = dg.FilesystemIOManager(base_dir=os.environ["LM_MIXUP_TEST_IO_DIR"])
    return dg.Definitions(
        assets=[first_gpu_step, second_gpu_step], jobs=[job], resources={"io_manager": io}
    ).resolve_job_def("gpu_steps")


@pytest.mark.slow
def test_gpu_steps_run_in_their_own_processes_under_multiprocess(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("LM_MIXUP_TEST_PARENT_PID", str(os.getpid()))
    monkeypatch.setenv("LM_MIXUP_TEST_IO_DIR", str(tmp_path / "io"))
    with dg.instance_for_test() as instance:
        result = dg.execute_job(dg.reconstructable(_gpu_steps_job), instance=instance)
        assert result.success


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_memory_is_back_after_a_session(home, tiny_causal_lm):
    from resources import WarehouseResource

    before = torch.cuda.memory_allocated()
    gen = GeneratorResource(backend="transformers", model=tiny_causal_lm, device="cuda", max_new_tokens=2)
    with gen.session():
        gen.generate(CHAT, WarehouseResource(home=str(home)))
        assert torch.cuda.memory_allocated() > before
    assert torch.cuda.memory_allocated() == before


def test_grpo_finds_the_colocated_engine_where_trl_keeps_it():
    """run_grpo shuts TRL's colocated vLLM engine down after training; TRL 1.x keeps it on the trainer's
    ``vllm_generation`` helper (an engine looked up as ``trainer.llm`` would always be None and never shut)."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    from lm_mixup_assets.lib.training import colocated_vllm_engine

    trl = Path(importlib.util.find_spec("trl").submodule_search_locations[0])  # read, not imported (seconds)
    assert "self.vllm_generation = " in (trl / "trainer" / "grpo_trainer.py").read_text()  # the installed TRL's layout
    engine = object()
    assert colocated_vllm_engine(SimpleNamespace(vllm_generation=SimpleNamespace(llm=engine))) is engine
    assert colocated_vllm_engine(SimpleNamespace(llm=engine)) is engine  # TRL 0.x
    assert colocated_vllm_engine(SimpleNamespace(vllm_generation=None)) is None  # rollouts without vLLM
