"""Benchmark: seconds per 100 lm-eval items on the demo's smoke tasks, per task, with the configured backend.

    python benchmarks/eval_bench.py [--model smollm2] [--limit 20] [--backend hf|vllm] [--batch-size 4]
                                    [--chat-template none|apply]
    python benchmarks/eval_bench.py --heldout [--heldout-rows 100] [--heldout-sources a,b] [--no-mmlu]
                                    [--model smollm2] [--batch-size 4]

The model (default: the profile's downstream base model, SmolLM2-135M-Instruct on the demo)
is scored on ``--limit`` items of each smoke task (MMLU multiple choice = 4 log-likelihood
requests per item; BBH generate-until ≤ 32 tokens; GSM8K generate ≤ 128 tokens), one task at
a time, and the wall time is scaled to 100 items. ``--backend vllm`` needs a GPU and the
``gpu`` extra (falls back to hf with a note otherwise). ``--chat-template`` is the downstream text
format (default: the profile's; ``none`` = plain prompts, as DS2 evaluates).

``--heldout``: instead, the evaluations meant to tell arms apart, each on every item: the
held-out log-likelihood task (``lib/heldout.py``) on ``--heldout-rows`` pairs taken round-robin
from the demo pool's sources (``--heldout-sources``: only those; plain prompts), and ``smoke_mmlu``
uncapped (273 MMLU dev items; ``--no-mmlu`` skips it).
Prints seconds, the mean, lm-eval's stderr and the 95 % bootstrap interval and its width.

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

from lm_mixup_assets.config import resolved_settings  # noqa: E402
from lm_mixup_assets.lib.eval_tasks import bootstrap_mean_ci, build_smoke_tasks, evaluate_model, smoke_benchmarks  # noqa: E402
from lm_mixup_assets.lib.heldout import build_heldout_task, heldout_benchmark  # noqa: E402
from lm_mixup_assets.lib.models import resolve_causal_lm  # noqa: E402
from lm_mixup_assets.lib.settings.evaluation import LmEvalSettings  # noqa: E402
from lm_mixup_assets.lib.training import vllm_available  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    protocol = resolved_settings(LmEvalSettings)[0]  # the active profile's evaluation settings
    parser.add_argument("--model", default=protocol.base_model)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--backend", default="hf")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--chat-template", default=protocol.chat_template, choices=["none", "apply"])
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "lm_mixup_bench_models"))
    parser.add_argument("--heldout", action="store_true", help="time the held-out task and the full MMLU dev set")
    parser.add_argument("--heldout-rows", type=int, default=100)
    parser.add_argument("--heldout-sources", default="", help="comma-separated demo sources (default: all)")
    parser.add_argument("--no-mmlu", action="store_true", help="--heldout without the full MMLU dev run")
    args = parser.parse_args()
    backend = args.backend
    if backend == "vllm" and not vllm_available():
        print("# vllm not installed: using hf")
        backend = "hf"
    model = resolve_causal_lm(args.model, args.cache_dir)
    if args.heldout:
        return heldout(model, args, backend)
    with tempfile.TemporaryDirectory() as folder:
        built = build_smoke_tasks(folder)
        for bench in smoke_benchmarks(args.limit):
            task = bench.headline_task
            t0 = time.perf_counter()
            run = evaluate_model(
                model,
                [bench],
                built.folder,
                batch_size=args.batch_size,
                backend=backend,
                chat_template=args.chat_template,
            )
            seconds = time.perf_counter() - t0
            n = next(s["n_samples"] for s in run.scores if s["task"] == task)
            print(
                f"{task} backend={backend} model={args.model} chat_template={args.chat_template} items={n} seconds={seconds:.1f} "
                f"seconds_per_100_items={100 * seconds / n:.1f}"
            )
            print(f"# loadavg_1min {os.getloadavg()[0]:.2f}")


def demo_pool_rows(n: int, sources: str = "") -> list[dict]:
    """``n`` (sample_id, prompt, completion) rows, round-robin over the demo manifest's sources (or those named)."""
    from itertools import chain, zip_longest

    from lm_mixup_assets.lib.ingest import ingest_source
    from lm_mixup_assets.lib.manifest import load_manifest

    wanted = [x for x in sources.split(",") if x]
    manifest = load_manifest("demo")
    per_source = [ingest_source(manifest.source(name)).rows.to_dict("records") for name in wanted or manifest.sources]
    mixed = [r for r in chain.from_iterable(zip_longest(*per_source)) if r is not None]
    return [{k: r[k] for k in ("sample_id", "prompt", "completion")} for r in mixed[:n]]


def heldout(model: str, args, backend: str) -> None:
    mmlu = next(b for b in smoke_benchmarks(uncapped=("smoke_mmlu",)) if b.name == "smoke_mmlu")
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        built = build_heldout_task(folder, demo_pool_rows(args.heldout_rows, args.heldout_sources), model)
        build_smoke_tasks(folder)
        print(
            f"# task files built in {time.perf_counter() - t0:.1f}s; held-out rows {built.items}, "
            f"skipped {len(built.skipped)}"
        )
        for bench in (heldout_benchmark(),) + (() if args.no_mmlu else (mmlu,)):
            t0 = time.perf_counter()
            run = evaluate_model(
                model,
                [bench],
                folder,
                batch_size=args.batch_size,
                backend=backend,
                chat_template=args.chat_template,
                per_item=True,
            )
            seconds = time.perf_counter() - t0
            metric, filt = bench.headline
            score = next(
                s for s in run.scores if (s["task"], s["metric"], s["filter"]) == (bench.headline_task, metric, filt)
            )
            values = [
                r["value"]
                for r in run.item_scores
                if (r["task"], r["metric"], r["filter"]) == (bench.headline_task, metric, filt)
            ]
            ci = bootstrap_mean_ci(values)
            print(
                f"{bench.headline_task} metric={metric} backend={backend} model={args.model} items={ci.n} "
                f"seconds={seconds:.1f} mean={ci.mean:.4f} stderr={score['stderr']:.4f} "
                f"ci95=[{ci.low:.4f}, {ci.high:.4f}] ci95_width={ci.width:.4f}"
            )
            print(f"# loadavg_1min {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
