"""kNN-Bayes quality rater (METHOD.md §4)."""

import numpy as np
import pytest

from lm_mixup_assets.lib.knn_bayes import KnnBayesLibrary, build_library, knn_indices, quality_reward


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(n_per=20, classes=(1, 3, 5), d=8, spread=0.05, seed=0):
    """One tight blob per class around orthogonal directions."""
    rng = np.random.default_rng(seed)
    emb, cls = [], []
    for i, c in enumerate(classes):
        centre = np.eye(d)[i]
        emb.append(centre + spread * rng.standard_normal((n_per, d)))
        cls += [c] * n_per
    return _unit(np.vstack(emb)), np.array(cls)


def test_hand_made_transition_matrix():
    # Two classes on two axes; each point's 2 nearest others are its own class.
    emb = _unit([[1, 0.0], [1, 0.1], [1, -0.1], [0.0, 1], [0.1, 1], [-0.1, 1]])
    cls = np.array([0, 0, 0, 4, 4, 4])
    lib = build_library(emb, cls, k_t=2, smoothing=1e-2)
    assert lib.T.shape == (6, 6)
    np.testing.assert_allclose(lib.T.sum(axis=1), 1.0)
    # row 0: 6 votes for class 0 (3 samples x 2 neighbours) + smoothing everywhere
    expected_row0 = np.full(6, 0.01)
    expected_row0[0] += 6
    np.testing.assert_allclose(lib.T[0], expected_row0 / expected_row0.sum())
    assert lib.T[4, 4] > 0.9 and lib.T[0, 4] < 0.01
    # absent classes: uniform rows (smoothing only), prior 0
    np.testing.assert_allclose(lib.T[2], np.full(6, 1 / 6))
    np.testing.assert_allclose(lib.prior, [0.5, 0, 0, 0, 0.5, 0])
    assert lib.present.tolist() == [True, False, False, False, True, False]


def test_self_is_not_a_neighbour():
    emb = _unit([[1, 0.0], [0.0, 1]])
    lib = build_library(emb, np.array([5, 0]), k_t=3)
    # each sample's only other sample has the other class
    assert lib.T[5, 0] > 0.9 and lib.T[0, 5] > 0.9


def test_posterior_favours_neighbours_class():
    emb, cls = _clustered()
    lib = build_library(emb, cls, k_t=3)
    queries = _unit(np.eye(8)[:3] + 0.01)
    post = lib.posterior(queries, k=16)
    assert post.shape == (3, 6)
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    assert post.argmax(axis=1).tolist() == [1, 3, 5]
    assert np.all(post.max(axis=1) > 0.99)
    # absent classes (0, 2, 4) have probability 0; present ones keep finite logs
    assert np.all(post[:, [0, 2, 4]] == 0)
    assert np.all(np.isfinite(np.log(post[:, [1, 3, 5]])))
    e = lib.expected_class(queries, k=16)
    np.testing.assert_allclose(e, [1, 3, 5], atol=0.05)
    np.testing.assert_allclose(quality_reward(e), [0.0, 0.3, 1.0])


def test_posterior_matches_formula():
    emb, cls = _clustered(n_per=10, classes=(0, 2, 4, 5), spread=0.4, seed=1)
    lib = build_library(emb, cls, k_t=3)
    q = _unit(np.random.default_rng(2).standard_normal((7, 8)))
    k = 16
    sims = q @ lib.embeddings.T
    idx = np.argsort(-sims, axis=1)[:, :k]
    hist = np.stack([np.bincount(lib.classes[row], minlength=6) for row in idx])
    with np.errstate(divide="ignore"):
        logits = np.log(lib.prior) + hist @ np.log(lib.T).T  # class 1 and 3 absent: -inf
    ref = np.exp(logits - logits.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(lib.posterior(q, k=k), ref, rtol=1e-6, atol=1e-9)
    # chunking does not change the result
    np.testing.assert_allclose(lib.posterior(q, k=k, chunk=2), ref, rtol=1e-6, atol=1e-9)


def test_mixed_neighbourhood_stays_among_present_classes():
    # Half the neighbours class 3, half class 5: the uniform rows of the absent classes
    # would explain this best, so absent classes must be out of the posterior.
    emb, cls = _clustered(n_per=20, classes=(3, 5), spread=0.05)
    lib = build_library(emb, cls, k_t=3)
    between = _unit([[1, 1, 0, 0, 0, 0, 0, 0]])
    post = lib.posterior(between, k=16)[0]
    assert post[[0, 1, 2, 4]].sum() == 0
    assert 3 <= post @ np.arange(6) <= 5


def test_quality_reward_thresholds():
    assert quality_reward(4.0) == 1.0 and quality_reward(4.7) == 1.0
    assert quality_reward(3.0) == 0.3 and quality_reward(3.99) == 0.3
    assert quality_reward(2.99) == 0.0 and quality_reward(0.0) == 0.0
    assert quality_reward(3 - 1e-12) == 0.3 and quality_reward(4 - 1e-12) == 1.0  # float noise
    assert quality_reward(2.6, mid=2.5) == 0.3
    np.testing.assert_allclose(quality_reward(np.array([5, 3.5, 2.5])), [1.0, 0.3, 0.0])


def test_save_load_round_trip(tmp_path):
    emb, cls = _clustered()
    lib = build_library(emb, cls, k_t=3, name="qa")
    path = lib.save(tmp_path / "lib.npz")
    assert path.suffix == ".npz" and path.is_file()
    back = KnnBayesLibrary.load(path)
    np.testing.assert_array_equal(back.embeddings, lib.embeddings)
    np.testing.assert_array_equal(back.classes, lib.classes)
    np.testing.assert_array_equal(back.T, lib.T)
    np.testing.assert_array_equal(back.prior, lib.prior)
    assert (back.k_t, back.smoothing, back.n_classes, back.name) == (3, 1e-2, 6, "qa")
    q = _unit(np.eye(8)[:2])
    np.testing.assert_array_equal(back.posterior(q), lib.posterior(q))
    assert lib.save(tmp_path / "noext").name == "noext.npz"


def test_small_library_and_k_larger_than_library():
    lib = build_library(_unit([[1.0, 0.0]]), np.array([4]), k_t=3)
    np.testing.assert_allclose(lib.T, np.full((6, 6), 1 / 6))  # no neighbours: smoothing only
    e = lib.expected_class(_unit([[1.0, 0.1]]), k=16)
    assert e.shape == (1,) and e[0] == pytest.approx(4.0)  # the only present class


def test_bad_inputs():
    with pytest.raises(ValueError):
        build_library(_unit([[1.0, 0.0]]), np.array([6]))
    with pytest.raises(ValueError):
        build_library(_unit([[1.0, 0.0]]), np.array([1, 2]))
    lib = build_library(_unit([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 2]))
    with pytest.raises(ValueError):
        lib.posterior(np.ones((1, 3)))


def test_knn_indices_exclude_self():
    emb = _unit(np.random.default_rng(0).standard_normal((50, 4)))
    idx = knn_indices(emb, emb, 3, exclude_self=True, chunk=7)
    assert idx.shape == (50, 3)
    assert not np.any(idx == np.arange(50)[:, None])
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(idx[:, 0], sims.argmax(axis=1))
