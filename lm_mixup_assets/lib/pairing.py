"""Nearest neighbours from other groups: MIXTURE's cross-topic partners (targets of other articles).

``mixture_variants`` offers each target's most similar targets of *other* articles to the
``cross_topic_merge`` operator. A dense N x N similarity matrix plus an N x N same-article
mask needs ~190 GB at the paper's 144k targets; here an exact inner-product index (faiss
``IndexFlatIP``: a blocked GEMM with a heap, the same search as ``selection.py``) is searched
in row chunks, so memory is O(N k). Time stays O(N^2 d) (exact search).

Same group hits are skipped by searching deep enough: among a row's ``k + g`` most similar
rows (g = its group's size, itself included) at most ``g`` share its group, so ``k`` others
are always there. Rows start at ``k + min(g, 64)`` and only those still short of ``k``
others are searched again, four times deeper each time, so a large article costs extra
only for its own rows and only when its targets really crowd out the rest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["cross_group_neighbours"]


def cross_group_neighbours(
    vectors: np.ndarray,
    groups,
    k: int,
    *,
    first_extra: int = 64,
    max_entries: int = 1 << 22,
) -> np.ndarray:
    """(N, k) int64: for each row, the rows of *other* groups with the largest inner product,
    by decreasing similarity (equal similarities: lower index first), -1 where fewer than
    ``k`` exist. Non-finite similarities never count.

    ``groups``: one label per row (e.g. article titles); missing labels (None/NaN) form a
    group of their own per row. ``max_entries`` bounds one chunk's result (rows x depth).
    """
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(x)
    k = max(0, int(k))
    out = np.full((n, k), -1, dtype=np.int64)
    if n < 2 or k == 0:
        return out
    codes, _ = pd.factorize(pd.Series(list(groups), dtype=object), use_na_sentinel=True)
    codes = np.asarray(codes, dtype=np.int64)
    if len(codes) != n:
        raise ValueError(f"{len(codes)} group labels for {n} rows")
    missing = codes < 0
    codes[missing] = codes.max(initial=-1) + 1 + np.arange(int(missing.sum()))  # each its own group
    # deepest useful search per row: k others among the k + g best are guaranteed
    need = np.minimum(n, k + np.bincount(codes)[codes])
    depth = np.minimum(need, k + min(first_extra, n))

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    todo = np.arange(n)
    while len(todo):
        todo = todo[np.argsort(depth[todo], kind="stable")]  # similar depths share a chunk
        again = []
        a = 0
        while a < len(todo):
            kk = int(depth[todo[a]])
            step = max(1, max_entries // kk)
            rows = todo[a : a + step]
            rows = rows[depth[rows] == kk]
            a += len(rows)
            sims, ids = index.search(x[rows], kk)
            # equal similarities by lower index (faiss's heap leaves their order open)
            order = np.lexsort((ids, -sims), axis=-1)
            sims = np.take_along_axis(sims, order, 1)
            ids = np.take_along_axis(ids, order, 1)
            ok = (ids >= 0) & np.isfinite(sims) & (codes[np.maximum(ids, 0)] != codes[rows][:, None])
            found = ok.sum(axis=1)
            done = (found >= k) | (kk >= need[rows])
            for r, row_ok, row_ids in zip(rows[done], ok[done], ids[done]):
                hits = row_ids[row_ok][:k]
                out[r, : len(hits)] = hits
            short = rows[~done]
            depth[short] = np.minimum(need[short], 4 * kk)
            again.append(short)
        todo = np.concatenate(again) if again else np.zeros(0, dtype=np.int64)
    return out
