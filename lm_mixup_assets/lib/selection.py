"""Selecting the ~3% training sets (docs/method.md, "Selection"): long-tail scores and training-set recipes ("arms").

Long-tail score: a row's mean cosine distance to its k nearest neighbours
within its own set (k=15), min-max normalised to [0, 1]; higher = rarer.
Exact kNN by faiss's flat inner-product index.  The text embedded is
``long_tail_text`` (the method's code prefixes "Instruction: " / "Answer: ").

Arms are named recipes, parsed from their names so a user adds one by naming it:

==================  ============================================================
``mixupA_oriB``     A% distilled high (long-tail rank) + B% original high (``original_rank``)
``highA_lowB``      A% original high (``original_rank``) + B% original low (random)
``original_high``   original high only (``original_rank``)
``distilled_high``  distilled high only, by long-tail rank
``random``          uniform sample of every rated-ok pool row
``full_low``        uniform sample of the original low rows
==================  ============================================================

Within an arm rows are either kept part by part in rank order (``row_order="by_part"``)
or arranged as the method's merge script does (``"reference"``): original part first,
then the distilled part, shuffled by Python's ``random`` seeded with ``shuffle_seed``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .ingest import normalise_text
from .settings.selection import OriginalRank, RowOrder

# Candidate pools an arm draws from, and how each is ordered.
POOLS = ("distilled_high", "original_high", "original_low", "rated_pool")
LONG_TAIL_RANKED = {"distilled_high", "original_high"}
ORIGIN = {
    "distilled_high": "distilled",
    "original_high": "original",
    "original_low": "original",
    "rated_pool": "original",
}
# How the original high pool is ranked: by long-tail score alone, or as the method's
# long-tail script ranks a rated set (judge score first, long-tail score within a score).
ORIGINAL_RANKS = tuple(m.value for m in OriginalRank)
ROW_ORDERS = tuple(m.value for m in RowOrder)


def long_tail_text(prompt: str, completion: str, prompt_prefix: str = "", answer_prefix: str = "") -> str:
    """The text embedded for the long-tail score: ``{prompt_prefix}{prompt}\n{answer_prefix}{completion}``, stripped."""
    return f"{prompt_prefix}{prompt}\n{answer_prefix}{completion}".strip()


# --------------------------------------------------------------------------- long tail


def mean_knn_cosine_distance(vectors: np.ndarray, k: int = 15) -> np.ndarray:
    """Each row's mean cosine distance to its ``k`` nearest other rows (exact; fewer when the set is smaller).

    faiss's exact inner-product index on L2-normalised rows (a blocked GEMM with a heap):
    as fast as hand-written numpy blocks and identical to them, without holding an n x n matrix.
    """
    import faiss

    n = len(vectors)
    if n < 2:
        return np.zeros(n, dtype=np.float64)
    k = min(k, n - 1)
    x = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, ids = index.search(x, k + 1)
    # Drop each row itself; when an exact duplicate outranked it, drop the (k+1)-th neighbour instead.
    is_self = ids == np.arange(n)[:, None]
    keep = np.where(is_self.any(axis=1, keepdims=True), ~is_self, np.arange(k + 1)[None, :] < k)
    return (1.0 - sims[keep].reshape(n, k).astype(np.float64)).mean(axis=1)


def normalise_unit(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant (or single) value maps to 0."""
    if len(values) == 0:
        return values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-12:
        return np.zeros(len(values), dtype=np.float64)
    return (values - lo) / (hi - lo)


def long_tail_scores(vectors: np.ndarray, k: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """``(mean kNN distance, normalised long-tail score)`` for one set."""
    raw = mean_knn_cosine_distance(vectors, k)
    return raw, normalise_unit(raw)


# --------------------------------------------------------------------------- arms


@dataclass(frozen=True)
class ArmRecipe:
    name: str
    parts: tuple[tuple[str, float], ...]  # (pool, fraction); fractions sum to 1

    def counts(self, n: int) -> dict[str, int]:
        """Rows wanted from each pool; rounding error goes to the last part so the total is exactly ``n``."""
        out, used = {}, 0
        for i, (pool, frac) in enumerate(self.parts):
            take = n - used if i == len(self.parts) - 1 else int(round(n * frac))
            out[pool] = take
            used += take
        return out


_TWO_PART = re.compile(r"^(mixup|high)(\d{1,3})_(ori|low)(\d{1,3})$")
_SINGLE = {
    "original_high": "original_high",
    "distilled_high": "distilled_high",
    "random": "rated_pool",
    "full_low": "original_low",
}


def parse_arm(name: str) -> ArmRecipe:
    if name in _SINGLE:
        return ArmRecipe(name, ((_SINGLE[name], 1.0),))
    m = _TWO_PART.fullmatch(name)
    if m and (m.group(1), m.group(3)) in {("mixup", "ori"), ("high", "low")}:
        a, b = int(m.group(2)), int(m.group(4))
        if a + b != 100:
            raise ValueError(f"arm {name!r}: the two percentages must add up to 100 (got {a} + {b})")
        first, second = (
            ("distilled_high", "original_high") if m.group(1) == "mixup" else ("original_high", "original_low")
        )
        return ArmRecipe(name, ((first, a / 100), (second, b / 100)))
    raise ValueError(
        f"arm {name!r} is not a recipe: use mixupA_oriB, highA_lowB (A + B = 100), or one of {sorted(_SINGLE)}"
    )


def content_key(prompt: str, completion: str) -> str:
    return normalise_text(prompt) + "\x1f" + normalise_text(completion)


def order_candidates(pool: str, candidates: pd.DataFrame, seed: int, original_rank: str = "long_tail") -> pd.DataFrame:
    """Long-tail pools: rarest first (ties by sample_id); with ``original_rank="quality_then_long_tail"`` the
    original high pool goes by ``overall_compressed`` first (highest first), rarest first within a score.
    Others: a seeded uniform shuffle."""
    if original_rank not in ORIGINAL_RANKS:
        raise ValueError(f"original_rank {original_rank!r}: choose one of {ORIGINAL_RANKS}")
    if candidates.empty:
        return candidates
    if pool == "original_high" and original_rank == "quality_then_long_tail":
        if "overall_compressed" not in candidates or candidates["overall_compressed"].isna().any():
            missing = candidates["sample_id"][
                candidates.get("overall_compressed", pd.Series(index=candidates.index)).isna()
            ]
            raise ValueError(
                f"original_rank='quality_then_long_tail' needs overall_compressed on every original "
                f"high row; missing for {len(missing)} rows, e.g. {missing.head(3).tolist()}"
            )
        return candidates.sort_values(
            ["overall_compressed", "long_tail_score", "sample_id"], ascending=[False, False, True], kind="stable"
        )
    if pool in LONG_TAIL_RANKED:
        return candidates.sort_values(["long_tail_score", "sample_id"], ascending=[False, True], kind="stable")
    ordered = candidates.sort_values("sample_id", kind="stable")  # input order must not change the draw
    return ordered.sample(frac=1.0, random_state=np.random.RandomState(seed))


@dataclass
class ComposedArm:
    rows: pd.DataFrame
    wanted: dict[str, int]
    taken: dict[str, int]
    available: dict[str, int]

    @property
    def shortfall(self) -> dict[str, int]:
        return {p: self.wanted[p] - self.taken[p] for p in self.wanted if self.wanted[p] > self.taken[p]}


def compose_arm(
    recipe: ArmRecipe,
    candidates: dict[str, pd.DataFrame],
    n: int,
    seed: int = 0,
    *,
    original_rank: str = "long_tail",
    row_order: str = "by_part",
    shuffle_seed: int = 42,
    drop_duplicate_content: bool = True,
) -> ComposedArm:
    """Take each part's share from its pool in order (``order_candidates``), skipping rows whose content
    is already in the arm unless ``drop_duplicate_content`` is off.

    ``candidates[pool]`` needs ``sample_id``, ``prompt``, ``completion`` (and ``long_tail_score`` for
    long-tail pools, ``overall_compressed`` for ``original_rank="quality_then_long_tail"``). A pool too
    small for its share gives what it has; the shortfall is reported, not filled from another pool, so
    the arm's ratio never changes silently.  ``row_order``: see the module docstring; ``position`` is
    the row's place in the exported file either way.
    """
    if row_order not in ROW_ORDERS:
        raise ValueError(f"row_order {row_order!r}: choose one of {ROW_ORDERS}")
    wanted = recipe.counts(n)
    seen: set[str] = set()
    parts, taken, available = [], {}, {}
    for pool, _ in recipe.parts:
        frame = candidates.get(pool)
        if frame is None:
            raise KeyError(f"arm {recipe.name!r} needs candidates for {pool!r}")
        available[pool] = len(frame)
        ordered = order_candidates(pool, frame, seed, original_rank)
        if drop_duplicate_content:
            keys = [content_key(p, c) for p, c in zip(ordered["prompt"], ordered["completion"])]
            keep = []
            for i, key in enumerate(keys):
                if len(keep) == wanted[pool]:
                    break
                if key not in seen:
                    seen.add(key)
                    keep.append(i)
        else:
            keep = list(range(min(wanted[pool], len(ordered))))
        chosen = ordered.iloc[keep].assign(pool=pool, origin=ORIGIN[pool])
        taken[pool] = len(chosen)
        parts.append(chosen)
    if row_order == "reference":
        # The merge script's list is original + distilled, then random.seed(seed); random.shuffle(list).
        parts.sort(key=lambda part: ORIGIN[part["pool"].iat[0]] != "original" if len(part) else True)
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if row_order == "reference" and len(rows):
        perm = list(range(len(rows)))
        random.Random(shuffle_seed).shuffle(perm)  # the same permutation as random.seed + random.shuffle
        rows = rows.iloc[perm].reset_index(drop=True)
    rows.insert(0, "position", np.arange(len(rows), dtype=np.int64))
    return ComposedArm(rows=rows, wanted=wanted, taken=taken, available=available)
