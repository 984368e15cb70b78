"""kNN-Bayes quality rater (docs/method.md, "Rewards"), checked against the reference's arithmetic."""

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
    # row 0: 6 votes for class 0 (3 samples x 2 neighbours) + smoothing among the present classes (0, 4) only,
    # as the reference's C x C matrix over the classes that occur: T[0,0] = 6.01 / 6.02, T[0,4] = 0.01 / 6.02
    expected_row0 = np.zeros(6)
    expected_row0[[0, 4]] = [6.01, 0.01]
    np.testing.assert_allclose(lib.T[0], expected_row0 / 6.02)
    assert lib.T[0, 0] == pytest.approx(6.01 / 6.02) and lib.T[4, 0] == pytest.approx(0.01 / 6.02)
    assert lib.T[4, 4] > 0.9 and lib.T[0, 4] < 0.01
    # absent classes: uniform rows (never used), prior 0
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


def _reference_posterior(emb, cls, queries, k_t=3, k=16, smoothing=1e-2):
    """The reference's arithmetic (knn/build.py, llm_mixup_bayes.py), written out independently:
    classes indexed by the values that occur, C x C counts smoothed, prior = counts + 1e-8,
    log(T + 1e-12), posterior over the present classes."""
    values = np.unique(cls)
    index = {v: i for i, v in enumerate(values)}
    c = len(values)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    counts = np.full((c, c), smoothing)
    for centre, row in enumerate(np.argsort(-sims, axis=1)[:, :k_t]):
        for nb in row:
            counts[index[cls[centre]], index[cls[nb]]] += 1
    T = counts / counts.sum(axis=1, keepdims=True)
    freq = np.array([np.sum(cls == v) for v in values], dtype=float) + 1e-8
    p = freq / freq.sum()
    out = []
    for row in np.argsort(-(queries @ emb.T), axis=1)[:, :k]:
        h = np.bincount([index[v] for v in cls[row]], minlength=c)
        logit = np.log(p + 1e-12) + np.log(T + 1e-12) @ h
        post = np.exp(logit - logit.max())
        out.append(post / post.sum())
    return values, np.array(out)


def test_posterior_matches_reference_arithmetic():
    emb, cls = _clustered(n_per=10, classes=(0, 2, 4, 5), spread=0.4, seed=1)
    lib = build_library(emb, cls, k_t=3)
    q = _unit(np.random.default_rng(2).standard_normal((7, 8)))
    values, ref = _reference_posterior(lib.embeddings, cls, q)
    ours = lib.posterior(q, k=16)
    np.testing.assert_allclose(ours[:, values], ref, rtol=1e-6, atol=1e-9)
    assert np.all(ours[:, [1, 3]] == 0)  # absent classes
    np.testing.assert_allclose(lib.expected_class(q, k=16), ref @ values, rtol=1e-6)
    # chunking does not change the result
    np.testing.assert_allclose(lib.posterior(q, k=16, chunk=2)[:, values], ref, rtol=1e-6, atol=1e-9)


def test_posterior_golden_two_classes():
    """Worked by hand: 4 samples, k_t=1, classes 5 (two) and 0 (two), each one's nearest other of its class.
    T = [[2.01, 0.01], [0.01, 2.01]] / 2.02, prior 1/2 each."""
    emb = _unit([[1, 0.0], [0.99, 0.14], [0.0, 1], [0.14, 0.99]])
    lib = build_library(emb, np.array([5, 5, 0, 0]), k_t=1)
    assert lib.T[5, 5] == pytest.approx(2.01 / 2.02) and lib.T[5, 0] == pytest.approx(0.01 / 2.02)
    near_five = _unit([[1.0, 0.05]])
    # k=2: both class-5 samples -> posterior(5) = 201^2 / (201^2 + 1), E = 5 * 40401 / 40402
    assert lib.expected_class(near_five, k=2)[0] == pytest.approx(5 * 40401 / 40402)
    # k=3: two 5s, one 0 -> odds 201 : 1, E = 5 * 201 / 202
    assert lib.expected_class(near_five, k=3)[0] == pytest.approx(5 * 201 / 202)
    # k=4: two of each -> 1/2 each, E = 2.5, quality 0
    assert lib.expected_class(near_five, k=4)[0] == pytest.approx(2.5)


def test_mixed_neighbourhood_stays_among_present_classes():
    # Half the neighbours class 3, half class 5: the uniform rows of the absent classes
    # would explain this best, so absent classes must be out of the posterior.
    emb, cls = _clustered(n_per=20, classes=(3, 5), spread=0.05)
    lib = build_library(emb, cls, k_t=3)
    between = _unit([[1, 1, 0, 0, 0, 0, 0, 0]])
    post = lib.posterior(between, k=16)[0]
    assert post[[0, 1, 2, 4]].sum() == 0
    assert 3 <= post @ np.arange(6) <= 5


def test_quality_reward_reference_band():
    # the reference: 1.0 if E >= 4, 0.3 only if E == 3 exactly, else 0
    assert quality_reward(4.0) == 1.0 and quality_reward(4.7) == 1.0
    assert quality_reward(3.0) == 0.3
    assert quality_reward(3.5) == 0.0 and quality_reward(3.99) == 0.0 and quality_reward(3 + 1e-12) == 0.0
    assert quality_reward(4 - 1e-12) == 0.0 and quality_reward(2.99) == 0.0 and quality_reward(0.0) == 0.0
    np.testing.assert_allclose(quality_reward(np.array([5, 3.0, 3.5, 2.5])), [1.0, 0.3, 0.0, 0.0])
    # how often the bands differ on random posteriors: the reference pays 0.3 almost never
    rng = np.random.default_rng(0)
    e = rng.dirichlet(np.ones(6), size=10_000) @ np.arange(6)
    ref, interval = quality_reward(e), quality_reward(e, band="interval")
    assert np.sum(ref == 0.3) == 0 and np.sum(interval == 0.3) > 100


def test_quality_reward_interval_band():
    assert quality_reward(3.0, band="interval") == 0.3 and quality_reward(3.99, band="interval") == 0.3
    assert quality_reward(2.99, band="interval") == 0.0
    assert quality_reward(3 - 1e-12, band="interval") == 0.3 and quality_reward(4 - 1e-12, band="interval") == 1.0
    assert quality_reward(2.6, mid=2.5, band="interval") == 0.3
    with pytest.raises(ValueError, match="band"):
        quality_reward(3.0, band="round")


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
    assert lib.T[4, 4] == 1.0  # no neighbours: smoothing only, over the one present class
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
