"""Embeddings computed once: a vector per (embedding model, text), kept on disk between runs.

Several stages embed the same texts on every materialisation (the low-quality rows, MIXTURE
targets and variants, the rating library, the long-tail sets), and on a CPU that is most of a
re-run's time. ``cached_embed`` answers the texts it has seen with the same model and embeds only
the rest. The store is one SQLite file per model (``<folder>/<model slug>-<hash>.sqlite``; SQLite
handles concurrent processes), keyed by a hash of the text, vectors as float32 bytes. The key
says nothing about the device: CPU and GPU vectors of one model differ only by rounding.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

_DDL = "create table if not exists vectors (key text primary key, dim integer not null, vector blob not null)"
_CHUNK = 500  # keys per lookup statement (SQLite's bound-parameter limit is far above)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_file(folder: str | Path, model: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model)[-60:]
    return Path(folder) / f"{slug}-{hashlib.sha256(model.encode('utf-8')).hexdigest()[:10]}.sqlite"


def cached_embed(
    texts: Sequence[str], model: str, folder: str | Path, embed: Callable[[list[str]], np.ndarray]
) -> tuple[np.ndarray, int]:
    """``embed(texts)`` with the vectors already stored for ``model`` taken from ``folder``; the new ones
    are stored. Returns the vectors (in order, float32) and how many came from the cache."""
    texts = list(texts)
    path = cache_file(folder, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [text_key(t) for t in texts]
    found: dict[str, np.ndarray] = {}
    with sqlite3.connect(path, timeout=120) as con:
        con.execute(_DDL)
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            rows = con.execute(f"select key, vector from vectors where key in ({','.join('?' * len(chunk))})", chunk)
            found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
    todo = [i for i, k in enumerate(keys) if k not in found]
    first_of = {}
    for i in todo:
        first_of.setdefault(keys[i], i)
    if first_of:
        new = np.asarray(embed([texts[i] for i in first_of.values()]), dtype=np.float32)
        fresh = dict(zip(first_of, new))
        with sqlite3.connect(path, timeout=120) as con:
            con.executemany(
                "insert or ignore into vectors values (?, ?, ?)",
                [(k, int(v.shape[0]), v.tobytes()) for k, v in fresh.items()],
            )
        found.update(fresh)
    if not texts:
        return embed([]), 0
    return np.stack([found[k] for k in keys]).astype(np.float32, copy=False), len(texts) - len(todo)
