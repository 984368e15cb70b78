"""Distil and select on a demo source: the distiller served over HTTP (local OpenAI-compatible server),
then a tiny random model through transformers; long-tail ranking and the training sets per arm."""

import json
import random
import re

import dagster as dg

import definitions
from resources.generator import GeneratorResource
from tests.helpers import assets_of_groups, checks_by_name, materialize_source
from tests.openai_server import OpenAICompatServer

_MEMBER = re.compile(r"Q: (.*?)\nA: (.*?)(?:\n\n(?=Q: )|$)", re.DOTALL)


def stand_in_distiller(garbage_for: str):
    """A distiller served over HTTP: one merged pair per cluster, untagged prose for the cluster with ``garbage_for``."""
    return lambda user_message: merge_like_a_distiller(user_message, garbage=garbage_for in user_message)


def merge_like_a_distiller(user_message: str, garbage: bool = False) -> str:
    if garbage:
        return "I am not sure what you want me to do."  # no tags: a parse error
    members = _MEMBER.findall(user_message.split("\n\n", 1)[1])  # after the instruction
    question = members[0][0]
    answers = " ".join(a.strip().rstrip(".") + "." for _, a in members)
    return (
        f"<think>{len(members)} related pairs; I keep what they share.</think>\n"
        f"<answer>Q: {question.strip()}\nA: {answers} In short, the replies above answer the question "
        f'"{question.strip()}" from {len(members)} different angles, with examples and context.</answer>'
    )


def partitioned(groups, partitions):
    return [a for a in assets_of_groups(*groups, checks=False) if a.partitions_def is partitions]


def test_distil_rerate_and_select(resources, query, home, tiny_causal_lm, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")  # the openai generator reads it at run time
    from lm_mixup_assets.partitions import arm_partitions, source_partitions

    assert materialize_source(
        "chatterbot",
        resources,
        assets=[*partitioned(("pool", "clusters"), source_partitions), *definitions.defs.asset_checks],
    ).success
    inputs = query(
        "select cluster_id, part, member_ids, input_text from cluster_inputs where source = 'chatterbot' order by cluster_id, part"
    )
    failing = inputs["input_text"].iat[1].split("\n")[0]  # the first line of the second cluster: its requests fail
    garbage = inputs["input_text"].iat[3].split("\n")[0]  # the fourth cluster gets an answer without tags
    # distilled_pool's grpo_checkpoint input: a source here (its IO manager loads it), not retrained.
    grpo = next(a for a in definitions.defs.assets if dg.AssetKey("grpo_checkpoint") in a.keys).to_source_asset()
    distill = partitioned(("distill",), source_partitions)
    distill_assets = [*distill, grpo, *definitions.defs.asset_checks]
    distill_only = dg.AssetSelection.assets(*distill)
    # 1 failed cluster of 10 is over the default 5% failure budget: allowed here to check the accounting.
    config = {
        "ops": {
            "distilled_pool": {"config": {"max_clusters": 10, "max_failed_fraction": 0.2}},
            "rated_distilled": {"config": {"quality_threshold": 0}},
        }
    }  # distilled_high applies the same value

    with OpenAICompatServer(
        answer_fn=stand_in_distiller(garbage), mode="thread", faults={failing: [{"status": 500, "sticky": True}]}
    ) as server:
        res = {
            **resources,
            "generator": GeneratorResource(
                backend="openai", model="distiller-test", base_url=server.base_url, concurrency=4, max_retries=1
            ),
        }
        result = dg.materialize(
            distill_assets, selection=distill_only, resources=res, partition_key="chatterbot", run_config=config
        )
        assert result.success
        first_requests = server.request_count()
        # A re-run pays nothing twice: only the failed cluster is asked again (1 try + 1 retry).
        assert dg.materialize(
            distill_assets, selection=distill_only, resources=res, partition_key="chatterbot", run_config=config
        ).success
        assert server.request_count() - first_requests == 2

    checks = checks_by_name(result)
    for name in ("distilled_pool_accounting", "rated_distilled_accounting", "distilled_high_traces_to_low_rows"):
        assert checks[name].passed, (name, checks[name].description)
    distilled = query("select * from distilled_pool where source = 'chatterbot' order by cluster_id, part")
    assert len(distilled) == len(inputs)  # one row per cluster input: nothing dropped
    counts = distilled["status"].value_counts().to_dict()
    assert counts["skipped"] == len(inputs) - 10 and counts["api_error"] == 1
    assert counts["parse_error"] == 1 and counts["ok"] == 8
    assert (distilled["distiller"] == "distiller-test").all()
    assert [list(m) for m in distilled["member_ids"]] == [list(m) for m in inputs["member_ids"]]
    skipped = distilled[distilled["status"] == "skipped"]
    assert skipped["reason"].str.contains("max_clusters=10").all() and skipped["response"].isna().all()
    ok = distilled[distilled["status"] == "ok"]
    assert ok["completion"].str.contains("different angles").all() and ok["well_formed"].all()
    assert distilled.loc[distilled["status"] == "parse_error", "reason"].str.startswith("no <answer> block").all()

    rated = query("select * from rated_distilled where source = 'chatterbot'")
    assert sorted(rated["sample_id"]) == sorted(ok["sample_id"]) and (rated["status"] == "ok").all()
    high = query("select * from distilled_high where source = 'chatterbot'")
    assert len(high) == len(rated)  # threshold 0 keeps every rated pair
    assert set(rated["quality_threshold"]) == {0} and set(high["quality_threshold"]) == {0}
    md = result.asset_materializations_for_node("rated_distilled")[0].metadata
    assert "accepted" in md["rescue_yield"].value and md["rescue_funnel"].value.startswith("![")

    # Selection: long-tail ranking, then two arms.
    selection = assets_of_groups("selection", checks=False)
    assert dg.materialize([a for a in selection if a.partitions_def is None], resources=resources).success
    scores = query("select * from long_tail_scores")
    assert scores.groupby("set_name").size().to_dict() == {
        "distilled_high": len(high),
        "original_high": len(query("select * from high_quality_pool")),
    }
    assert scores["long_tail_score"].between(0, 1).all()
    # The held-out rows: high-quality pool rows (lineage: source, sample_id), at most 30% of the source's (demo).
    heldout = query("select * from heldout_instructions order by position")
    pool_high = query("select source, sample_id, prompt, completion from high_quality_pool")
    assert len(heldout) == min(48, int(0.3 * len(pool_high))) > 0
    assert set(zip(heldout["source"], heldout["sample_id"])) <= set(zip(pool_high["source"], pool_high["sample_id"]))
    assert ((heldout["prompt"].str.len() + heldout["completion"].str.len()) <= 1200).all()
    held_ids = set(heldout["sample_id"])
    arm_assets = [*[a for a in selection if a.partitions_def is arm_partitions], *definitions.defs.asset_checks]
    for arm, size in (("mixup50_ori50", 20), ("original_high", 20), ("full_low", 30)):
        r = dg.materialize(
            arm_assets,
            resources=resources,
            partition_key=arm,
            run_config={"ops": {"training_sets": {"config": {"size": size}}}},
        )
        assert r.success
        arm_checks = checks_by_name(r)
        assert arm_checks["training_sets_no_duplicates"].passed and arm_checks["training_sets_trace_to_pool"].passed
        rows = query("select * from training_sets where arm = ? order by position", [arm])
        assert arm_checks["training_sets_exclude_heldout"].passed and not held_ids & set(rows["sample_id"])
        md = r.asset_materializations_for_node("training_sets")[0].metadata
        assert md["heldout_rows_excluded"].value == len(heldout)
        lines = [
            json.loads(x) for x in (home / "artifacts" / "training_sets" / f"{arm}.jsonl").read_text().splitlines()
        ]
        assert [(x["prompt"], x["completion"]) for x in lines] == list(zip(rows["prompt"], rows["completion"]))
        if arm == "mixup50_ori50":
            n_distilled = min(10, len(high))
            assert (rows["origin"] == "distilled").sum() == n_distilled and (rows["origin"] == "original").sum() == 10
            assert arm_checks["training_sets_ratios"].passed == (n_distilled == 10)
            if n_distilled < 10:
                assert "shortfall" in arm_checks["training_sets_ratios"].description
            ranked = scores[scores["set_name"] == "distilled_high"].sort_values("long_tail_score", ascending=False)
            assert (
                rows.loc[rows["origin"] == "distilled", "sample_id"].tolist()
                == ranked["sample_id"].head(n_distilled).tolist()
            )
            assert all(len(m) >= 2 for m in rows.loc[rows["origin"] == "distilled", "member_ids"])
        else:
            assert (
                len(rows) == size and arm_checks["training_sets_ratios"].passed and (rows["origin"] == "original").all()
            )
    comp = query("select arm, pool, wanted, taken from training_set_composition order by arm, pool")
    assert set(comp["arm"]) == {"mixup50_ori50", "original_high", "full_low"}

    # The paper profile's merge (data_process/merged.py): originals as the long-tail script ranks them (judge score,
    # then rarity), distilled by rarity; original part first, then random.seed(42); random.shuffle.
    paper_merge = {"size": 20, "original_rank": "quality_then_long_tail", "row_order": "reference", "shuffle_seed": 42}
    assert dg.materialize(
        arm_assets,
        resources=resources,
        partition_key="mixup50_ori50",
        run_config={"ops": {"training_sets": {"config": paper_merge}}},
    ).success
    originals = scores[(scores["set_name"] == "original_high") & ~scores["sample_id"].isin(held_ids)].sort_values(
        ["overall_compressed", "long_tail_score", "sample_id"], ascending=[False, False, True]
    )
    distilled_ranked = scores[scores["set_name"] == "distilled_high"].sort_values("long_tail_score", ascending=False)
    expected = (
        originals["sample_id"].head(10).tolist() + distilled_ranked["sample_id"].head(min(10, len(high))).tolist()
    )
    random.seed(42)
    random.shuffle(expected)
    rows = query("select sample_id, prompt from training_sets where arm = 'mixup50_ori50' order by position")
    assert rows["sample_id"].tolist() == expected
    lines = [
        json.loads(x) for x in (home / "artifacts" / "training_sets" / "mixup50_ori50.jsonl").read_text().splitlines()
    ]
    assert [x["prompt"] for x in lines] == rows["prompt"].tolist()

    # The default distiller is grpo_checkpoint's value. Without one the step says what to materialise; given one
    # (a tiny random model, handed to the IO manager as a grpo_checkpoint run would) it distils with it.
    from lm_mixup_assets.lib.checkpoints import ModelCheckpoint
    from resources.checkpoint_store import CHECKPOINT_IO_MANAGER

    local_config = {"ops": {"distilled_pool": {"config": {"max_clusters": 3, "max_new_tokens": 8}}}}
    missing = dg.materialize(
        distill_assets,
        selection=distill_only,
        resources=resources,
        partition_key="chatterbot",
        run_config=local_config,
        raise_on_error=False,
    )
    assert not missing.success
    assert "grpo_checkpoint has no stored value yet: materialise grpo_checkpoint first" in str(
        [e.step_failure_data.error for e in missing.all_events if e.is_step_failure]
    )
    resources[CHECKPOINT_IO_MANAGER].handle_output(
        dg.build_output_context(asset_key=dg.AssetKey("grpo_checkpoint")),
        ModelCheckpoint.of_folder(tiny_causal_lm, "grpo_checkpoint"),
    )
    local = dg.materialize(
        distill_assets, selection=distill_only, resources=resources, partition_key="chatterbot", run_config=local_config
    )
    assert local.success and checks_by_name(local)["distilled_pool_accounting"].passed
    distilled = query("select status, distiller from distilled_pool where source = 'chatterbot'")
    assert (distilled["distiller"] == tiny_causal_lm).all()
    assert distilled["status"].value_counts().to_dict() == {"skipped": len(inputs) - 3, "parse_error": 3}
