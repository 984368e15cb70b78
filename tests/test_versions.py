"""Staleness you can see: every asset has a code version, materialisations report data versions."""

import dagster as dg
import duckdb
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

import definitions
from lm_mixup_assets.lib.versions import checkpoint_version, table_version
from tests.bad_input import write_good_jsonl


def test_every_asset_has_a_code_version():
    graph = definitions.defs.resolve_asset_graph()
    missing = [k.to_user_string() for k in graph.get_all_asset_keys() if not graph.get(k).code_version]
    assert not missing, f"assets without code_version: {missing}"
    # A SQL model's version follows its file's text; Python stages carry their module's CODE_VERSION.
    assert graph.get(dg.AssetKey("high_quality_pool")).code_version.startswith("1-")
    assert graph.get(dg.AssetKey("rated_pool")).code_version == "1"


def test_table_version_is_a_content_hash_of_the_partition():
    con = duckdb.connect()
    con.execute(
        "create table t (source varchar, sample_id varchar, overall int, from_cache boolean, rated_at timestamp)"
    )
    con.execute(
        "insert into t values ('a', 'x', 5, false, '2026-01-01'), ('a', 'y', 7, false, '2026-01-01'), "
        "('b', 'z', 3, false, '2026-01-01')"
    )
    a = table_version(con, "t", "source", "a")
    # Same rows in another order, rewritten later and from the cache: the same content, the same version.
    con.execute("delete from t where source = 'a'")
    con.execute("insert into t values ('a', 'y', 7, true, '2026-02-02'), ('a', 'x', 5, true, '2026-02-02')")
    assert table_version(con, "t", "source", "a") == a
    con.execute("update t set overall = 6 where sample_id = 'x'")
    assert table_version(con, "t", "source", "a") != a  # one changed score is a new version
    b = table_version(con, "t", "source", "b")
    con.execute("insert into t values ('a', 'w', 1, false, null)")
    assert table_version(con, "t", "source", "b") == b  # another partition's rows do not move it
    assert table_version(con, "t", "source", "none") != b  # an empty partition has its own version
    with pytest.raises(LookupError, match="'missing' does not exist"):
        table_version(con, "missing")


def test_checkpoint_version_follows_the_weight_files(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w" * 8)
    first = checkpoint_version(folder)
    assert checkpoint_version(folder) == first
    (folder / "model.safetensors").write_bytes(b"w" * 9)  # re-saved weights
    assert checkpoint_version(folder) != first
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint_version(tmp_path / "nowhere")


def _pool_front():
    by_key = {k.to_user_string(): a for a in definitions.defs.assets for k in a.keys}
    return [by_key["raw_pool"], by_key["rated_pool"]]  # raw_pool's definition is the ingest multi-asset


def _versions(result, *keys):
    mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    return [mats[k].event_specific_data.materialization.tags["dagster/data_version"] for k in keys]


def test_changed_source_data_marks_rated_pool_stale(tmp_path, resources):
    """Same data, same version, downstream fresh; changed data, new version, downstream stale."""
    source = write_good_jsonl(tmp_path / "pool.jsonl", n=3)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(f"sources:\n  chatterbot:\n    path: {source}\n")
    config = {"ops": {"ingest_pool_source": {"config": {"manifest": str(manifest)}}}}
    assets = _pool_front()

    def run(instance, selection=None):
        return dg.materialize(
            assets,
            instance=instance,
            resources=resources,
            partition_key="chatterbot",
            run_config=config,
            selection=selection,
        )

    def rated_status(instance):
        return get_stale_status_resolver(instance, assets).get_status(dg.AssetKey("rated_pool"), "chatterbot")

    with dg.instance_for_test() as instance:
        (raw_v1,) = _versions(run(instance), "raw_pool")
        assert rated_status(instance) == StaleStatus.FRESH
        # raw_pool rebuilt from the same file: the same version, so rated_pool is still in sync.
        (raw_v2,) = _versions(run(instance, selection=["raw_pool", "rejected_rows"]), "raw_pool")
        assert raw_v2 == raw_v1
        assert rated_status(instance) == StaleStatus.FRESH
        # The source gains a row: raw_pool has a new version and rated_pool was built from the old one.
        write_good_jsonl(source, n=4)
        (raw_v3,) = _versions(run(instance, selection=["raw_pool", "rejected_rows"]), "raw_pool")
        assert raw_v3 != raw_v1
        assert rated_status(instance) == StaleStatus.STALE
        causes = get_stale_status_resolver(instance, assets).get_stale_causes(dg.AssetKey("rated_pool"), "chatterbot")
        assert any(c.dependency and c.dependency.asset_key == dg.AssetKey("raw_pool") for c in causes)
