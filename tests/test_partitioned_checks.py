"""Checks on partitioned assets are partitioned: each source's (each arm's) result stands on its own."""

import dagster as dg
import duckdb
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.base import PartitionKeyFilter

import definitions
from tests.helpers import checks_by_name, materialize_source, pool_assets_and_checks
from tests.test_split_threshold import tamper_rated_row_into_both_pools

SPLIT = dg.AssetCheckKey(dg.AssetKey("low_quality_pool"), "quality_split_accounting")


def test_every_check_on_a_partitioned_asset_has_the_assets_partitions():
    graph = definitions.defs.resolve_asset_graph()
    partitioned = 0
    for checks_def in definitions.defs.asset_checks:
        for spec in checks_def.check_specs:
            asset_partitions = graph.get(spec.asset_key).partitions_def
            assert spec.partitions_def == asset_partitions, (
                spec.key.to_user_string(),
                spec.partitions_def,
                asset_partitions,
            )
            if asset_partitions is not None:
                partitioned += 1
                assert "every source" not in (spec.description or ""), spec.key.to_user_string()
    assert partitioned >= 16  # pool 6, clusters 3, distill 3, selection 3, evaluation 1 (+ any new ones)


def _tamper_duplicate_raw_row(home, source):
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    try:
        con.execute("insert into raw_pool select * from raw_pool where source = ? limit 1", [source])
    finally:
        con.close()


def test_results_carry_their_partition_and_one_source_never_hides_another(home, resources):
    instance = dg.DagsterInstance.ephemeral()
    good = dg.materialize(pool_assets_and_checks(), resources=resources, partition_key="humaneval", instance=instance)
    evaluations = good.get_asset_check_evaluations()
    assert len(evaluations) == 6 and {e.partition for e in evaluations} == {"humaneval"}
    assert all(e.passed for e in evaluations)

    # humaneval's rated table gains a second, low-scored copy of one high row: the re-built split then
    # holds that sample in both pools, and its check for humaneval turns red ...
    tamper_rated_row_into_both_pools(home, "humaneval")
    red = dg.materialize(
        pool_assets_and_checks(),
        selection=dg.AssetSelection.assets("high_quality_pool", "low_quality_pool"),
        partition_key="humaneval",
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    evaluation = checks_by_name(red)["quality_split_accounting"]
    assert evaluation.partition == "humaneval" and not evaluation.passed
    assert "this source" in evaluation.description

    # ... and a later green run of another source is recorded against that source only.
    other = dg.materialize(pool_assets_and_checks(), resources=resources, partition_key="chatterbot", instance=instance)
    assert checks_by_name(other)["quality_split_accounting"].passed
    assert {e.partition for e in other.get_asset_check_evaluations()} == {"chatterbot"}

    storage = instance.event_log_storage
    latest = {
        p: storage.get_latest_asset_check_execution_by_key([SPLIT], partition_filter=PartitionKeyFilter(key=p))[SPLIT]
        for p in ("humaneval", "chatterbot")
    }
    assert latest["humaneval"].status == AssetCheckExecutionRecordStatus.FAILED
    assert latest["chatterbot"].status == AssetCheckExecutionRecordStatus.SUCCEEDED
    assert (latest["humaneval"].partition, latest["chatterbot"].partition) == ("humaneval", "chatterbot")
    history = storage.get_asset_check_execution_history(
        SPLIT, limit=10, partition_filter=PartitionKeyFilter(key="humaneval")
    )
    assert [r.status for r in history] == [
        AssetCheckExecutionRecordStatus.FAILED,
        AssetCheckExecutionRecordStatus.SUCCEEDED,
    ]


def test_a_check_sees_only_its_partition(home, resources):
    materialize_source("humaneval", resources)
    _tamper_duplicate_raw_row(home, "humaneval")
    # chatterbot's check is green although another source's rows are broken in the same table.
    result = materialize_source("chatterbot", resources)
    assert checks_by_name(result)["raw_pool_unique_ids"].passed
    assert checks_by_name(result)["raw_pool_unique_ids"].partition == "chatterbot"
