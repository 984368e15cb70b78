"""Benchmark: capacity-constrained clustering, ours (algorithm="fast") vs its previous path and the method's.

    python benchmarks/cluster_bench.py --sizes 5000,20000,100000 --baseline-n 5000
    python benchmarks/cluster_bench.py --sizes 100000,300000,1000000 --baseline-n 0 --old-n 100000

Every run (one algorithm at one size) is its own subprocess, so its peak RSS
(``resource.getrusage`` of that process, read right after the clustering) is
its own: the input (N x 384 float32, 1.5 GB at 1M rows) plus what the
clustering allocated.  ``data_rss_mb`` is the process before clustering.

* ``ours``: ``capacity_constrained_clusters`` as shipped (flat coarse split).
* ``old``: the same function with ``partition="tree", fill_probes=0``, the path
  it had before (recursive k-means partition on all rows, leftover rows
  searched against every open centre); at the sizes in ``--old-n`` (default
  100k; it grows ~N^1.5, 1M did not finish in 9 min), with the ratio
  ``intra_cos_ratio ours_over_old``.
* ``reference``: ``reference_clusters``: the method's capacity rule,
  scikit-learn MiniBatchKMeans(k, batch_size=2048, max_iter=30, n_init=1,
  random_state=seed) centres, then the exact greedy (rows by best similarity,
  each to its most similar centre with room), at ``--baseline-n``.  The
  capacities are drawn by a different rule, so the size histograms differ
  slightly.

Data: synthetic L2-normalised embeddings (default 384-d float32) with latent
topics (a mixture of Gaussians on the sphere): ``--topics`` random unit topic
directions; each row = its topic direction + Gaussian noise of norm
~``--noise``, normalised (seeded, generated in chunks so no temporaries inflate
the peak).

Per run: ``seconds`` (wall), ``cpu_seconds`` (process CPU time) and the 1-minute
load average (wall times on a shared 2-core box move with other processes),
``peak_rss_mb``, ``k``, ``min_size``/``max_size`` (cluster sizes) and whether they
lie within [--min-size, --max-size], ``intra_cos`` (mean over rows of the cosine
between the row and the L2-normalised mean of its own cluster, computed here
from the labels only, same for every algorithm), ``purity`` (share of rows whose
cluster's majority topic is their own) and the size histogram.  ``rand_cos``
is the mean cosine of random row pairs, for scale.  One figure set per line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

OLD_PATH = {"partition": "tree", "fill_probes": 0, "global_iters": 3, "refine_iters": 1}


def make_data(
    n: int, d: int, topics: int, noise: float, seed: int, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((topics, d)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    topic = rng.integers(topics, size=n)
    x = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, chunk):  # the same stream as one (n, d) draw, without N x d temporaries
        xa = t[topic[a : a + chunk]] + noise * rng.standard_normal((len(topic[a : a + chunk]), d)).astype(
            np.float32
        ) / np.sqrt(d)
        x[a : a + chunk] = xa / np.linalg.norm(xa, axis=1, keepdims=True)
    return x, topic


def purity(labels: np.ndarray, topic: np.ndarray) -> float:
    k = labels.max() + 1
    pair = labels.astype(np.int64) * (topic.max() + 1) + topic
    uniq, cnt = np.unique(pair, return_counts=True)
    lab = uniq // (topic.max() + 1)
    best = np.zeros(k, dtype=np.int64)
    np.maximum.at(best, lab, cnt)
    return float(best.sum() / len(labels))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(a: argparse.Namespace) -> None:
    """One algorithm at one size in this (fresh) process; prints one JSON line."""
    import torch

    from lm_mixup_assets.lib.clustering import capacity_constrained_clusters, mean_cosine_to_cluster_mean
    from lm_mixup_assets.lib.reference_clustering import reference_clusters

    torch.set_num_threads(a.threads)
    n, lo, hi = a.worker_n, a.min_size, a.max_size
    x, topic = make_data(n, a.dim, a.topics, a.noise, a.seed)
    data_rss = peak_rss_mb()
    if a.worker_algo == "reference":
        run = lambda: reference_clusters(x, lo, hi, seed=a.seed)  # noqa: E731
    else:
        kw = OLD_PATH if a.worker_algo == "old" else {}
        run = lambda: capacity_constrained_clusters(x, lo, hi, seed=a.seed, **kw)  # noqa: E731
    best = None
    for _ in range(a.repeat if a.worker_algo == "ours" else 1):  # fastest of --repeat
        w0, c0 = time.perf_counter(), time.process_time()
        res = run()
        secs, cpu = time.perf_counter() - w0, time.process_time() - c0
        if best is None or secs < best[1]:
            best = (res, secs, cpu)
    res, secs, cpu = best
    peak = peak_rss_mb()
    sizes = res.sizes
    hist = np.bincount(sizes)
    print(
        json.dumps(
            {
                "n": n,
                "seconds": secs,
                "cpu_seconds": cpu,
                "loadavg_1m": os.getloadavg()[0],
                "data_rss_mb": data_rss,
                "peak_rss_mb": peak,
                "k": len(sizes),
                "min_size": int(sizes.min()),
                "max_size": int(sizes.max()),
                "within_bounds": bool(sizes.min() >= lo and sizes.max() <= hi and sizes.sum() == n),
                "intra_cos": mean_cosine_to_cluster_mean(x, res.labels),
                "purity": purity(res.labels, topic),
                "size_hist": ",".join(f"{s}:{c}" for s, c in enumerate(hist) if c),
            }
        ),
        flush=True,
    )


def run_one(a: argparse.Namespace, algo: str, n: int) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker-algo",
        algo,
        "--worker-n",
        str(n),
        "--dim",
        str(a.dim),
        "--topics",
        str(a.topics),
        "--noise",
        str(a.noise),
        "--seed",
        str(a.seed),
        "--min-size",
        str(a.min_size),
        "--max-size",
        str(a.max_size),
        "--threads",
        str(a.threads),
        "--repeat",
        str(a.repeat),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(name: str, r: dict) -> None:
    n = r["n"]
    print(
        f"{name} n={n} seconds={r['seconds']:.2f} peak_rss_mb={r['peak_rss_mb']:.0f} k={r['k']} "
        f"min_size={r['min_size']} max_size={r['max_size']} intra_cos={r['intra_cos']:.4f}",
        flush=True,
    )
    print(
        f"{name} n={n} cpu_seconds={r['cpu_seconds']:.2f} loadavg_1m={r['loadavg_1m']:.2f} "
        f"data_rss_mb={r['data_rss_mb']:.0f}",
        flush=True,
    )
    print(f"{name} n={n} purity={r['purity']:.4f}", flush=True)
    print(f"{name} n={n} sizes_within_bounds={r['within_bounds']} size_hist={r['size_hist']}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5000,20000,100000")
    ap.add_argument("--baseline-n", default="5000", help="comma list; 0 or empty = skip reference")
    ap.add_argument("--old-n", default="100000", help="comma list: sizes also run on the previous path; 0 = none")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--topics", type=int, default=2000)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--min-size", type=int, default=2)
    ap.add_argument("--max-size", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="runs of ours per size; the fastest is reported")
    ap.add_argument("--worker-algo", choices=("ours", "old", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-n", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker_algo:
        return worker(a)

    def sizes_of(text: str) -> set[int]:
        return {int(s) for s in str(text).split(",") if s.strip() and int(s) > 0}

    sizes, base, old = sizes_of(a.sizes), sizes_of(a.baseline_n), sizes_of(a.old_n)
    print(
        f"config dim={a.dim} topics={a.topics} noise={a.noise} threads={a.threads} "
        f"min_size={a.min_size} max_size={a.max_size}",
        flush=True,
    )
    for n in sorted(sizes | base | old):
        x, _ = make_data(min(n, 200000), a.dim, a.topics, a.noise, a.seed)
        i, j = np.random.default_rng(0).integers(len(x), size=(2, 20000))
        print(f"data n={n} rand_cos={float(np.einsum('ij,ij->i', x[i], x[j]).mean()):.4f}", flush=True)
        del x
        ours = run_one(a, "ours", n)
        report("ours", ours)
        if n in old:
            prev = run_one(a, "old", n)
            report("old", prev)
            print(f"speedup_vs_old n={n} x={prev['seconds'] / ours['seconds']:.2f}", flush=True)
            print(f"intra_cos_ratio n={n} ours_over_old={ours['intra_cos'] / prev['intra_cos']:.4f}", flush=True)
        if n in base:
            ref = run_one(a, "reference", n)
            report("reference", ref)
            print(f"speedup n={n} x={ref['seconds'] / ours['seconds']:.1f}", flush=True)
            print(f"intra_cos_delta n={n} ours_minus_reference={ours['intra_cos'] - ref['intra_cos']:+.4f}", flush=True)


if __name__ == "__main__":
    main()
