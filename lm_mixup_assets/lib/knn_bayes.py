"""kNN-Bayes quality rater (docs/method.md, "Rewards"): the quality half of the GRPO reward.

Pure numpy / torch; no Dagster.

A *library* holds rated samples of one task type: L2-normalised embeddings and
their compressed score class (0-5, so C = 6).  From it we estimate

* ``T`` (C×C), a class *transition* matrix: for every library sample, the classes
  of its ``k_t`` nearest other samples are counted in the row of its own class;
  ``smoothing`` is added to every cell and rows are normalised.  ``T[i, j]`` is the
  chance that a neighbour of a class-``i`` sample has class ``j``.
* ``prior`` p, the class frequencies.

A new text (its embedding) is rated by the histogram ``h`` of the classes of its
``k`` nearest library samples:

    log posterior_i = log p_i + sum_j h_j log T_ij  (+ const),  softmax over i,

i.e. the neighbours' classes are treated as independent draws from row ``i`` of
``T``.  The expected class ``E = sum_i i * posterior_i`` feeds ``quality_reward``.

Classes absent from the library
-------------------------------
C is fixed at 6, but a library need not hold every class (e.g. no class-0 text).
As in the reference code (``knn/build.py``), which indexes only the classes that
occur, an absent class takes no part at all: its prior is 0 (probability exactly
0), and ``T`` is estimated and normalised over the present classes only, so the
posterior of the present classes is the reference's to float precision.  (An
absent class left in with a smoothed row would "explain" any neighbourhood at
(1/C)^k and win every mixed one.)  ``prior`` is the plain class frequency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "N_CLASSES",
    "KnnBayesLibrary",
    "build_library",
    "knn_indices",
    "quality_reward",
    "QUALITY_BANDS",
]

N_CLASSES = 6  # compressed scores 0..5


def _as_unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, d), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # normalise defensively: callers pass normalised vectors, but cosine ranking must not
    # depend on it; all-zero rows stay zero (similarity 0 to everything)
    return np.ascontiguousarray(x / np.where(norms > 1e-12, norms, 1.0), dtype=np.float32)


def knn_indices(
    queries: np.ndarray,
    library: np.ndarray,
    k: int,
    exclude_self: bool = False,
    chunk: int = 4096,
) -> np.ndarray:
    """(M, k) indices of each query's ``k`` most cosine-similar library rows, best first.

    Rows are unit vectors, so cosine = dot product: one matmul and one ``topk`` per
    chunk of ``chunk`` queries (memory ~ chunk × N floats).  ``exclude_self`` (queries
    *are* the library) masks the diagonal so a sample is not its own neighbour.
    The same inputs give the same neighbours (CPU ``topk`` is deterministic).
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    lib = torch.from_numpy(np.ascontiguousarray(library, dtype=np.float32))
    n = lib.shape[0]
    k = int(min(k, n - 1 if exclude_self else n))
    out = np.empty((q.shape[0], max(k, 0)), dtype=np.int64)
    if k <= 0 or q.shape[0] == 0:
        return out
    for start in range(0, q.shape[0], chunk):
        sims = q[start : start + chunk] @ lib.T
        if exclude_self:
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = -torch.inf
        vals, idx = torch.topk(sims, k, dim=1)
        # best first; equal similarities in a stable order (topk itself does not promise one)
        order = torch.argsort(-vals, dim=1, stable=True)
        idx = torch.gather(idx, 1, order)
        out[start : start + idx.shape[0]] = idx.numpy()
    return out


def _class_histograms(neighbour_classes: np.ndarray, n_classes: int) -> np.ndarray:
    """(M, k) class ids -> (M, C) counts (one bincount over offset ids)."""
    m = neighbour_classes.shape[0]
    flat = (np.arange(m)[:, None] * n_classes + neighbour_classes).ravel()
    return np.bincount(flat, minlength=m * n_classes).reshape(m, n_classes).astype(np.float64)


@dataclass
class KnnBayesLibrary:
    embeddings: np.ndarray  # (N, d) float32, unit rows
    classes: np.ndarray  # (N,) int64 in [0, n_classes)
    T: np.ndarray  # (C, C) float64, rows sum to 1
    prior: np.ndarray  # (C,) float64, sums to 1
    k_t: int = 3
    smoothing: float = 1e-2
    n_classes: int = N_CLASSES
    name: str = ""

    @property
    def class_values(self) -> np.ndarray:
        return np.arange(self.n_classes, dtype=np.float64)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def neighbour_histograms(self, query_embeddings: np.ndarray, k: int = 16, chunk: int = 4096) -> np.ndarray:
        """(M, C) histogram of the classes of each query's ``k`` nearest library samples."""
        q = _as_unit_rows(query_embeddings)
        if q.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"query dimension {q.shape[1]} != library dimension {self.embeddings.shape[1]}")
        idx = knn_indices(q, self.embeddings, k, chunk=chunk)
        return _class_histograms(self.classes[idx], self.n_classes)

    @property
    def present(self) -> np.ndarray:
        """(C,) bool: classes that occur in the library."""
        return self.prior > 0

    def log_posterior_from_histograms(self, hist: np.ndarray) -> np.ndarray:
        """(M, C) normalised log posterior: log p_i + sum_j h_j log T_ij, log-softmaxed over
        the present classes; absent classes get -inf (probability 0)."""
        present = self.present
        logits = np.full((np.shape(hist)[0], self.n_classes), -np.inf)
        h = np.asarray(hist, dtype=np.float64)[:, present]  # neighbours are library samples: absent columns are 0
        logits[:, present] = np.log(self.prior[present])[None, :] + h @ np.log(self.T[np.ix_(present, present)]).T
        return logits - _logsumexp(logits[:, present])

    def posterior(self, query_embeddings: np.ndarray, k: int = 16, chunk: int = 4096) -> np.ndarray:
        """(M, C) posterior over classes for each query embedding."""
        hist = self.neighbour_histograms(query_embeddings, k=k, chunk=chunk)
        return np.exp(self.log_posterior_from_histograms(hist))

    def expected_class(self, query_embeddings: np.ndarray, k: int = 16, chunk: int = 4096) -> np.ndarray:
        """(M,) expected class value E = posterior · (0, 1, ..., C-1)."""
        return self.posterior(query_embeddings, k=k, chunk=chunk) @ self.class_values

    def save(self, path: str | Path) -> Path:
        """Write the library as one ``.npz`` (no pickles)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            embeddings=self.embeddings,
            classes=self.classes,
            T=self.T,
            prior=self.prior,
            k_t=np.int64(self.k_t),
            smoothing=np.float64(self.smoothing),
            n_classes=np.int64(self.n_classes),
            name=np.array(self.name),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> KnnBayesLibrary:
        with np.load(Path(path), allow_pickle=False) as z:
            return cls(
                embeddings=z["embeddings"].astype(np.float32),
                classes=z["classes"].astype(np.int64),
                T=z["T"].astype(np.float64),
                prior=z["prior"].astype(np.float64),
                k_t=int(z["k_t"]),
                smoothing=float(z["smoothing"]),
                n_classes=int(z["n_classes"]),
                name=str(z["name"]),
            )


def _logsumexp(x: np.ndarray) -> np.ndarray:  # row-wise, finite inputs
    m = x.max(axis=1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def build_library(
    embeddings: np.ndarray,
    classes: np.ndarray,
    k_t: int = 3,
    smoothing: float = 1e-2,
    n_classes: int = N_CLASSES,
    name: str = "",
    chunk: int = 4096,
) -> KnnBayesLibrary:
    """Estimate ``T`` and the prior from rated samples (embeddings N×d, classes 0..C-1).

    Each sample's ``k_t`` nearest *other* samples (cosine) vote in the row of its own
    class; with fewer than ``k_t + 1`` samples every other sample is a neighbour, and a
    one-sample library has a uniform ``T``.
    """
    emb = _as_unit_rows(embeddings)
    cls_ = np.asarray(classes).astype(np.int64).ravel()
    if cls_.shape[0] != emb.shape[0]:
        raise ValueError(f"{emb.shape[0]} embeddings but {cls_.shape[0]} classes")
    if emb.shape[0] == 0:
        raise ValueError("empty library")
    if cls_.min() < 0 or cls_.max() >= n_classes:
        raise ValueError(f"classes must lie in [0, {n_classes - 1}], got {cls_.min()}..{cls_.max()}")
    if smoothing <= 0:
        raise ValueError("smoothing must be > 0 (it keeps log T finite)")
    present = np.bincount(cls_, minlength=n_classes) > 0
    # Smoothing only among the classes that occur (the reference's C x C over present classes);
    # an absent class's row stays uniform and is never used.
    counts = np.where(np.outer(present, present), float(smoothing), 0.0)
    counts[~present] = 1.0
    idx = knn_indices(emb, emb, k_t, exclude_self=True, chunk=chunk)
    if idx.size:
        np.add.at(counts, (np.repeat(cls_, idx.shape[1]), cls_[idx].ravel()), 1.0)
    T = counts / counts.sum(axis=1, keepdims=True)
    freq = np.bincount(cls_, minlength=n_classes).astype(np.float64)
    prior = freq / freq.sum()  # 0 for absent classes: they are left out of the posterior
    return KnnBayesLibrary(
        embeddings=emb,
        classes=cls_,
        T=T,
        prior=prior,
        k_t=int(k_t),
        smoothing=float(smoothing),
        n_classes=int(n_classes),
        name=name,
    )


QUALITY_BANDS = ("reference", "interval")


def quality_reward(
    expected, high: float = 4.0, mid: float = 3.0, mid_reward: float = 0.3, band: str = "reference", tol: float = 1e-6
):
    """Map the expected class E to the quality reward (scalar in, float out; array in, array out).

    ``band="reference"`` (the method's code, ``llm_mixup_bayes.py``): 1.0 if E >= 4,
    ``mid_reward`` only if E == 3.0 exactly, i.e. when the posterior sits on class 3 to
    float precision (a neighbourhood of class-3 samples); a mixed posterior with
    3 < E < 4 earns 0.0.
    ``band="interval"``: 1.0 if E >= 4, ``mid_reward`` if 3 <= E < 4, else 0.0, with
    ``tol`` absorbing float noise (E = 4 - 1e-12 counts as 4).  Not the method; an
    option for users who want the partial credit the paper's prose suggests.
    """
    if band not in QUALITY_BANDS:
        raise ValueError(f"quality band {band!r} is unknown; choose one of {QUALITY_BANDS}")
    e = np.asarray(expected, dtype=np.float64)
    if band == "reference":
        r = np.where(e >= high, 1.0, np.where(e == mid, mid_reward, 0.0))
    else:
        r = np.where(e >= high - tol, 1.0, np.where(e >= mid - tol, mid_reward, 0.0))
    return float(r) if r.ndim == 0 else r
