"""lib/pairing.py: MIXTURE's cross-article partners through a kNN index, against the dense N x N code it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from lm_mixup_assets.lib.pairing import cross_group_neighbours


def _dense_partners(vectors: np.ndarray, titles: np.ndarray, k: int) -> list[list[int]]:
    """What mixture_variants did before: full similarity and same-article matrices, then argsort per row."""
    sims = vectors @ vectors.T if len(titles) else np.zeros((0, 0))
    same_article = (titles[:, None] == titles[None, :]) if len(titles) else sims
    sims = np.where(same_article, -np.inf, sims)
    out = []
    for i in range(len(titles)):
        nearest = np.argsort(-sims[i])[:k] if len(titles) > 1 else []
        out.append([int(j) for j in nearest if np.isfinite(sims[i, j])])
    return out


def _targets(n: int, n_titles: int, d: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    titles = np.array([f"article {int(i)}" for i in rng.integers(n_titles, size=n)], dtype=object)
    return v, titles


@pytest.mark.parametrize(
    "n,n_titles,k,first_extra",
    [
        (300, 40, 3, 64),  # the asset's default k, many articles
        (400, 4, 3, 2),  # few big articles: most nearest rows are same-article, so rows search deeper
        (250, 2, 12, 1),  # two articles, deeper k than the first search
        (200, 1, 3, 64),  # one article: nobody has a partner
        (150, 150, 3, 64),  # every target its own article
        (120, 3, 200, 8),  # k beyond the other-article rows: fewer partners, as the dense code gave
    ],
)
def test_same_partners_as_the_dense_code(n, n_titles, k, first_extra):
    v, titles = _targets(n, n_titles, seed=n + k)
    got = cross_group_neighbours(v, titles, k, first_extra=first_extra, max_entries=4096)
    assert got.shape == (n, k) and got.dtype == np.int64
    assert [list(row[row >= 0]) for row in got] == _dense_partners(v, titles, k)
    # padding only at the end of a row
    assert all((row[: (row >= 0).sum()] >= 0).all() for row in got)


def test_small_inputs_and_labels():
    v, _ = _targets(5, 1)
    assert cross_group_neighbours(v[:0], [], 3).shape == (0, 3)
    np.testing.assert_array_equal(cross_group_neighbours(v[:1], ["a"], 3), [[-1, -1, -1]])
    assert cross_group_neighbours(v, list("aabbc"), 0).shape == (5, 0)
    # missing titles are groups of one: never paired with themselves, paired with everyone else
    got = cross_group_neighbours(v, ["a", None, None, "a", float("nan")], 4)
    assert 1 not in got[1] and 2 in got[1] and 4 in got[1]
    assert set(got[0][got[0] >= 0]) == {1, 2, 4}
    with pytest.raises(ValueError, match="group labels"):
        cross_group_neighbours(v, ["a", "b"], 2)


def test_ties_by_lower_index_and_deterministic():
    # duplicated vectors in another article: equal similarities come lower index first
    base = np.eye(4, 8, dtype=np.float32)
    v = np.concatenate([base[:1], np.repeat(base[1:2], 5, axis=0), base[2:]])
    titles = ["q"] + ["dup"] * 5 + ["x", "y"]
    got = cross_group_neighbours(v + np.float32(0.5) * base[1], titles, 3)
    assert list(got[0]) == [1, 2, 3]
    np.testing.assert_array_equal(got, cross_group_neighbours(v + np.float32(0.5) * base[1], titles, 3))
