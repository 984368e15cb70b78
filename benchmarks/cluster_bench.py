"""Benchmark: capacity-constrained clustering, ours (algorithm="fast") vs the method's (algorithm="reference").

    python benchmarks/cluster_bench.py --sizes 5000,20000,100000 --baseline-n 5000

``reference`` is ``reference_clusters``: the method's capacity rule, scikit-learn
MiniBatchKMeans(k, batch_size=2048, max_iter=30, n_init=1, random_state=seed)
centres, then the exact greedy (rows by best similarity, each to its most
similar centre with room).  The two draw their capacities by different rules,
so their size histograms differ slightly.

Data: synthetic L2-normalised embeddings (default 384-d) with latent topics:
``--topics`` random unit topic directions; each row = its topic direction +
Gaussian noise of norm ~``--noise``, normalised (seeded).

Quality figure ``intra_cos``: mean over rows of the cosine between the row and
the L2-normalised mean of its own cluster (same definition for both methods,
computed here from the labels only).  ``rand_cos`` is the mean cosine of
random row pairs, for scale.  ``purity`` is the share of rows whose cluster's
majority topic is their own topic.

One figure per line, e.g. ``ours n=5000 seconds=0.41 intra_cos=0.712``;
``cpu_seconds`` (process CPU time) and the 1-minute load average are printed
too, since wall times on a shared 2-core box move with other processes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from lm_mixup_assets.lib.clustering import (  # noqa: E402
    capacity_constrained_clusters,
    mean_cosine_to_cluster_mean,
)
from lm_mixup_assets.lib.reference_clustering import reference_clusters  # noqa: E402


def make_data(n: int, d: int, topics: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((topics, d)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    topic = rng.integers(topics, size=n)
    x = t[topic] + noise * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), topic


def purity(labels: np.ndarray, topic: np.ndarray) -> float:
    k = labels.max() + 1
    pair = labels.astype(np.int64) * (topic.max() + 1) + topic
    uniq, cnt = np.unique(pair, return_counts=True)
    lab = uniq // (topic.max() + 1)
    best = np.zeros(k, dtype=np.int64)
    np.maximum.at(best, lab, cnt)
    return float(best.sum() / len(labels))


def timed(fn, *args, **kw):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, time.perf_counter() - w0, time.process_time() - c0


def report(name: str, n: int, secs: float, cpu: float, x: np.ndarray, topic: np.ndarray, res, lo: int, hi: int) -> float:
    ic = mean_cosine_to_cluster_mean(x, res.labels)
    sizes = res.sizes
    hist = np.bincount(sizes)
    hist_s = ",".join(f"{s}:{c}" for s, c in enumerate(hist) if c)
    ok = bool(sizes.min() >= lo and sizes.max() <= hi and sizes.sum() == n)
    print(f"{name} n={n} seconds={secs:.2f} intra_cos={ic:.4f}", flush=True)
    print(f"{name} n={n} cpu_seconds={cpu:.2f} loadavg_1m={os.getloadavg()[0]:.2f}", flush=True)
    print(f"{name} n={n} purity={purity(res.labels, topic):.4f}", flush=True)
    print(f"{name} n={n} k={len(sizes)} sizes_within_bounds={ok} size_hist={hist_s}", flush=True)
    return ic


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5000,20000,100000")
    ap.add_argument("--baseline-n", default="5000", help="comma list; 0 or empty = skip reference")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--topics", type=int, default=2000)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--min-size", type=int, default=2)
    ap.add_argument("--max-size", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="runs of ours per size; the fastest is reported")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lo, hi = a.min_size, a.max_size
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    base = {int(s) for s in str(a.baseline_n).split(",") if s.strip() and int(s) > 0}
    print(f"config dim={a.dim} topics={a.topics} noise={a.noise} threads={torch.get_num_threads()} "
          f"min_size={lo} max_size={hi}", flush=True)
    for n in sorted(set(sizes) | base):
        x, topic = make_data(n, a.dim, a.topics, a.noise, a.seed)
        rng = np.random.default_rng(0)
        i, j = rng.integers(n, size=(2, 20000))
        print(f"data n={n} rand_cos={float(np.einsum('ij,ij->i', x[i], x[j]).mean()):.4f}", flush=True)
        ours_ic = ours_t = None
        if n in sizes or n in base:
            runs = [timed(capacity_constrained_clusters, x, lo, hi, seed=a.seed) for _ in range(a.repeat)]
            res, ours_t, ours_c = min(runs, key=lambda r: r[1])  # best of --repeat
            ours_ic = report("ours", n, ours_t, ours_c, x, topic, res, lo, hi)
        if n in base:
            ref, ref_t, ref_c = timed(reference_clusters, x, lo, hi, seed=a.seed)
            ref_ic = report("reference", n, ref_t, ref_c, x, topic, ref, lo, hi)
            print(f"speedup n={n} x={ref_t / ours_t:.1f}", flush=True)
            print(f"intra_cos_delta n={n} ours_minus_reference={ours_ic - ref_ic:+.4f}", flush=True)


if __name__ == "__main__":
    main()
