"""Capacity-constrained clustering of sentence embeddings (LM-mixup pool building).

Pure numpy (scipy.sparse for per-cluster sums); no Dagster, no torch: numpy's BLAS
matmuls and gathers are faster on shared CPU cores than torch's small ops.

The method
----------
1. Draw cluster capacities from N(mean_cap, std_cap), round, clip to
   [min_size, max_size] and adjust them so that they sum to exactly N.
   k = number of capacities.
2. Find k centres on the L2-normalised rows (spherical k-means).
3. Assign rows, most confident first, each to its most similar centre that
   still has room.
4. Move the members of clusters smaller than ``min_size`` to the nearest
   cluster with room (never above ``max_size``).

Because the capacities sum to exactly N and every capacity is in
[min_size, max_size], step 3 fills every cluster to exactly its capacity, so
every size lies in [min_size, max_size] (step 4 only matters for degenerate
size bounds).

How it is made fast (``capacity_constrained_clusters``)
-------------------------------------------------------
k is about N/3, so a flat k-means (N x k x d per iteration) and a dense N x k
similarity matrix are far too expensive at 100k rows.  Up to N = 8192 the
search is flat (exact: one N x k matmul + top-m, k-means++ from the Gram
matrix); above that the work per row is kept constant (time ~linear in N up
to ~1M rows, memory O(N d + k d)):

* rows are split into at most ``max_cells`` (256) *cells* of at least
  ``leaf_size`` (512) rows by one flat, IVF-style coarse k-means
  (``_coarse_partition``): trained on a seeded sample of at most 131,072
  rows (all rows below that), then two chunked Lloyd passes over all rows,
  the last of which also gives each row's nearest cells.  Cells of at most
  2 x leaf_size rows (up to ~260k rows) are the *leaves*; larger ones are
  split again by k-means into leaves of ~leaf_size, and a row's probes are
  then its nearest leaves among those of its probed cells (N x 3 cells x
  leaves per cell, instead of N x all ~2000 leaves at 1M rows).  Leaves of 512 rather than 1024 halve the per-leaf
  k-means and the candidate search, and scored better (intra-cluster cosine
  0.806 vs 0.801 at 100k, benchmark data);
* the k centres are split over the leaves in proportion to their sizes and
  found by k-means++ + spherical k-means inside each leaf (cost N x leaf/3 x d);
* each row probes its ``n_probe`` nearest leaves (own leaf first, by cosine
  to the leaf centroids); a centre belongs to the leaf whose centroid is
  nearest;
* each row's ``n_candidates`` best centres are looked up among the centres of
  its probed leaves (one matmul + top-m per leaf, over the (row, probe) pairs
  grouped by leaf; top-m by numpy's argpartition, cheaper than torch.topk);
* the greedy capacity assignment runs in vectorised rounds: every unassigned
  row claims its best candidate centre that still has room, and each centre
  accepts its most similar claimants up to its remaining room (a lexsort by
  (centre, -similarity) and a rank within each centre); losers move on to
  their next candidate.  Rows whose candidates all filled up are placed by
  the same rounds against all centres that still have room (first, where
  rows x open centres is large, against those in their ``fill_probes``
  nearest leaves; and, only
  if that stalls on massive ties such as thousands of identical rows, by a
  one-shot fill of the free slots);
* the centres are re-estimated from the members and the assignment is
  repeated (``refine_iters``; optionally Lloyd iterations across leaves
  before the first assignment, ``global_iters``).

Big temporaries are chunked (normalisation, nearest-centroid passes, the
final centres and member cosines), so at 1M x 384 rows the peak is the input
(used as given when it is already unit-norm float32, an embedder's output;
else a normalised copy) and O(k d + N) working memory.  All of it is numpy:
its BLAS matmuls and gathers beat torch's small CPU ops, most of all on
shared cores.  The previous path
(recursive partition on all rows, leftovers against every open centre) is
``partition="tree", fill_probes=0, global_iters=3, refine_iters=1``; it grew
~N^1.5 (benchmarks/cluster_bench.py compares the two).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .cluster_capacities import CAPACITY_RULES, draw_capacities
from .spherical_kmeans import (
    _mm,
    _normalise_rows,
    _segment_sums,
    _spherical_kmeans,
    _take,
    _to_np,
    _top_m,
    _unit_means,
    _unit_rows,
)

__all__ = [
    "ALGORITHMS",
    "CAPACITY_RULES",
    "ClusterResult",
    "capacity_constrained_clusters",
    "draw_capacities",
    "mean_cosine_to_cluster_mean",
]


# "fast": ours (module docstring); "reference": the method's code (``reference_clustering.reference_clusters``).
ALGORITHMS = ("fast", "reference")


# --------------------------------------------------------------------------- #
# Result type
# --------------------------------------------------------------------------- #
@dataclass
class ClusterResult:
    labels: np.ndarray  # (N,) int64, values 0..k-1, every label used
    sizes: np.ndarray  # (k,) int64, sizes[j] == (labels == j).sum()
    centres: np.ndarray  # (k, d) float32, L2-normalised mean of members
    member_cosine: np.ndarray  # (N,) float32, cosine of each row to its centre
    notes: list[str] = field(default_factory=list)

    @property
    def k(self) -> int:
        return int(len(self.sizes))

    def members(self) -> list[np.ndarray]:
        """Row indices of each cluster (list of k arrays)."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.cumsum(self.sizes)[:-1]
        return np.split(order, bounds) if len(self.sizes) else []


# --------------------------------------------------------------------------- #
# Partitioning into leaves
# --------------------------------------------------------------------------- #
def _nearest(x: np.ndarray, centres: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """Index of each row's most similar centre, in row chunks (no N x c matrix)."""
    out = np.empty(x.shape[0], dtype=np.int64)
    for a in range(0, x.shape[0], chunk):
        out[a : a + chunk] = _mm(x[a : a + chunk], centres).argmax(axis=1)
    return out


def _by_label(labels: np.ndarray, k: int) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=k))])
    return [order[bounds[j] : bounds[j + 1]] for j in range(k)]


def _coarse_partition(
    x: np.ndarray,
    leaf_size: int,
    gen: np.random.Generator,
    iters: int,
    sample: int | None,
    n_probe: int,
    passes: int = 2,
    chunk: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat coarse split of all rows into ~N/leaf_size leaves (IVF-style).

    Spherical k-means trained on a seeded sample (at least 64 rows per leaf;
    all rows when N <= ``sample``), then, if it was a sample, ``passes``
    Lloyd passes on all rows (chunked matmuls).  Those full-data passes
    matter: boundaries from the sample alone cut many more topics (on the
    benchmark data, 100k rows, 20% of rows off their topic's leaf vs 16%
    after two passes, 12% trained on all rows); restricting them to
    neighbouring centroids (cheaper per pass) missed the leaves that actually
    share a topic.  The last pass also gives each row's ``n_probe`` nearest
    centroids, its own (its label) first.

    Returns (label of each row, (N, n_probe) probe table)."""
    n = x.shape[0]
    L = max(2, round(n / leaf_size))
    n_train = min(n, max(int(sample), 64 * L)) if sample else n
    sub = np.sort(gen.choice(n, size=n_train, replace=False)) if n_train < n else None
    cent, _ = _spherical_kmeans(x if sub is None else _take(x, sub), L, gen, iters, init="kmeans++")
    del sub
    L = cent.shape[0]
    probe = np.empty((n, min(n_probe, L)), dtype=np.int64)
    lab = None
    for p in range(1 + (passes if n_train < n else 0)):
        if p:
            cent = _unit_means(x, lab, L, cent)
        for a in range(0, n, chunk):
            probe[a : a + chunk] = _top_m(_mm(x[a : a + chunk], cent), probe.shape[1])[0]
        if lab is not None and np.array_equal(probe[:, 0], lab):
            break
        lab = probe[:, 0].copy()
    return lab, probe


def _partition(
    x: np.ndarray,
    rows: np.ndarray,
    leaf_size: int,
    gen: np.random.Generator,
    iters: int,
    out: list[np.ndarray],
    depth: int = 0,
) -> None:
    """Recursively split ``rows`` with spherical k-means until every leaf has
    at most 2*leaf_size rows (or splitting stops making progress)."""
    n = len(rows)
    if n <= 2 * leaf_size or depth > 6:
        out.append(rows)
        return
    c = int(min(max(2, round(n / leaf_size)), 512))
    # the whole input needs no copy (1.5 GB at 1M x 384)
    xr = x if depth == 0 and n == x.shape[0] else _take(x, rows)
    _, lab = _spherical_kmeans(xr, c, gen, iters, init="kmeans++")
    del xr
    lab = _to_np(lab)
    order = np.argsort(lab, kind="stable")
    counts = np.bincount(lab, minlength=c)
    parts = np.split(rows[order], np.cumsum(counts)[:-1])
    parts = [p for p in parts if len(p)]
    if len(parts) == 1:  # could not split (identical rows): cut in even chunks
        out.extend(np.array_split(rows, -(-n // leaf_size)))
        return
    for p in parts:
        _partition(x, p, leaf_size, gen, iters, out, depth + 1)


def _allocate(n_leaf: np.ndarray, k: int) -> np.ndarray:
    """Split k centres over leaves ~ proportionally to their sizes, every
    non-empty leaf gets >= 1 (when k allows) and never more than its rows."""
    n_leaf = np.asarray(n_leaf, dtype=np.int64)
    L = len(n_leaf)
    if k < L:  # fewer centres than leaves: give them to the biggest leaves
        alloc = np.zeros(L, dtype=np.int64)
        alloc[np.argsort(-n_leaf, kind="stable")[:k]] = 1
        return alloc
    alloc = np.ones(L, dtype=np.int64)
    slack = n_leaf - 1
    r = k - L
    if r == 0 or slack.sum() == 0:
        return alloc
    quota = r * slack / slack.sum()
    base = np.floor(quota).astype(np.int64)
    rem = r - int(base.sum())
    frac = quota - base
    if rem > 0:
        base[np.argsort(-frac, kind="stable")[:rem]] += 1
    return alloc + np.minimum(base, slack)


# --------------------------------------------------------------------------- #
# Candidate lookup and capacity-constrained assignment
# --------------------------------------------------------------------------- #
def _group_by_leaf(probe: np.ndarray, n_leaves: int) -> list[np.ndarray]:
    """Slots (row position * P + probe position) of a (rows, P) probe table,
    grouped by the probed leaf (-1 = no probe)."""
    flat = probe.ravel()
    valid = flat >= 0
    order = np.argsort(np.where(valid, flat, n_leaves), kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(flat[valid], minlength=n_leaves))])
    return [order[bounds[li] : bounds[li + 1]] for li in range(n_leaves)]


def _probe_search(
    x: np.ndarray,
    rows: np.ndarray | None,
    seg_slot: list[np.ndarray],
    P: int,
    by_leaf: list[np.ndarray],
    centres: np.ndarray,
    m: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(len(rows), m) best centres (-1 = none) and similarities, by decreasing
    similarity, among the centres ``by_leaf`` of each row's P probed leaves
    (``seg_slot``: ``_group_by_leaf`` of the probe table; rows None = all of x).
    One matmul + top-m per leaf, merged into each row's running top-m (no
    rows x P x m buffer: 0.5 GB at 1M rows)."""
    n = x.shape[0] if rows is None else len(rows)
    out_i = np.full((n, m), -1, dtype=np.int64)
    out_s = np.full((n, m), -np.inf, dtype=np.float32)
    for cidx, slot in zip(by_leaf, seg_slot):
        if len(cidx) == 0 or len(slot) == 0:
            continue
        pos = slot // P  # a row probes a leaf at most once
        i, v = _top_m(_mm(_take(x, pos if rows is None else rows[pos]), _take(centres, cidx)), m)
        sel, out_s[pos] = _top_m(np.concatenate([out_s[pos], v], axis=1), m)
        out_i[pos] = np.take_along_axis(np.concatenate([out_i[pos], cidx[i]], axis=1), sel, 1)
    return out_i, out_s


class _Probes:
    """Per-row probe lists: each row looks at the centres attached to its
    ``n_probe`` nearest leaves (by cosine to the leaf centroids).  The
    (row, probe position) pairs are grouped by leaf once, so a candidate
    lookup is one matmul + topk per leaf."""

    def __init__(
        self,
        x: np.ndarray,
        leaves: list[np.ndarray],
        n_probe: int,
        probe: np.ndarray | None = None,
        chunk: int = 16384,
        cells: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        n = x.shape[0]
        self.n = n
        self.L = len(leaves)
        self.leaf_cent = _unit_rows(_segment_sums(x, self._own(leaves, n), len(leaves)))
        self.own = self._own(leaves, n)
        self.P = P = min(n_probe, self.L)
        if probe is not None and probe.shape[1] >= P:
            probe = probe[:, :P]  # given (the coarse split's last pass): own leaf first
        elif cells is not None:
            probe = self.leaves_in_cells(x, P, *cells)
        else:
            # every leaf is scored (N x L once): probes restricted to the leaves
            # whose centroids are near the row's own missed the leaves that share
            # its topic (intra-cluster cosine -0.01 at 100k)
            probe = self.nearest_leaves(x, P, chunk)
        self.seg_slot = _group_by_leaf(probe, self.L)
        self.by_leaf: list[np.ndarray] = []
        self._nb: np.ndarray | None = None

    @staticmethod
    def _own(leaves: list[np.ndarray], n: int) -> np.ndarray:
        own = np.empty(n, dtype=np.int64)
        for li, rows in enumerate(leaves):
            own[rows] = li
        return own

    def nearest_leaves(self, x: np.ndarray, P: int, chunk: int = 16384) -> np.ndarray:
        """(N, P) nearest leaves of each row, its own first."""
        probe = np.empty((self.n, P), dtype=np.int64)
        for a in range(0, self.n, chunk):
            s = _mm(x[a : a + chunk], self.leaf_cent)
            s[np.arange(s.shape[0]), self.own[a : a + chunk]] = np.inf
            probe[a : a + chunk] = _top_m(s, P)[0]
        return probe

    def leaves_in_cells(self, x: np.ndarray, P: int, cell_of_leaf: np.ndarray, cell_probe: np.ndarray) -> np.ndarray:
        """(N, P) nearest leaves of each row, its own first (-1 = none), among
        the leaves of its probed coarse cells (``cell_probe``, the coarse
        split's table): N x (leaves per cell x probes) instead of N x L."""
        n_cells = int(cell_probe.max()) + 1
        by_cell = _by_label(np.asarray(cell_of_leaf), n_cells)
        near, _ = _probe_search(
            x, None, _group_by_leaf(cell_probe, n_cells), cell_probe.shape[1], by_cell, self.leaf_cent, P
        )
        own = self.own[:, None]
        cand = np.concatenate([own, near], axis=1)
        drop = (near == own) | (near < 0)
        key = np.concatenate([np.full_like(own, -1), np.where(drop, P + 1, np.arange(P)[None, :])], axis=1)
        order = np.argsort(key, axis=1, kind="stable")[:, :P]
        out = np.take_along_axis(cand, order, 1)
        out[np.take_along_axis(key, order, 1) > P] = -1
        return out

    def attach(self, centres: np.ndarray, chunk: int = 65536) -> list[np.ndarray]:
        """Centres of each leaf: a centre belongs to the leaf whose centroid it
        is most similar to."""
        cl = _nearest(centres, self.leaf_cent, chunk)
        order = np.argsort(cl, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(cl, minlength=self.L))])
        return [order[bounds[li] : bounds[li + 1]] for li in range(self.L)]

    def topm(self, x: np.ndarray, centres: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, m) candidate centres (-1 = none) and similarities, by decreasing
        similarity, among the centres of each row's probed leaves."""
        m = max(1, min(m, centres.shape[0]))
        self.by_leaf = self.attach(centres)
        return _probe_search(x, None, self.seg_slot, self.P, self.by_leaf, centres, m)

    def open_candidates(
        self, x: np.ndarray, centres: np.ndarray, room: np.ndarray, rows: np.ndarray, n_leaves: int, m: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(len(rows), m) candidates (-1 = none) among the centres that still
        have room: the rows of each leaf search the open centres of the
        ``n_leaves`` leaves whose centroids are nearest to their leaf's (its
        own first; centres as attached by the last topm).  One matmul per
        leaf, no rows x probes buffer (leftover rows are ~5% of N)."""
        m = max(1, m)
        nb = self._leaf_neighbours(n_leaves)
        out_i = np.full((len(rows), m), -1, dtype=np.int64)
        out_s = np.full((len(rows), m), -np.inf, dtype=np.float32)
        open_by_leaf = [c[room[c] > 0] for c in self.by_leaf]
        for li, pos in enumerate(_by_label(self.own[rows], self.L)):
            if len(pos) == 0:
                continue
            cidx = np.concatenate([open_by_leaf[j] for j in nb[li]])
            if len(cidx) == 0:
                continue
            i, v = _top_m(_mm(_take(x, rows[pos]), _take(centres, cidx)), m)
            out_i[pos, : i.shape[1]] = cidx[i]
            out_s[pos, : i.shape[1]] = v
        return out_i, out_s

    def _leaf_neighbours(self, t: int, chunk: int = 4096) -> np.ndarray:
        """(L, t) leaves with the most similar centroids, each leaf itself first."""
        t = min(t, self.L)
        if self._nb is None or self._nb.shape[1] != t:
            self._nb = np.empty((self.L, t), dtype=np.int64)
            for a in range(0, self.L, chunk):
                s = _mm(self.leaf_cent[a : a + chunk], self.leaf_cent)
                s[np.arange(s.shape[0]), np.arange(a, a + s.shape[0])] = np.inf
                self._nb[a : a + chunk] = _top_m(s, t)[0]
        return self._nb


def _assign_rounds(
    rows: np.ndarray,
    cand: np.ndarray,
    cand_sim: np.ndarray,
    room: np.ndarray,
    labels: np.ndarray,
) -> None:
    """Vectorised greedy assignment, in place on ``labels`` (-1 = unassigned)
    and ``room``.  ``cand``/``cand_sim`` (len(rows) x m) list each row's
    candidate centres by decreasing similarity (-1 = none).  In each round
    every open row claims its best candidate that still has room; each centre
    accepts its most similar claimants up to its room; the others advance."""
    m = cand.shape[1]
    if len(rows) == 0 or m == 0:
        return
    ptr = np.zeros(len(rows), dtype=np.int64)
    active = np.arange(len(rows))
    while len(active):
        # skip candidates that are missing or already full
        while len(active):
            c = cand[active, ptr[active]]
            blocked = (c < 0) | (room[np.maximum(c, 0)] <= 0)
            if not blocked.any():
                break
            ptr[active[blocked]] += 1
            active = active[ptr[active] < m]
        if not len(active):
            break
        c = cand[active, ptr[active]]
        s = cand_sim[active, ptr[active]]
        o = np.lexsort((active, -s, c))  # by centre, then similarity desc, then row
        c_o = c[o]
        pos = np.arange(len(o))
        first = np.ones(len(o), dtype=bool)
        first[1:] = c_o[1:] != c_o[:-1]
        rank = pos - np.maximum.accumulate(np.where(first, pos, 0))
        ok = rank < room[c_o]
        win = active[o[ok]]
        labels[rows[win]] = c_o[ok]
        room -= np.bincount(c_o[ok], minlength=len(room))
        lost = active[o[~ok]]
        ptr[lost] += 1
        active = np.sort(lost[ptr[lost] < m])


def _fill_leftovers(
    x: np.ndarray,
    centres: np.ndarray,
    room: np.ndarray,
    labels: np.ndarray,
    m: int,
    chunk: int = 4096,
    max_passes: int = 32,
    local=None,
    dense_pairs: int = 1 << 27,
) -> tuple[int, bool]:
    """Place rows left unassigned (their candidates all filled up) into the
    most similar centres that still have room, with the same rounds against
    the centres that are still open.  If that stalls (massive similarity
    ties, e.g. thousands of identical rows), the rest is matched to the free
    slots in one shot (rows sorted by their best open centre).  ``local``
    (rows, room) -> (candidates, similarities), if given, is tried first
    while rows x open centres exceeds ``dense_pairs``.
    Returns (global passes used, whether the one-shot slot fill was needed)."""
    passes = 0
    for _ in range(2 if local is not None else 0):
        # Both the leftover rows and the open centres grow with N, so the
        # search over every open centre is quadratic: at scale, the open
        # centres near each row first (cost ~ rows x probes x d); the exact
        # search below then only sees what these rounds could not place.
        left = np.flatnonzero(labels < 0)
        if len(left) == 0:
            return passes, False
        if len(left) * int((room > 0).sum()) <= dense_pairs:
            break
        cand, cand_sim = local(left, room)
        order = np.argsort(-cand_sim[:, 0], kind="stable")
        _assign_rounds(left[order], cand[order], cand_sim[order], room, labels)
    while True:
        left = np.flatnonzero(labels < 0)
        if len(left) == 0:
            return passes, False
        open_c = np.flatnonzero(room > 0)
        if len(open_c) == 0:
            raise RuntimeError("capacities exhausted with rows left")  # sum(caps) == N
        oc_t = _take(centres, open_c)
        passes += 1
        if passes > max_passes:
            _slot_fill(x, oc_t, open_c, room, labels, left, chunk)
            return passes, True
        # enough candidates to absorb everyone if the similarity order allowed it
        mm = int(min(len(open_c), 256, max(m, 4 * math.ceil(len(left) / len(open_c)) + m)))
        cand = np.empty((len(left), mm), dtype=np.int64)
        cand_sim = np.empty((len(left), mm), dtype=np.float32)
        for a in range(0, len(left), chunk):
            rs = left[a : a + chunk]
            ti, tv = _top_m(_mm(_take(x, rs), oc_t), mm)
            cand[a : a + len(rs)] = open_c[ti]
            cand_sim[a : a + len(rs)] = tv
        order = np.argsort(-cand_sim[:, 0], kind="stable")
        _assign_rounds(left[order], cand[order], cand_sim[order], room, labels)
        placed = len(left) - int((labels[left] < 0).sum())
        if passes >= 2 and placed < 0.25 * len(left):
            left = np.flatnonzero(labels < 0)
            if len(left):
                open_c = np.flatnonzero(room > 0)
                _slot_fill(x, _take(centres, open_c), open_c, room, labels, left, chunk)
                return passes, True


def _slot_fill(x, oc_t, open_c, room, labels, left, chunk) -> None:
    """One-shot fill: rows sorted by (best open centre, -similarity) take the
    free slots sorted by centre, so rows keep their best centre where it has
    room and spill to neighbouring slots otherwise."""
    best = np.empty(len(left), dtype=np.int64)
    bsim = np.empty(len(left), dtype=np.float32)
    for a in range(0, len(left), chunk):
        i, v = _top_m(_mm(_take(x, left[a : a + chunk]), oc_t), 1)
        best[a : a + len(v)] = i[:, 0]
        bsim[a : a + len(v)] = v[:, 0]
    o = np.lexsort((left, -bsim, best))
    slots = np.repeat(open_c, room[open_c])
    take = min(len(slots), len(left))
    labels[left[o[:take]]] = slots[:take]
    room -= np.bincount(slots[:take], minlength=len(room))


def _repair_small(
    x: np.ndarray,
    labels: np.ndarray,
    min_size: int,
    max_size: int,
    notes: list[str],
) -> np.ndarray:
    """Move the members of clusters smaller than min_size to the most similar
    other cluster with room (size < max_size); emptied clusters disappear and
    labels are made consecutive.  Loops only over the small clusters."""
    k = int(labels.max()) + 1 if len(labels) else 0
    sizes = np.bincount(labels, minlength=k)
    small = np.flatnonzero((sizes > 0) & (sizes < min_size))
    if len(small) and k > 1:
        sums = np.zeros((k, x.shape[1]), dtype=np.float64)
        np.add.at(sums, labels, x)
        moved = 0
        for j in small[np.argsort(sizes[small], kind="stable")]:
            if sizes[j] >= min_size or sizes[j] == 0:
                continue
            members = np.flatnonzero(labels == j)
            cent = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            ok_move = True
            for r in members:
                sim = cent @ x[r]
                sim[j] = -np.inf
                sim[(sizes >= max_size) | (sizes == 0)] = -np.inf
                t = int(np.argmax(sim))
                if not np.isfinite(sim[t]):
                    ok_move = False
                    break
                labels[r] = t
                sizes[t] += 1
                sizes[j] -= 1
                sums[t] += x[r]
                sums[j] -= x[r]
                moved += 1
            if not ok_move:
                notes.append(f"cluster below min_size {min_size} kept: no other cluster has room")
        if moved:
            notes.append(f"repair moved {moved} rows out of clusters smaller than min_size {min_size}")
    # consecutive labels
    used = np.flatnonzero(np.bincount(labels, minlength=k) > 0)
    remap = np.full(k, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return remap[labels]


def _finish(x: np.ndarray, labels: np.ndarray, notes: list[str], chunk: int = 65536) -> ClusterResult:
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1 if len(labels) else 0
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    centres = _segment_sums(x, labels, k)
    # normalised in float64, in place and in chunks: no k x d float64 copies
    # (1 GB each at 1M rows); per-row arithmetic, so the values are unchanged
    for a in range(0, k, chunk):
        s64 = centres[a : a + chunk].astype(np.float64)
        norms = np.linalg.norm(s64, axis=1, keepdims=True)
        centres[a : a + chunk] = s64 / np.maximum(norms, 1e-12)
    member_cos = np.empty(len(labels), dtype=np.float32)
    for a in range(0, len(labels), chunk):  # no N x d gather of the members' centres
        member_cos[a : a + chunk] = np.einsum("ij,ij->i", x[a : a + chunk], centres[labels[a : a + chunk]])
    return ClusterResult(labels=labels, sizes=sizes, centres=centres, member_cosine=member_cos, notes=notes)


def _prepare(embeddings, min_size, max_size, notes):
    x = np.asarray(embeddings)
    if x.ndim == 1:
        x = x.reshape(-1, 1)
        notes.append("1-D input treated as N rows of dimension 1")
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, d), got shape {x.shape}")
    if min_size < 1 or max_size < min_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    xn, n_zero = _normalise_rows(x)
    if n_zero:
        notes.append(f"{n_zero} zero/non-finite rows: kept as zero vectors (cosine 0 to every centre)")
    return xn


def _trivial(xn: np.ndarray, min_size: int, notes: list[str]) -> ClusterResult | None:
    n = xn.shape[0]
    if n == 0:
        notes.append("empty input: no clusters")
        return _finish(xn, np.zeros(0, dtype=np.int64), notes)
    if n < min_size:
        notes.append(f"{n} rows < min_size {min_size}: one cluster")
        return _finish(xn, np.zeros(n, dtype=np.int64), notes)
    return None


def _caps_notes(caps: np.ndarray, n: int, min_size: int, max_size: int, notes: list[str]) -> None:
    if len(caps) and (caps.min() < min_size or caps.max() > max_size):
        notes.append(
            f"no k satisfies k*{min_size} <= {n} <= k*{max_size}: capacities span {int(caps.min())}..{int(caps.max())}"
        )


# --------------------------------------------------------------------------- #
# Public: fast method
# --------------------------------------------------------------------------- #
def capacity_constrained_clusters(
    embeddings: np.ndarray,
    min_size: int = 2,
    max_size: int = 5,
    mean_cap: float = 3.0,
    std_cap: float = 1.0,
    seed: int = 42,
    *,
    leaf_size: int | None = None,
    leaf_iters: int = 10,
    global_iters: int = 0,
    n_probe: int = 3,
    n_candidates: int = 16,
    refine_iters: int | None = None,
    init: str = "kmeans++",
    partition: str = "flat",
    partition_sample: int | None = 131072,
    fill_probes: int = 4,
    fill_dense_pairs: int = 1 << 27,
    max_cells: int = 256,
) -> ClusterResult:
    """Capacity-constrained clustering (see module docstring).

    Deterministic for a fixed seed.  ``labels`` are 0..k-1 with every label
    used; sizes are the drawn capacities (all in [min_size, max_size] whenever
    N >= min_size and the bounds admit it); ``centres`` are the normalised
    member means; ``member_cosine`` is each row's cosine to its centre.

    Tuning knobs (keyword-only): ``leaf_size`` (rows per leaf of the
    partition; default: one leaf, i.e. exact flat search, up to N = 8192,
    else 512 (the "tree" path: max(1024, sqrt(3N))): constant, so the
    per-row work does not grow with N), ``max_cells`` (coarse cells of the
    flat split, split again into leaves when larger than 2 x leaf_size),
    ``leaf_iters`` (spherical k-means iterations per
    leaf and of the partition),
    ``global_iters`` (Lloyd iterations across leaves, via the probes),
    ``n_probe`` (leaves searched per row), ``n_candidates`` (candidate centres
    per row for the greedy rounds), ``refine_iters`` (re-estimate centres from
    members and re-assign; default 1 on the flat exact path, 2 with leaves,
    whose first assignment starts from per-leaf centres and leaves ~30% of
    the rows to the fallback), ``init`` ("kmeans++" or "random"),
    ``partition`` ("flat": one coarse k-means split into N/leaf_size leaves,
    see ``_coarse_partition``, oversized leaves split again; "tree": recursive
    k-means splits of at most 512 parts on all rows, probes against every
    leaf), ``partition_sample`` (rows the flat split's k-means is trained on,
    at least 64 per leaf; None = all rows), ``fill_probes`` (leaves searched
    for open centres by rows whose candidates all filled up, before the search
    over all open centres, used while rows x open centres >
    ``fill_dense_pairs``; 0 = that search only).  The path used before the flat split (~N^1.5 time; 1M
    rows did not finish in 9 min) is ``partition="tree", fill_probes=0,
    global_iters=3, refine_iters=1``; ``benchmarks/cluster_bench.py``
    compares the two.
    """
    notes: list[str] = []
    xn = _prepare(embeddings, min_size, max_size, notes)
    triv = _trivial(xn, min_size, notes)
    if triv is not None:
        return triv
    n, d = xn.shape
    caps = draw_capacities(n, min_size, max_size, mean_cap, std_cap, seed)
    _caps_notes(caps, n, min_size, max_size, notes)
    k = len(caps)
    gen = np.random.default_rng(seed)
    x = xn

    def member_means(labels: np.ndarray, old: np.ndarray) -> np.ndarray:
        return _unit_means(x, labels, k, old)

    # 1) partition the rows into leaves
    if partition not in ("flat", "tree"):
        raise ValueError(f"partition {partition!r}: choose 'flat' or 'tree'")
    if leaf_size is None:
        # flat (one leaf, exact search) while the Gram-based k-means++ fits
        grow = math.sqrt(3.0 * n) if partition == "tree" else math.sqrt(n)
        leaf_size = n if n <= 8192 else (int(max(1024, round(grow))) if partition == "tree" else 512)
    leaves: list[np.ndarray] = []
    probe = cells = None
    if partition == "tree" or n <= 2 * leaf_size:
        _partition(x, np.arange(n), leaf_size, gen, leaf_iters, leaves)
    else:
        # at most max_cells coarse cells (a flat pass scores N x cells), split again into leaves
        cell = max(leaf_size, -(-n // max_cells))
        coarse, probe = _coarse_partition(x, cell, gen, leaf_iters, partition_sample, n_probe)
        groups = _by_label(coarse, probe.max() + 1)
        if max(len(r) for r in groups) <= 2 * leaf_size:
            # leaves = the coarse cells; the probe table carries over (empty cells dropped)
            keep = np.array([len(r) > 0 for r in groups])
            remap = np.where(keep, np.cumsum(keep) - 1, -1)
            leaves = [r for r in groups if len(r)]
            probe = remap[probe]
        else:
            # cells above 2 x leaf_size are split again; each row's probes are then its
            # nearest leaves among those of its probed cells
            cell_of_leaf = []
            for ci, rows in enumerate(groups):
                if len(rows):
                    before = len(leaves)
                    _partition(x, rows, leaf_size, gen, leaf_iters, leaves, depth=1)
                    cell_of_leaf += [ci] * (len(leaves) - before)
            cells = (np.array(cell_of_leaf), probe)
            probe = None
        del coarse, groups
    assert all(len(r) for r in leaves)
    leaves = [np.sort(r) for r in leaves]
    alloc = _allocate(np.array([len(r) for r in leaves]), k)

    # 2) k centres: spherical k-means inside each leaf ...
    cent_list = []
    for rows, kl in zip(leaves, alloc):
        if kl:
            c, _ = _spherical_kmeans(_take(x, rows), int(kl), gen, leaf_iters, init=init)
            cent_list.append(c)
    centres = np.concatenate(cent_list)
    assert centres.shape[0] == k
    probes = _Probes(x, leaves, n_probe, probe, cells=cells) if len(leaves) > 1 else None
    del probe

    def candidates(m: int) -> tuple[np.ndarray, np.ndarray]:
        if probes is not None:
            return probes.topm(x, centres, m)
        cand = np.empty((n, min(m, k)), dtype=np.int64)
        sims = np.empty((n, min(m, k)), dtype=np.float32)
        for a0 in range(0, n, 8192):
            cand[a0 : a0 + 8192], sims[a0 : a0 + 8192] = _top_m(_mm(x[a0 : a0 + 8192], centres), min(m, k))
        return cand, sims

    # ... then a few Lloyd iterations across leaves (assignment via probes)
    if probes is not None:
        prev = None
        for _ in range(global_iters):
            lab = candidates(1)[0][:, 0]
            lab = np.where(lab < 0, 0, lab)
            if prev is not None and np.array_equal(lab, prev):
                break
            centres = member_means(lab, centres)
            prev = lab

    # 3) capacity-constrained greedy assignment (+ refinement)
    if refine_iters is None:
        refine_iters = 2 if probes is not None else 1
    labels = None
    n_left = 0
    for it in range(refine_iters + 1):
        cand, cand_sim = candidates(n_candidates)
        order = np.argsort(-cand_sim[:, 0], kind="stable")  # most confident first
        new = np.full(n, -1, dtype=np.int64)
        room = caps.copy()
        _assign_rounds(order, cand[order], cand_sim[order], room, new)
        del cand, cand_sim, order  # N x m arrays, rebuilt next iteration
        n_left = int((new < 0).sum())
        local = None
        if probes is not None and fill_probes > 0:

            def local(rows, room, c=centres):
                return probes.open_candidates(x, c, room, rows, fill_probes, 2 * n_candidates)

        _, slot_filled = _fill_leftovers(x, centres, room, new, n_candidates, local=local, dense_pairs=fill_dense_pairs)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        if it < refine_iters:
            centres = member_means(labels, centres)
    if n_left:
        notes.append(f"{n_left} rows placed by the fallback (all {min(n_candidates, k)} candidates full)")
    if slot_filled:
        notes.append("massive similarity ties (e.g. identical rows): the last rows filled free slots in one shot")

    labels = _repair_small(xn, labels, min_size, max_size, notes)
    return _finish(xn, labels, notes)


def mean_cosine_to_cluster_mean(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Quality figure: mean over rows of the cosine between the (normalised)
    row and the normalised mean of its cluster."""
    xn, _ = _normalise_rows(np.asarray(embeddings).reshape(len(labels), -1))
    return float(_finish(xn, np.asarray(labels), []).member_cosine.mean()) if len(labels) else float("nan")
