"""Spherical k-means and the numpy primitives the capacity-constrained clustering is built on (matmuls,
gathers, row-wise top-m, per-cluster sums): numpy's BLAS and gathers are faster on shared CPU cores than torch's
small ops."""

from __future__ import annotations

import numpy as np


# --------------------------------------------------------------------------- #
# Small numeric helpers
# --------------------------------------------------------------------------- #
def _normalise_rows(x: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, int]:
    # In row chunks, so the only N x d allocation is the result (a float64 or
    # non-finite input never gets a whole-array temporary); per-row norms, so
    # the values are those of the one-shot computation.
    x = np.asarray(x)
    if _already_unit(x, chunk):  # embedders' usual output: no copy (1.5 GB at 1M x 384)
        return x, 0
    out = np.empty(x.shape, dtype=np.float32)
    n_zero = 0
    for a in range(0, x.shape[0], chunk):
        xc = np.asarray(x[a : a + chunk], dtype=np.float32)
        if not np.all(np.isfinite(xc)):
            xc = np.nan_to_num(xc, nan=0.0, posinf=0.0, neginf=0.0)
        norms = np.linalg.norm(xc, axis=1, keepdims=True)
        zero = norms[:, 0] <= 1e-12
        norms[zero] = 1.0
        np.divide(xc, norms, out=out[a : a + chunk])
        n_zero += int(zero.sum())
    return out, n_zero


def _already_unit(x: np.ndarray, chunk: int, tol: float = 1e-5) -> bool:
    """float32, C-contiguous, finite rows of norm 1 (within ``tol``): used as given, read only."""
    if x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous or len(x) == 0:
        return False
    for a in range(0, x.shape[0], chunk):
        norms = np.linalg.norm(x[a : a + chunk], axis=1)  # NaN / inf fail the test
        if not np.all(np.abs(norms - 1.0) <= tol):
            return False
    return True


def _unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows divided by their norms, in place (zero rows stay zero)."""
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return a


def _kmeanspp_init(x: np.ndarray, k: int, gen: np.random.Generator, gram_max: int = 8192) -> np.ndarray:
    """k-means++ seeding with cosine distance (1 - cos) on normalised rows.
    Returns the indices of k distinct rows (when n >= k).  For small n the
    Gram matrix is computed once (one matmul), so each step is O(n)."""
    n = x.shape[0]
    k = min(k, n)
    gram = None
    if n <= gram_max:  # distances from the Gram matrix once, in place (a step is then one minimum)
        gram = _mm(x, x)
        np.maximum(np.subtract(1.0, gram, out=gram), 0.0, out=gram)
    xn = None if gram is not None else _to_np(x)

    def dist(j: int) -> np.ndarray:
        if gram is not None:
            return gram[j]
        return np.maximum(1.0 - (xn @ xn[j]).astype(np.float64), 0.0)

    idx = np.empty(k, dtype=np.int64)
    chosen = np.zeros(n, dtype=bool)
    j = int(gen.integers(n))
    idx[0] = j
    chosen[j] = True
    d2 = dist(j).copy()
    d2[j] = 0.0
    for t in range(1, k):
        cum = np.cumsum(d2, dtype=np.float64)
        total = cum[-1]
        if total <= 1e-12:  # every remaining row coincides with a chosen one
            rest = np.flatnonzero(~chosen)
            idx[t:] = gen.choice(rest, size=k - t, replace=False)
            break
        j = int(np.searchsorted(cum, gen.random() * total, side="right"))
        j = min(j, n - 1)
        while chosen[j]:  # zero-weight rows can only be hit by rounding
            j = (j + 1) % n
        idx[t] = j
        chosen[j] = True
        np.minimum(d2, dist(j), out=d2)
        d2[j] = 0.0
    return idx


def _spherical_kmeans(
    x: np.ndarray,
    k: int,
    gen: np.random.Generator,
    iters: int,
    init: str = "random",
    pp_sample: int = 20000,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's spherical k-means as matmuls.  Returns (centres (k,d) normalised,
    labels (n,)).  Empty clusters are re-seeded with the rows worst served by
    their current centre (deterministic)."""
    n, d = x.shape
    k = max(1, min(int(k), n))
    if k == 1:
        c = _unit_rows(x.sum(0, keepdims=True, dtype=np.float32))
        if float(np.linalg.norm(c)) < 1e-6:
            c = x[:1].copy()
        return c, np.zeros(n, dtype=np.int64)
    if init == "kmeans++":
        if n > pp_sample:
            sub = np.sort(gen.choice(n, size=pp_sample, replace=False))
            centres = _take(x, sub[_kmeanspp_init(_take(x, sub), k, gen)])
        else:
            centres = _take(x, _kmeanspp_init(x, k, gen))
    else:
        centres = _take(x, np.sort(gen.choice(n, size=k, replace=False)))
    labels = np.zeros(n, dtype=np.int64)
    for it in range(iters + 1):
        sims = _mm(x, centres)
        i, v = _top_m(sims, 1)
        best, labels_new = v[:, 0], i[:, 0]
        if it > 0 and np.array_equal(labels_new, labels):
            break
        labels = labels_new
        if it == iters:
            break
        counts = np.bincount(labels, minlength=k)
        # clusters whose members cancel out (or empty ones) keep their centre
        new_c = _unit_means(x, labels, k, centres)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            # worst-served rows become the new centres of empty clusters
            worst = np.argsort(best, kind="stable")[: len(empty)]
            new_c[empty] = x[worst]
        centres = new_c
    return centres, labels


def _to_np(t) -> np.ndarray:
    """A torch tensor (the reference baseline's) or an array as a numpy array."""
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


_np = _to_np


def _mm(a, b) -> np.ndarray:
    """``a @ b.T`` by numpy's BLAS: on these shapes (a few thousand rows times
    a few hundred centres) 2-3x faster on CPU than torch's, and far less hurt
    when other processes share the cores."""
    return _np(a) @ _np(b).T


def _take(t, idx) -> np.ndarray:
    """Rows ``idx`` of a tensor or array (numpy's gather: torch's multi-threaded
    one is 10-40x slower on CPU for these sizes once the cores are shared)."""
    return np.take(_np(t), idx, axis=0)


def _top_m(s, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise ``m`` largest of a 2-D array or tensor: (column indices, values),
    by decreasing value.  numpy's argmax / argpartition: on CPU several times
    cheaper than torch.max / torch.topk, which cost as much as the matmul."""
    s = _to_np(s)
    m = min(m, s.shape[1])
    if m <= 0:
        return np.zeros((len(s), 0), dtype=np.int64), np.zeros((len(s), 0), dtype=s.dtype)
    if m == 1:
        idx = s.argmax(axis=1)[:, None]
        return idx, np.take_along_axis(s, idx, 1)
    idx = (
        np.argpartition(s, s.shape[1] - m, axis=1)[:, -m:]
        if m < s.shape[1]
        else np.arange(m)[None, :].repeat(len(s), 0)
    )
    v = np.take_along_axis(s, idx, 1)
    o = np.argsort(-v, axis=1, kind="stable")
    return np.take_along_axis(idx, o, 1), np.take_along_axis(v, o, 1)


def _segment_sums(x: np.ndarray, labels, k: int) -> np.ndarray:
    """(k, d) per-label sums of the rows of x, as a sparse one-hot (k x n)
    times x product (much faster than index_add_ on CPU; deterministic)."""
    import scipy.sparse as sp

    lab = _to_np(labels)
    n = len(lab)
    onehot = sp.csr_matrix((np.ones(n, dtype=np.float32), (lab, np.arange(n))), shape=(k, n))
    return np.ascontiguousarray(onehot @ x, dtype=np.float32)


def _unit_means(x: np.ndarray, labels: np.ndarray, k: int, old: np.ndarray) -> np.ndarray:
    """Normalised per-label means; labels whose members cancel out (or that
    have none) keep their old centre.  In place on the k x d sums."""
    sums = _segment_sums(x, labels, k)
    nrm = np.linalg.norm(sums, axis=1, keepdims=True)
    keep = np.flatnonzero(nrm[:, 0] <= 1e-6)
    sums /= np.maximum(nrm, 1e-12)
    sums[keep] = old[keep]
    return sums
