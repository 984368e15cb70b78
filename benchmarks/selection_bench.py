"""Benchmark: long-tail kNN (ours: faiss exact flat index) vs a numpy brute-force baseline, and
distillation generation tokens/s with the configured generator backend.

    python benchmarks/selection_bench.py [--n 100000] [--dim 384] [--k 15] [--gen-inputs 16] [--skip-generation]

kNN data: synthetic L2-normalised embeddings with latent topics (as in cluster_bench.py).
Both methods compute every row's mean cosine distance to its k nearest other rows; the
figures are wall seconds, their ratio (baseline / ours) and the largest absolute score
difference (the scores must agree: both are exact).

Generation: ``--gen-inputs`` cluster inputs built from the packaged chatterbot corpus
(3 pairs each, the distiller's real prompt layout), generated greedily through the
``GeneratorResource`` of the active profile (demo: transformers on SmolLM2-135M-Instruct,
paper: vLLM) into a fresh warehouse, so nothing comes from the cache. ``--distiller`` picks
another model (default: the profile's generator model).

One figure per line; ``# loadavg_1min`` puts wall times in context on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from lm_mixup_assets.lib.selection import mean_knn_cosine_distance  # noqa: E402


def make_data(n: int, d: int, topics: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((topics, d)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    x = t[rng.integers(topics, size=n)] + noise * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def numpy_brute_force(x: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Baseline: full similarity blocks, self masked, argpartition for the k largest."""
    out = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), block):
        sims = x[start : start + block] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf
        top = np.take_along_axis(sims, np.argpartition(-sims, k - 1, axis=1)[:, :k], axis=1)
        out[start : start + block] = (1.0 - top.astype(np.float64)).mean(axis=1)
    return out


def bench_knn(n: int, dim: int, k: int) -> None:
    x = make_data(n, dim, topics=max(10, n // 500), noise=1.5, seed=0)
    t0 = time.perf_counter()
    ours = mean_knn_cosine_distance(x, k)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = numpy_brute_force(x, k)
    base_s = time.perf_counter() - t0
    print(f"knn ours n={n} d={dim} k={k} seconds={ours_s:.2f}")
    print(f"knn baseline_numpy n={n} d={dim} k={k} seconds={base_s:.2f}")
    print(f"knn speed_ratio baseline/ours={base_s / ours_s:.2f}")
    print(f"knn max_abs_score_diff={np.abs(ours - base).max():.2e}")
    print(f"# loadavg_1min {os.getloadavg()[0]:.2f}")


def bench_generation(n_inputs: int, max_new_tokens: int, distiller: str | None) -> None:

    from lm_mixup_assets.lib.ingest import SourceSpec, ingest_source
    from lm_mixup_assets.lib.manifest import load_manifest
    from lm_mixup_assets.lib.prompts import POOL_MERGE_INSTRUCTION, merge_members
    from lm_mixup_assets.lib.rewards import SYSTEM_PROMPT
    from lm_mixup_assets.lib.training import user_turn
    from resources import WarehouseResource, resource_values
    from resources.generator import GeneratorResource

    spec: SourceSpec = load_manifest("demo").sources["chatterbot"]
    rows = ingest_source(spec).rows.head(3 * n_inputs)
    pairs = list(zip(rows["prompt"], rows["completion"]))
    chats = [
        [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": user_turn({"instruction": POOL_MERGE_INSTRUCTION, "input": merge_members(pairs[i : i + 3])}),
            },
        ]
        for i in range(0, 3 * n_inputs, 3)
    ]
    gen = GeneratorResource(**resource_values("generator", GeneratorResource))
    with tempfile.TemporaryDirectory() as home:
        warehouse = WarehouseResource(home=home)
        model = distiller or gen.model
        t0 = time.perf_counter()
        gen.generate(chats[:1], warehouse, model=model, max_new_tokens=4)  # load the model outside the timing
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        outs, _ = gen.generate(chats[1:], warehouse, model=model, max_new_tokens=max_new_tokens, temperature=0.0)
        seconds = time.perf_counter() - t0
    tokens = sum(o.completion_tokens for o in outs)
    print(
        f"generation backend={gen.backend} model={model} inputs={len(outs)} batch={gen.batch_size} "
        f"max_new_tokens={max_new_tokens} load_seconds={load_s:.1f}"
    )
    print(f"generation seconds={seconds:.1f} new_tokens={tokens} tokens_per_s={tokens / seconds:.1f}")
    print(f"# loadavg_1min {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=15)
    parser.add_argument("--gen-inputs", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--distiller", default=None)
    parser.add_argument("--skip-generation", action="store_true")
    args = parser.parse_args()
    bench_knn(args.n, args.dim, args.k)
    if not args.skip_generation:
        bench_generation(args.gen_inputs + 1, args.max_new_tokens, args.distiller)


if __name__ == "__main__":
    main()
