"""Long-tail scores against brute force, and arm recipes on a constructed pool."""

import numpy as np
import pandas as pd
import pytest

from lm_mixup_assets.lib.selection import (
    ArmRecipe,
    compose_arm,
    long_tail_scores,
    long_tail_text,
    mean_knn_cosine_distance,
    normalise_unit,
    parse_arm,
)


def brute_force_mean_knn(x: np.ndarray, k: int) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = 1.0 - x @ x.T
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def test_long_tail_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    raw, score = long_tail_scores(x, k=15)
    np.testing.assert_allclose(raw, brute_force_mean_knn(x.astype(np.float64), 15), atol=1e-5)
    assert score.min() == 0.0 and score.max() == 1.0
    assert np.argmax(score) == np.argmax(raw)


def test_an_outlier_is_the_rarest():
    rng = np.random.default_rng(1)
    cluster = rng.normal([1, 0, 0], 0.05, size=(40, 3))
    x = np.vstack([cluster, [[0, 0, 1.0]]])
    _, score = long_tail_scores(x, k=5)
    assert np.argmax(score) == 40 and score[40] == 1.0


def test_small_sets():
    assert len(mean_knn_cosine_distance(np.zeros((0, 4)))) == 0
    assert mean_knn_cosine_distance(np.ones((1, 4))).tolist() == [0.0]
    two = mean_knn_cosine_distance(np.array([[1.0, 0.0], [0.0, 1.0]]), k=15)  # k shrinks to n - 1
    np.testing.assert_allclose(two, [1.0, 1.0])
    assert normalise_unit(np.array([0.3, 0.3])).tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "name, parts",
    [
        ("mixup50_ori50", (("distilled_high", 0.5), ("original_high", 0.5))),
        ("mixup70_ori30", (("distilled_high", 0.7), ("original_high", 0.3))),
        ("high30_low70", (("original_high", 0.3), ("original_low", 0.7))),
        ("original_high", (("original_high", 1.0),)),
        ("random", (("rated_pool", 1.0),)),
        ("full_low", (("original_low", 1.0),)),
    ],
)
def test_arm_names_parse(name, parts):
    assert parse_arm(name).parts == parts


@pytest.mark.parametrize("name", ["mixup50_ori60", "mixup50_low50", "everything", "high_low"])
def test_bad_arm_names_say_what_is_allowed(name):
    with pytest.raises(ValueError, match="arm"):
        parse_arm(name)


def test_counts_add_up_exactly():
    assert ArmRecipe("x", (("a", 0.7), ("b", 0.3))).counts(11) == {"a": 8, "b": 3}
    assert sum(ArmRecipe("x", (("a", 1 / 3), ("b", 2 / 3))).counts(10).values()) == 10


def _pool(prefix: str, n: int, scored: bool = True) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "source": "s",
            "sample_id": [f"{prefix}{i:03d}" for i in range(n)],
            "member_ids": [[f"{prefix}{i:03d}"] for i in range(n)],
            "prompt": [f"{prefix} question {i}" for i in range(n)],
            "completion": [f"answer {i}" for i in range(n)],
        }
    )
    if scored:
        df["long_tail_score"] = np.linspace(0, 1, n)
    return df


def test_mixup_arm_takes_the_rarest_of_each_pool_in_ratio():
    cands = {"distilled_high": _pool("d", 30), "original_high": _pool("o", 30)}
    arm = compose_arm(parse_arm("mixup70_ori30"), cands, n=20)
    assert arm.taken == {"distilled_high": 14, "original_high": 6} and arm.shortfall == {}
    d = arm.rows[arm.rows["pool"] == "distilled_high"]
    assert d["long_tail_score"].tolist() == sorted(cands["distilled_high"]["long_tail_score"], reverse=True)[:14]
    assert set(arm.rows["origin"]) == {"distilled", "original"}
    assert arm.rows["position"].tolist() == list(range(20))


def test_a_small_pool_gives_a_reported_shortfall_not_a_changed_ratio():
    arm = compose_arm(
        parse_arm("mixup50_ori50"), {"distilled_high": _pool("d", 3), "original_high": _pool("o", 30)}, n=20
    )
    assert arm.taken == {"distilled_high": 3, "original_high": 10}
    assert arm.shortfall == {"distilled_high": 7} and len(arm.rows) == 13


def test_duplicate_content_is_skipped_and_the_next_row_taken():
    orig = _pool("o", 10)
    dist = _pool("d", 10)
    dist.loc[9, ["prompt", "completion"]] = orig.loc[
        9, ["prompt", "completion"]
    ].values  # rarest distilled = rarest original
    arm = compose_arm(parse_arm("mixup50_ori50"), {"distilled_high": dist, "original_high": orig}, n=6)
    assert arm.taken == {"distilled_high": 3, "original_high": 3}
    keys = list(zip(arm.rows["prompt"], arm.rows["completion"]))
    assert len(keys) == len(set(keys))
    assert "o009" not in set(arm.rows["sample_id"])  # its content was already taken as d009


def test_uniform_arms_are_seeded_and_order_independent():
    low = _pool("l", 50, scored=False)
    a = compose_arm(parse_arm("full_low"), {"original_low": low}, n=10, seed=3).rows["sample_id"].tolist()
    b = compose_arm(parse_arm("full_low"), {"original_low": low.iloc[::-1]}, n=10, seed=3).rows["sample_id"].tolist()
    c = compose_arm(parse_arm("full_low"), {"original_low": low}, n=10, seed=4).rows["sample_id"].tolist()
    assert a == b and a != c and len(set(a)) == 10


def test_exact_duplicates_count_as_neighbours_and_self_is_never_one():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(mean_knn_cosine_distance(x, k=1), [0.0, 0.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(mean_knn_cosine_distance(x, k=3), [1 / 3, 1 / 3, 1 / 3, 1.0], atol=1e-6)


# --------------------------------------------------------------------------- the method's long-tail text and merge


def test_long_tail_text():
    assert long_tail_text("What is 2+2?", "4.") == "What is 2+2?\n4."
    assert long_tail_text("What is 2+2?", "4.", "Instruction: ", "Answer: ") == "Instruction: What is 2+2?\nAnswer: 4."
    assert long_tail_text(" Q ", " A ", "", "") == "Q \n A"  # only the ends are stripped


def _rated(prefix: str, quality: list[int], tail: list[float]) -> pd.DataFrame:
    df = _pool(prefix, len(quality))
    return df.assign(overall_compressed=quality, long_tail_score=tail)


def test_original_rank_quality_then_long_tail_by_hand():
    orig = _rated("o", [4, 5, 5, 4], [0.9, 0.1, 0.5, 0.95])
    by_tail = compose_arm(parse_arm("original_high"), {"original_high": orig}, n=3)
    assert by_tail.rows["sample_id"].tolist() == ["o003", "o000", "o002"]
    by_quality = compose_arm(
        parse_arm("original_high"), {"original_high": orig}, n=3, original_rank="quality_then_long_tail"
    )
    assert by_quality.rows["sample_id"].tolist() == ["o002", "o001", "o003"]  # the 5s (rarest first), then o003
    # the distilled part is always by long-tail score
    dist = _rated("d", [5, 4], [0.2, 0.8])
    mix = compose_arm(
        parse_arm("mixup50_ori50"),
        {"distilled_high": dist, "original_high": orig},
        n=4,
        original_rank="quality_then_long_tail",
    )
    assert mix.rows["sample_id"].tolist() == ["d001", "d000", "o002", "o001"]


def test_quality_rank_needs_a_score_on_every_row():
    orig = _rated("o", [4, 5], [0.1, 0.2]).astype({"overall_compressed": "float64"})
    orig.loc[1, "overall_compressed"] = np.nan
    with pytest.raises(ValueError, match=r"overall_compressed.*o001"):
        compose_arm(parse_arm("original_high"), {"original_high": orig}, n=2, original_rank="quality_then_long_tail")
    with pytest.raises(ValueError, match="original_rank"):
        compose_arm(parse_arm("original_high"), {"original_high": orig}, n=2, original_rank="newest")


def test_reference_row_order_is_the_merge_scripts_shuffle():
    # merged.py: list = original + top-n distilled, then random.seed(42); random.shuffle(list).
    # random.seed(42); random.shuffle([0, 1, 2, 3]) gives [2, 1, 3, 0], so over
    # [o003, o000, d001, d000] (original part first) the file reads d001, o000, d000, o003.
    orig = _rated("o", [4, 5, 5, 4], [0.9, 0.1, 0.5, 0.95])
    dist = _rated("d", [5, 4], [0.2, 0.8])
    arm = compose_arm(
        parse_arm("mixup50_ori50"),
        {"distilled_high": dist, "original_high": orig},
        n=4,
        row_order="reference",
        shuffle_seed=42,
    )
    assert arm.rows["sample_id"].tolist() == ["d001", "o000", "d000", "o003"]
    assert arm.rows["position"].tolist() == [0, 1, 2, 3]
    assert arm.taken == {"distilled_high": 2, "original_high": 2}
    other = compose_arm(
        parse_arm("mixup50_ori50"),
        {"distilled_high": dist, "original_high": orig},
        n=4,
        row_order="reference",
        shuffle_seed=7,
    )
    assert sorted(other.rows["sample_id"]) == sorted(arm.rows["sample_id"])
    with pytest.raises(ValueError, match="row_order"):
        compose_arm(parse_arm("random"), {"rated_pool": orig}, n=2, row_order="sorted")


def test_duplicates_are_kept_when_asked():
    orig, dist = _pool("o", 4), _pool("d", 4)
    dist.loc[3, ["prompt", "completion"]] = orig.loc[3, ["prompt", "completion"]].values
    arm = compose_arm(
        parse_arm("mixup50_ori50"), {"distilled_high": dist, "original_high": orig}, n=4, drop_duplicate_content=False
    )
    assert arm.rows["sample_id"].tolist() == ["d003", "d002", "o003", "o002"]  # o003 repeats d003's content


def test_paper_profile_resolves_to_the_reference_selection():
    from lm_mixup_assets.config import resolved_settings
    from lm_mixup_assets.lib.settings.selection import LongTailSettings, TrainingSetSettings

    paper, long_tail = (
        resolved_settings(TrainingSetSettings, "paper")[0],
        resolved_settings(LongTailSettings, "paper")[0],
    )
    assert (long_tail.k, paper.size, paper.shuffle_seed) == (15, 10_000, 42)
    assert (long_tail.prompt_prefix, long_tail.answer_prefix) == ("Instruction: ", "Answer: ")
    assert (paper.original_rank, paper.row_order) == ("quality_then_long_tail", "reference")
    arms = paper.arm_list()
    assert {
        "mixup70_ori30",
        "mixup50_ori50",
        "mixup30_ori70",
        "high70_low30",
        "high50_low50",
        "high30_low70",
        "full_low",
    } <= set(arms)
    assert [parse_arm(a).counts(10_000) for a in ("mixup70_ori30", "high30_low70")] == [
        {"distilled_high": 7000, "original_high": 3000},
        {"original_high": 3000, "original_low": 7000},
    ]


def test_long_tail_equals_the_methods_sklearn_neighbours():
    # long_tail_rating.py: NearestNeighbors(k + 1, metric="cosine"), drop column 0 (self), mean; min-max over the set
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 12)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dist, _ = NearestNeighbors(n_neighbors=16, metric="cosine").fit(x).kneighbors(x)
    raw_ref = dist[:, 1:].mean(axis=1)
    raw, score = long_tail_scores(x, k=15)
    np.testing.assert_allclose(raw, raw_ref, atol=1e-5)
    np.testing.assert_allclose(score, (raw_ref - raw_ref.min()) / (raw_ref.max() - raw_ref.min()), atol=1e-4)
