"""The method's own clustering (the paper profile's ``clusters.algorithm: reference``).

MiniBatchKMeans centres and the reference's greedy capacity assignment, with the
reference's capacity rule (docs/method.md, "Clustering"). The fast default lives in
``clustering.py``; both return a ``ClusterResult`` and share its helpers.
"""

from __future__ import annotations

import numpy as np
import torch

from .clustering import (
    ClusterResult,
    _caps_notes,
    _finish,
    _prepare,
    _to_np,
    _trivial,
    draw_capacities,
)

__all__ = ["reference_clusters", "sequential_capacity_assign"]


def reference_clusters(
    embeddings: np.ndarray,
    min_size: int = 2,
    max_size: int = 5,
    mean_cap: float = 3.0,
    std_cap: float = 1.0,
    seed: int = 42,
    *,
    kmeans_batch_size: int = 2048,
    kmeans_max_iter: int = 30,
    device: str = "cpu",
) -> ClusterResult:
    """The method's clustering, step for step (docs/method.md, clustering):

    1. capacities by the method's rule (``draw_capacities(rule="reference")``);
    2. centres: scikit-learn ``MiniBatchKMeans(k, random_state=seed,
       batch_size=kmeans_batch_size, max_iter=kmeans_max_iter, n_init=1)``
       fitted on the (unit-norm) embeddings, then L2-normalised;
    3. rows by decreasing similarity to their best centre (ties: lower row
       first), each to its most similar centre that still has room
       (``sequential_capacity_assign``; exact, without an N x k sort).

    Every cluster ends exactly at its capacity (the capacities sum to N), so
    the method's repair of undersized clusters never has anything to move and
    is not repeated here.  ``centres``/``member_cosine`` of the result are the
    member means, as for the fast path.  MiniBatchKMeans runs on the CPU
    (k ~ N/3 makes it roughly quadratic in N: ~35 s for 8k rows on 2 cores,
    so tens of minutes for a 100k-row source); the assignment's matmuls run
    on ``device``.
    """
    import warnings

    from sklearn.cluster import MiniBatchKMeans

    notes: list[str] = []
    x = np.asarray(embeddings)
    norms = np.linalg.norm(x, axis=1) if x.ndim == 2 and len(x) else np.ones(0)
    # Fit on the vectors as given when they are unit-norm (as the embedder returns them):
    # re-normalising would change their last bits and with them MiniBatchKMeans' path.
    unit = x.ndim == 2 and np.all(np.isfinite(x)) and np.all(np.abs(norms - 1.0) < 1e-4)
    xn = np.ascontiguousarray(x, dtype=np.float32) if unit else _prepare(embeddings, min_size, max_size, notes)
    if unit and (min_size < 1 or max_size < min_size):
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    triv = _trivial(xn, min_size, notes)
    if triv is not None:
        return triv
    n = xn.shape[0]
    caps = draw_capacities(n, min_size, max_size, mean_cap, std_cap, seed, rule="reference")
    _caps_notes(caps, n, min_size, max_size, notes)
    k = len(caps)
    km = MiniBatchKMeans(
        n_clusters=k, random_state=seed, batch_size=kmeans_batch_size, max_iter=kmeans_max_iter, n_init=1
    )
    with warnings.catch_warnings():
        # init_size < n_clusters is the normal case at k ~ N/3; scikit-learn then uses 3k rows and says so
        warnings.filterwarnings("ignore", message=".*init_size.*")
        km.fit(xn)
    centres = km.cluster_centers_.astype(np.float32)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    labels = sequential_capacity_assign(xn, centres, caps, device=device)
    notes.append(f"MiniBatchKMeans: {km.n_iter_} epochs, {km.n_steps_} steps")
    return _finish(xn, labels, notes)


def sequential_capacity_assign(
    x: np.ndarray,
    centres: np.ndarray,
    caps: np.ndarray,
    *,
    n_candidates: int = 32,
    block: int = 4096,
    device: str = "cpu",
) -> np.ndarray:
    """The method's greedy assignment: rows in order of decreasing similarity to
    their best centre (stable: ties keep row order), each row to its most
    similar centre with room left (``caps``).  Returns labels (N,).

    Exact, but without sorting all k centres per row: each block of rows gets
    its ``n_candidates`` best centres among those open at the block's start.
    Centres only ever close, so the first still-open candidate is the row's
    best open centre; a row whose candidates have all closed re-starts the
    block from it with the centres open now.
    """
    n, k = x.shape[0], centres.shape[0]
    caps = np.asarray(caps, dtype=np.int64)
    if len(caps) != k:
        raise ValueError(f"{len(caps)} capacities for {k} centres")
    if int(caps.sum()) < n:
        raise ValueError(f"capacities sum to {int(caps.sum())} < {n} rows")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    ct = torch.from_numpy(np.ascontiguousarray(centres, dtype=np.float32)).to(device)
    with torch.no_grad():
        top1 = torch.cat([(xt[a : a + block] @ ct.T).max(dim=1).values for a in range(0, n, block)])
    order = np.argsort(-_to_np(top1).astype(np.float64), kind="stable")
    room = caps.tolist()
    labels = np.full(n, -1, dtype=np.int64)
    pos = 0
    while pos < n:
        open_c = np.flatnonzero(np.asarray(room) > 0)
        rows = order[pos : pos + block]
        m = min(n_candidates, len(open_c))
        with torch.no_grad():
            sims = xt[torch.as_tensor(rows, device=xt.device)] @ ct[torch.as_tensor(open_c, device=xt.device)].T
            cand = open_c[_to_np(torch.topk(sims, m, dim=1).indices)].tolist()
        done = 0
        for r, row_cands in zip(rows.tolist(), cand):
            for c in row_cands:
                if room[c] > 0:
                    room[c] -= 1
                    labels[r] = c
                    break
            else:  # every candidate closed meanwhile: redo from this row
                break
            done += 1
        pos += done
    return labels
