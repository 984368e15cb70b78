"""Benchmark: seconds per 100 lm-eval items on the demo's smoke tasks, per task, with the configured backend.

    python benchmarks/eval_bench.py [--model smollm2] [--limit 20] [--backend hf|vllm] [--batch-size 4]
                                    [--chat-template none|apply]

The model (default: the profile's downstream base model, SmolLM2-135M-Instruct on the demo)
is scored on ``--limit`` items of each smoke task (MMLU multiple choice = 4 log-likelihood
requests per item; BBH generate-until ≤ 32 tokens; GSM8K generate ≤ 128 tokens), one task at
a time, and the wall time is scaled to 100 items. ``--backend vllm`` needs a GPU and the
``gpu`` extra (falls back to hf with a note otherwise). ``--chat-template`` is the downstream text
format (default: the profile's; ``none`` = plain prompts, as DS2 evaluates).

One figure per line; ``# loadavg_1min`` puts wall times in context on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from lm_mixup_assets.lib.eval_tasks import build_smoke_tasks, evaluate_model, smoke_benchmarks  # noqa: E402
from lm_mixup_assets.lib.models import resolve_causal_lm  # noqa: E402
from lm_mixup_assets.lib.training import vllm_available  # noqa: E402
from resources import settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=settings("evaluation")["base_model"])
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--backend", default="hf")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--chat-template", default=settings("evaluation")["chat_template"], choices=["none", "apply"])
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "lm_mixup_bench_models"))
    args = parser.parse_args()
    backend = args.backend
    if backend == "vllm" and not vllm_available():
        print("# vllm not installed: using hf")
        backend = "hf"
    model = resolve_causal_lm(args.model, args.cache_dir)
    with tempfile.TemporaryDirectory() as folder:
        built = build_smoke_tasks(folder)
        for bench in smoke_benchmarks(args.limit):
            task = bench.headline_task
            t0 = time.perf_counter()
            run = evaluate_model(model, [bench], built.folder, batch_size=args.batch_size, backend=backend,
                                 chat_template=args.chat_template)
            seconds = time.perf_counter() - t0
            n = next(s["n_samples"] for s in run.scores if s["task"] == task)
            print(f"{task} backend={backend} model={args.model} chat_template={args.chat_template} items={n} seconds={seconds:.1f} "
                  f"seconds_per_100_items={100 * seconds / n:.1f}")
            print(f"# loadavg_1min {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
