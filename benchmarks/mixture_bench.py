"""MIXTURE throughput of the offline path: examples built per second for N paragraphs.

    python benchmarks/mixture_bench.py [--paragraphs 1000] [--variants 6] [--max-variants 6]
    python benchmarks/mixture_bench.py --paper-sizes      # the paper's 20 variants, clusters of 2-20
    python benchmarks/mixture_bench.py --pairing-only     # only the cross-topic pairing at 144k targets

Materialises the mixture group (extractive writer, heuristic judge, MiniLM
embeddings for cross-topic merges and the rating library) into a temporary
home and prints each stage's seconds, examples/s, and the distribution of
variants per example. One figure per line.

Then the cross-topic pairing of ``mixture_variants`` (each target's 3 most similar
targets of other articles, ``lib/pairing.py``) on ``--pairing`` synthetic 384-d targets
(144,000 = the paper's scale; 0 = skip), in a subprocess so its peak RSS is its own:
seconds and peak RSS, with the memory the dense N x N code it replaced would need; and,
at ``--pairing-check`` targets, the dense code and the index in the same run (seconds,
whether the partners are identical). Synthetic targets: articles of 1-60 targets around
an article direction (cosine ~0.5 within an article), so a target's nearest rows are
mostly its own article's, the case the index has to search past.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["LM_MIXUP_PROFILE"] = "demo"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def synthetic_targets(n: int, d: int = 384, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 61, size=n // 10 + 1)
    titles = np.repeat(np.arange(len(sizes)), sizes)[:n]
    if len(titles) < n:
        titles = np.concatenate([titles, np.arange(n - len(titles)) + len(sizes)])
    art = rng.standard_normal((int(titles.max()) + 1, d)).astype(np.float32)  # article directions
    vectors = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 16384):  # in chunks: no N x d temporaries beyond the result
        t = titles[a : a + 16384]
        v = art[t] + rng.standard_normal((len(t), d)).astype(np.float32)
        vectors[a : a + 16384] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return vectors, np.array([f"article {i}" for i in titles], dtype=object)


def dense_partners(vectors, titles, k):
    """The code lib/pairing.py replaced in mixture_variants (N x N matrices)."""
    import numpy as np

    sims = vectors @ vectors.T
    same_article = titles[:, None] == titles[None, :]
    sims = np.where(same_article, -np.inf, sims)
    return [[int(j) for j in np.argsort(-sims[i])[:k] if np.isfinite(sims[i, j])] for i in range(len(titles))]


def pairing_worker(n: int, k: int, check: bool) -> None:
    """One pairing run in this (fresh) process; prints one JSON line."""
    from lm_mixup_assets.lib.pairing import cross_group_neighbours

    vectors, titles = synthetic_targets(n)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    got = cross_group_neighbours(vectors, titles, k)
    out = {
        "n": n,
        "seconds": time.perf_counter() - t0,
        "data_rss_mb": rss_data,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "partners_per_target": float((got >= 0).sum(axis=1).mean()),
    }
    if check:
        t0 = time.perf_counter()
        want = dense_partners(vectors, titles, k)
        out["dense_seconds"] = time.perf_counter() - t0
        out["identical"] = [list(r[r >= 0]) for r in got] == want
    print(json.dumps(out), flush=True)


def run_pairing(n: int, k: int, check: bool) -> dict:
    cmd = [sys.executable, __file__, "--pairing-worker", str(n), "--k", str(k)] + (["--check"] if check else [])
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def pairing_bench(n: int, check_n: int, k: int) -> None:
    if check_n:
        r = run_pairing(check_n, k, True)
        print(
            f"pairing_check n={check_n} knn_seconds={r['seconds']:.2f} dense_seconds={r['dense_seconds']:.2f} "
            f"identical={r['identical']}",
            flush=True,
        )
    if n:
        r = run_pairing(n, k, False)
        dense_gb = n * n * (4 + 1 + 4) / 1e9  # float32 sims, bool same-article mask, float32 np.where result
        print(
            f"pairing n={n} k={k} seconds={r['seconds']:.1f} peak_rss_mb={r['peak_rss_mb']:.0f} "
            f"data_rss_mb={r['data_rss_mb']:.0f} partners_per_target={r['partners_per_target']:.2f} "
            f"dense_would_need_gb={dense_gb:.0f}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paragraphs", type=int, default=1000)
    ap.add_argument("--variants", type=int, default=6)
    ap.add_argument("--max-variants", type=int, default=6)
    ap.add_argument("--paper-sizes", action="store_true", help="variants and cluster sizes of the paper profile")
    ap.add_argument("--pairing", type=int, default=144000, help="synthetic targets for the pairing line; 0 = skip")
    ap.add_argument("--pairing-check", type=int, default=5000, help="targets for dense vs index; 0 = skip")
    ap.add_argument("--pairing-only", action="store_true", help="skip the MIXTURE build")
    ap.add_argument("--k", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pairing-worker", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pairing_worker:
        return pairing_worker(args.pairing_worker, args.k, args.check)
    if args.pairing_only:
        return pairing_bench(args.pairing, args.pairing_check, args.k)
    # imported here: the pairing worker's peak RSS should not include Dagster
    import dagster as dg

    import definitions
    from resources import build_resources

    if args.paper_sizes:
        from resources.profiles import PROFILES

        args.variants = PROFILES["paper"]["mixture"]["variants_per_target"]
        args.max_variants = PROFILES["paper"]["mixture"]["max_variants"]
    assets = [a for a in definitions.defs.assets if set(a.group_names_by_key.values()) == {"mixture"}]
    config = {
        "ops": {
            "wiki_paragraphs": {"config": {"max_paragraphs": args.paragraphs}},
            "mixture_variants": {"config": {"variants_per_target": args.variants}},
            "mixture": {"config": {"max_variants": args.max_variants}},
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        result = dg.materialize(assets, resources=build_resources(home=tmp), run_config=config)
        total = time.monotonic() - started
        mixture_meta = result.asset_materializations_for_node("mixture")[0].metadata
        examples = mixture_meta["dagster/row_count"].value
        sizes = mixture_meta["variants_per_example"].value
        mean_size = mixture_meta["mean_variants"].value
        variants = result.asset_materializations_for_node("mixture_variants")[0].metadata["dagster/row_count"].value
    print(f"paragraphs={args.paragraphs}")
    for event in result.get_step_success_events():
        print(f"stage {event.step_key} seconds={event.event_specific_data.duration_ms / 1000:.2f}")
    print(f"variants={variants}")
    print(f"examples={examples}")
    print(f"variants_per_example_range={min(map(int, sizes), default=0)}-{max(map(int, sizes), default=0)}")
    print(f"variants_per_example_mean={mean_size:.2f}")
    print(f"variants_per_example_histogram={sizes}")
    print(f"total_seconds={total:.1f}")
    print(f"examples_per_s={examples / total:.1f}", flush=True)
    pairing_bench(args.pairing, args.pairing_check, args.k)


if __name__ == "__main__":
    main()
