"""Tests for lm_mixup_assets.lib.clustering (capacity-constrained clustering)."""

from __future__ import annotations

import numpy as np
import pytest

from lm_mixup_assets.lib.clustering import (
    ClusterResult,
    capacity_constrained_clusters,
    draw_capacities,
    mean_cosine_to_cluster_mean,
)
from lm_mixup_assets.lib.reference_clustering import (
    reference_clusters,
    sequential_capacity_assign,
)


def _topics(n: int, n_topics: int, d: int = 64, noise: float = 0.6, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((n_topics, d))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    topic = rng.integers(n_topics, size=n)
    x = t[topic] + noise * rng.standard_normal((n, d)) / np.sqrt(d)
    return x.astype(np.float32), topic


def _check_valid(res: ClusterResult, n: int, lo: int, hi: int) -> None:
    assert res.labels.shape == (n,)
    assert res.member_cosine.shape == (n,)
    k = len(res.sizes)
    assert res.centres.shape[0] == k
    if n == 0:
        assert k == 0
        return
    # labels 0..k-1, all used; sizes consistent; each row exactly once
    assert res.labels.min() == 0 and res.labels.max() == k - 1
    np.testing.assert_array_equal(np.bincount(res.labels, minlength=k), res.sizes)
    assert int(res.sizes.sum()) == n
    assert (res.sizes > 0).all()
    if n >= lo:
        assert res.sizes.min() >= lo, res.sizes
        assert res.sizes.max() <= hi, res.sizes
    norms = np.linalg.norm(res.centres, axis=1)
    np.testing.assert_allclose(norms[norms > 0], 1.0, atol=1e-4)
    assert np.all(res.member_cosine <= 1.0 + 1e-4)


# --------------------------------------------------------------------------- #
# capacities
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 6, 7, 11, 100, 1000, 12345])
def test_draw_capacities_sum_and_bounds(n):
    caps = draw_capacities(n)
    assert int(caps.sum()) == n
    if n == 0:
        assert len(caps) == 0
    elif n < 2:
        np.testing.assert_array_equal(caps, [n])
    else:
        assert caps.min() >= 2 and caps.max() <= 5


def test_draw_capacities_distribution_and_determinism():
    caps = draw_capacities(30000, seed=42)
    np.testing.assert_array_equal(caps, draw_capacities(30000, seed=42))
    assert abs(caps.mean() - 3.0) < 0.15  # clipped N(3, 1) has mean ~3
    assert set(np.unique(caps)) == {2, 3, 4, 5}
    assert not np.array_equal(caps[:200], draw_capacities(30000, seed=7)[:200])


@pytest.mark.parametrize("n,lo,hi", [(50, 2, 20), (7, 3, 4), (1000, 2, 20), (19, 4, 8)])
def test_draw_capacities_custom_bounds(n, lo, hi):
    caps = draw_capacities(n, min_size=lo, max_size=hi, mean_cap=(lo + hi) / 2, std_cap=2.0)
    assert int(caps.sum()) == n
    assert caps.min() >= lo and caps.max() <= hi


def test_draw_capacities_infeasible_bounds_still_sum():
    # no k with 4k <= 7 <= 5k: the sum is still exact
    caps = draw_capacities(7, min_size=4, max_size=5)
    assert int(caps.sum()) == 7


# --------------------------------------------------------------------------- #
# clustering: validity on many sizes
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 10, 31, 1000])
def test_sizes_and_coverage(n):
    x, _ = _topics(n, max(1, n // 4), d=32, seed=n)
    res = capacity_constrained_clusters(x)
    _check_valid(res, n, 2, 5)
    if n > 0:
        # the clusters are exactly the drawn capacities (as a multiset)
        np.testing.assert_array_equal(np.sort(res.sizes), np.sort(draw_capacities(n)))


def test_edge_case_notes():
    empty = capacity_constrained_clusters(np.zeros((0, 8), dtype=np.float32))
    assert empty.labels.shape == (0,) and empty.centres.shape == (0, 8)
    assert any("empty" in s for s in empty.notes)
    one = capacity_constrained_clusters(np.ones((1, 8)))
    np.testing.assert_array_equal(one.labels, [0])
    assert any("min_size" in s for s in one.notes)
    three = capacity_constrained_clusters(np.eye(3, 8), min_size=4, max_size=6)
    np.testing.assert_array_equal(three.labels, [0, 0, 0])
    assert any("3 rows < min_size 4" in s for s in three.notes)


def test_hierarchical_path_valid():
    # N > 8192 uses the leaf partition + probes; small leaf_size forces it cheaply
    x, topic = _topics(3000, 300, d=48, seed=3)
    res = capacity_constrained_clusters(x, leaf_size=256)
    _check_valid(res, 3000, 2, 5)
    flat = capacity_constrained_clusters(x)
    assert mean_cosine_to_cluster_mean(x, res.labels) > mean_cosine_to_cluster_mean(x, flat.labels) - 0.05


def test_flat_partition_quality_and_old_tree_path():
    # leaf_size=128 puts 3000 rows through the flat coarse split (the default above 8192 rows);
    # "tree" is the previous recursive partition: both valid, the flat one at least as good
    x, topic = _topics(3000, 250, d=32, seed=12)
    flat = capacity_constrained_clusters(x, leaf_size=128)
    tree = capacity_constrained_clusters(
        x, leaf_size=128, partition="tree", fill_probes=0, global_iters=3, refine_iters=1
    )
    _check_valid(flat, 3000, 2, 5)
    _check_valid(tree, 3000, 2, 5)
    assert mean_cosine_to_cluster_mean(x, flat.labels) >= mean_cosine_to_cluster_mean(x, tree.labels) - 0.002
    # a small training sample (64 rows per leaf at least) still gives valid clusters of similar quality
    sampled = capacity_constrained_clusters(x, leaf_size=128, partition_sample=1)
    _check_valid(sampled, 3000, 2, 5)
    assert mean_cosine_to_cluster_mean(x, sampled.labels) > mean_cosine_to_cluster_mean(x, flat.labels) - 0.01
    with pytest.raises(ValueError, match="partition"):
        capacity_constrained_clusters(x, leaf_size=128, partition="ivf")


def test_coarse_cells_split_into_leaves_at_20k_rows():
    # the default path above 8192 rows: leaves of 512; max_cells=8 makes the coarse cells
    # (2500 rows) larger than 2 x leaf_size, so they are split again and each row's probes are
    # its nearest leaves among those of its probed cells (what 300k+ rows do at the default 256)
    from lm_mixup_assets.lib.clustering import _Probes

    x, topic = _topics(20000, 1500, d=32, seed=21)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cells = capacity_constrained_clusters(x, max_cells=8, seed=7)
    again = capacity_constrained_clusters(x, max_cells=8, seed=7)
    flat = capacity_constrained_clusters(x, seed=7)  # 39 cells of <= 1024 rows: the cells are the leaves
    _check_valid(cells, 20000, 2, 5)
    _check_valid(flat, 20000, 2, 5)
    np.testing.assert_array_equal(cells.labels, again.labels)  # deterministic under the seed
    np.testing.assert_array_equal(cells.centres, again.centres)
    assert cells.sizes.min() >= 2 and cells.sizes.max() <= 5
    assert mean_cosine_to_cluster_mean(x, cells.labels) > mean_cosine_to_cluster_mean(x, flat.labels) - 0.02
    # probes from the cells: own leaf first, no leaf twice, the best leaf of the probed cells next
    leaves = np.array_split(np.arange(2000), 8)
    cell_of_leaf = np.repeat(np.arange(4), 2)
    cell_probe = np.stack([np.arange(2000) // 500, (np.arange(2000) // 500 + 1) % 4], axis=1)
    probes = _Probes(x[:2000], leaves, 3, cells=(cell_of_leaf, cell_probe))
    table = np.full((2000, 3), -1)
    for a in range(0, 2000, 500):  # dense reference: the row's probed cells' leaves, own leaf first
        cand = np.flatnonzero(np.isin(cell_of_leaf, cell_probe[a]))
        sims = x[a : a + 500] @ probes.leaf_cent[cand].T
        sims[np.arange(500), np.searchsorted(cand, probes.own[a : a + 500])] = np.inf
        table[a : a + 500] = cand[np.argsort(-sims, axis=1, kind="stable")[:, :3]]
    got = probes.leaves_in_cells(x[:2000], 3, cell_of_leaf, cell_probe)
    np.testing.assert_array_equal(got, table)


def test_unit_float32_input_is_used_without_a_copy():
    from lm_mixup_assets.lib.clustering import _normalise_rows

    x, _ = _topics(3000, 200, d=32, seed=5)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert _normalise_rows(x)[0] is x  # an embedder's output: no N x d copy
    assert _normalise_rows(x.astype(np.float64))[0] is not x
    scaled = _normalise_rows(3.0 * x)[0]
    np.testing.assert_allclose(scaled, x, atol=1e-6)
    a = capacity_constrained_clusters(x, leaf_size=128)
    b = capacity_constrained_clusters(3.0 * x, leaf_size=128)
    _check_valid(a, 3000, 2, 5)
    np.testing.assert_allclose(a.member_cosine.mean(), b.member_cosine.mean(), atol=2e-3)


def test_leftovers_through_nearby_leaves():
    # fill_dense_pairs=0: rows whose 16 candidates filled up always search the open centres of their
    # nearest leaves first (what happens at scale, where rows x open centres is too large to score)
    x, _ = _topics(2000, 150, d=32, seed=13)
    local = capacity_constrained_clusters(x, leaf_size=128, fill_dense_pairs=0, fill_probes=4)
    dense = capacity_constrained_clusters(x, leaf_size=128)
    _check_valid(local, 2000, 2, 5)
    assert any("placed by the fallback" in s for s in local.notes)
    assert mean_cosine_to_cluster_mean(x, local.labels) > mean_cosine_to_cluster_mean(x, dense.labels) - 0.01


def test_top_m_and_chunked_helpers_match_one_shot():
    from lm_mixup_assets.lib.clustering import _finish, _normalise_rows, _top_m

    rng = np.random.default_rng(3)
    s = rng.standard_normal((50, 30)).astype(np.float32)
    for m in (1, 5, 30, 40):
        idx, val = _top_m(s, m)
        want = np.argsort(-s, axis=1)[:, : min(m, 30)]
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_array_equal(val, np.take_along_axis(s, want, 1))
    assert _top_m(s, 0)[0].shape == (50, 0)
    # row chunks give the one-shot values exactly (float64 and non-finite input included)
    x = rng.standard_normal((1000, 16)) * 7.0
    x[3] = np.nan
    x[4] = 0.0
    xn, n_zero = _normalise_rows(x, chunk=64)
    one, _ = _normalise_rows(x, chunk=10**6)
    np.testing.assert_array_equal(xn, one)
    assert n_zero == 2 and xn.dtype == np.float32
    labels = rng.integers(0, 200, size=1000)
    a, b = _finish(xn, labels, [], chunk=7), _finish(xn, labels, [])
    np.testing.assert_array_equal(a.centres, b.centres)
    np.testing.assert_array_equal(a.member_cosine, b.member_cosine)


def test_determinism():
    x, _ = _topics(1500, 200, seed=1)
    a = capacity_constrained_clusters(x, seed=42)
    b = capacity_constrained_clusters(x, seed=42)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centres, b.centres)
    c = capacity_constrained_clusters(x, leaf_size=200, seed=42)
    d = capacity_constrained_clusters(x, leaf_size=200, seed=42)
    np.testing.assert_array_equal(c.labels, d.labels)


@pytest.mark.parametrize("n", [2, 9, 500])
def test_all_identical_rows(n):
    x = np.tile(np.array([[0.3, -1.2, 0.5, 2.0]], dtype=np.float32), (n, 1))
    res = capacity_constrained_clusters(x)
    _check_valid(res, n, 2, 5)
    np.testing.assert_allclose(res.member_cosine, 1.0, atol=1e-5)


def test_identical_rows_hierarchical_path():
    x = np.ones((2000, 16), dtype=np.float32)
    res = capacity_constrained_clusters(x, leaf_size=128)
    _check_valid(res, 2000, 2, 5)


def test_one_dimensional_and_unnormalised_and_zero_rows():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 1)) * 100.0
    res = capacity_constrained_clusters(x)
    _check_valid(res, 40, 2, 5)
    # with d=1 every row is +-1: clusters are sign-pure except where the
    # capacities force a mix (at most one mixed cluster per side remainder)
    sign = np.sign(x[:, 0])
    mixed = sum(len(np.unique(sign[res.labels == j])) > 1 for j in range(res.k))
    assert mixed <= 1

    y = rng.standard_normal((30, 8)) * 50.0
    y[:4] = 0.0
    y[5] = np.nan
    r2 = capacity_constrained_clusters(y)
    _check_valid(r2, 30, 2, 5)
    assert any("zero" in s for s in r2.notes)
    # scale does not matter: same labels as the normalised input
    z = rng.standard_normal((60, 8))
    np.testing.assert_array_equal(
        capacity_constrained_clusters(z * 1000.0).labels,
        capacity_constrained_clusters(z / np.linalg.norm(z, axis=1, keepdims=True)).labels,
    )


def test_topic_purity():
    x, topic = _topics(1200, 40, d=64, noise=0.6, seed=11)
    res = capacity_constrained_clusters(x)
    _check_valid(res, 1200, 2, 5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    # mean pairwise cosine within clusters vs random pairs
    intra = []
    for mem in res.members():
        s = xn[mem] @ xn[mem].T
        m = len(mem)
        intra.append((s.sum() - m) / (m * (m - 1)))
    rng = np.random.default_rng(0)
    i, j = rng.integers(1200, size=(2, 5000))
    rand = float(np.einsum("ij,ij->i", xn[i], xn[j]).mean())
    assert np.mean(intra) > rand + 0.4
    # most clusters are single-topic (a topic's ~30 rows rarely sum exactly
    # to whole capacities, so about one cluster per topic straddles two topics)
    pure = np.mean([len(np.unique(topic[mem])) == 1 for mem in res.members()])
    assert pure > 0.8
    # row level: the share of rows sharing their cluster's majority topic
    agree = sum(np.bincount(topic[mem]).max() for mem in res.members()) / len(topic)
    assert agree > 0.9
    np.testing.assert_allclose(res.member_cosine.mean(), mean_cosine_to_cluster_mean(x, res.labels), atol=1e-5)


@pytest.mark.parametrize("n", [1, 7, 100, 1000])
def test_custom_sizes(n):
    x, _ = _topics(n, max(1, n // 10), d=16, seed=2)
    res = capacity_constrained_clusters(x, min_size=2, max_size=20, mean_cap=10, std_cap=4)
    _check_valid(res, n, 2, 20)
    if n >= 100:
        assert 6 < res.sizes.mean() < 14


def test_repair_when_bounds_infeasible():
    # 7 rows with sizes 4..5 cannot be split validly: one cluster of 7, noted
    x, _ = _topics(7, 2, d=8, seed=4)
    res = capacity_constrained_clusters(x, min_size=4, max_size=5)
    assert int(res.sizes.sum()) == 7 and res.sizes.min() >= 4
    assert any("no k satisfies" in s for s in res.notes)


# --------------------------------------------------------------------------- #
# the method's own clustering (algorithm="reference", the paper profile)
# --------------------------------------------------------------------------- #
def test_reference_capacity_rule_by_hand():
    # default_rng(42).normal(3, 1): 3.305, 1.960, 3.750, 3.941, ... -> rounded 3, 2, 4, 4.
    # n=10: the sum reaches 13 at the 4th draw; the excess 3 comes off the end (last 4 -> 2, then 4 -> 3),
    # giving [3, 2, 3, 2]; the same generator then shuffles it to [3, 3, 2, 2].
    np.testing.assert_array_equal(draw_capacities(10, rule="reference"), [3, 3, 2, 2])
    # n=5: 3 + 2 is exactly 5, nothing to trim; the shuffle swaps them.
    np.testing.assert_array_equal(draw_capacities(5, rule="reference"), [2, 3])
    np.testing.assert_array_equal(draw_capacities(11, rule="reference"), [4, 3, 2, 2])
    with pytest.raises(ValueError, match="capacity rule"):
        draw_capacities(10, rule="closest")


@pytest.mark.parametrize("n", [2, 7, 100, 1000, 12345])
def test_reference_capacity_rule_sum_bounds_and_mean(n):
    caps = draw_capacities(n, rule="reference")
    assert int(caps.sum()) == n and caps.min() >= 2 and caps.max() <= 5
    big = draw_capacities(30000, 2, 25, 10, 3, rule="reference")
    assert int(big.sum()) == 30000 and big.min() >= 2 and big.max() <= 25 and abs(big.mean() - 10) < 0.2


def test_reference_capacity_rule_falls_back_where_the_method_never_ends():
    # seed 4 draws 2, 3 for n=3: trimming can only reach 2 + 2 = 4 (the method's code loops forever);
    # our rule takes over and gives one cluster of 3.
    np.testing.assert_array_equal(draw_capacities(3, seed=4, rule="reference"), [3])


def test_sequential_assign_by_hand():
    # Centres east, north, west (one seat each). Rows by best similarity: r0 (1.0, east), ra (0.9, east), rb (0.8,
    # north). ra finds east full and takes north (0.436 > -0.9) before rb is served; rb gets west.
    # (Resolving all first choices at once would instead give rb north and push ra west.)
    centres = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    rows = np.array([[1.0, 0.0], [0.9, np.sqrt(1 - 0.81)], [-0.6, 0.8]], dtype=np.float32)
    np.testing.assert_array_equal(sequential_capacity_assign(rows, centres, np.array([1, 1, 1])), [0, 1, 2])
    with pytest.raises(ValueError, match="capacities sum to 2 < 3"):
        sequential_capacity_assign(rows, centres, np.array([1, 1, 0]))


def _brute_force_sequential(x: np.ndarray, centres: np.ndarray, caps: np.ndarray) -> np.ndarray:
    sims = x @ centres.T
    room, labels = caps.copy(), np.full(len(x), -1)
    for i in np.argsort(-sims.max(axis=1), kind="stable"):
        for j in np.argsort(-sims[i], kind="stable"):
            if room[j] > 0:
                labels[i], room[j] = j, room[j] - 1
                break
    return labels


@pytest.mark.parametrize("n_candidates,block", [(32, 4096), (2, 7), (1, 1)])
def test_sequential_assign_equals_the_per_row_loop(n_candidates, block):
    # few candidates and small blocks force many restarts; the labels must not change
    x, _ = _topics(700, 60, d=16, seed=8)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    caps = draw_capacities(700, rule="reference")
    rng = np.random.default_rng(1)
    centres = x[rng.choice(700, len(caps), replace=False)]
    np.testing.assert_array_equal(
        sequential_capacity_assign(x, centres, caps, n_candidates=n_candidates, block=block),
        _brute_force_sequential(x, centres, caps),
    )


def test_reference_clusters_are_minibatch_kmeans_then_the_greedy():
    from sklearn.cluster import MiniBatchKMeans

    x, _ = _topics(400, 40, d=16, seed=9)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    res = reference_clusters(x, seed=42)
    caps = draw_capacities(400, rule="reference")
    _check_valid(res, 400, 2, 5)
    np.testing.assert_array_equal(res.sizes, caps)  # cluster j holds exactly capacity j
    km = MiniBatchKMeans(n_clusters=len(caps), random_state=42, batch_size=2048, max_iter=30, n_init=1).fit(x)
    c = (km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)).astype(np.float32)
    expected = _brute_force_sequential(x, c, caps)
    # With k ~ N/3 over 40 topics MiniBatchKMeans leaves some centres equal to the last bit; a row may then take
    # either twin. Same similarity for every row, same sizes:
    sims = x @ c.T
    rows = np.arange(len(x))
    np.testing.assert_allclose(sims[rows, res.labels], sims[rows, expected], atol=1e-6)
    assert (res.labels == expected).mean() > 0.9
    np.testing.assert_array_equal(reference_clusters(x, seed=42).labels, res.labels)
    # un-normalised input is normalised first; tiny inputs take the trivial path
    assert reference_clusters(x * 3.0).k == len(caps)
    np.testing.assert_array_equal(reference_clusters(np.ones((1, 4))).labels, [0])


def test_profiles_pick_the_clustering_algorithm():
    from lm_mixup_assets.config import resolved_settings
    from lm_mixup_assets.lib.settings.clusters import ClusteringSettings

    assert resolved_settings(ClusteringSettings, "paper")[0].algorithm == "reference"
    assert resolved_settings(ClusteringSettings, "demo")[0].algorithm == "fast"
