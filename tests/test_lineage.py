"""Lineage you can trust: every table a step reads is its own, a declared upstream, or a listed cache.

The warehouse resource records, while a recorder is active, the tables each statement reads and
the asset / check keys of the step that ran it (lm_mixup_assets/lib/warehouse.py). conftest.py
keeps one recorder for the whole session, so the stage tests (tiny data, every stage) feed
``test_session_reads_are_declared_edges``, which conftest runs last.
"""

import dagster as dg
import pytest

import definitions
from lm_mixup_assets.lib.warehouse import ReadRecorder, recording_reads, tables_read
from resources.warehouse import WarehouseResource

# Write-through caches any step may read: keyed by request, not lineage (docs/architecture.md, "How data moves").
CACHE_TABLES = {"judge_cache", "generation_cache"}
# The judge's Batch API bookkeeping (lib/openai_batch.py), keyed by request like the caches.
CACHE_TABLES |= {"judge_batches", "judge_batch_requests"}

# Bookkeeping tables owned by one stage that are not assets of their own.
# The ingest step (pool.py, multi-asset ingest_pool_source) writes them with raw_pool in one transaction;
# rated_pool reads the ratings a source brought along.
_INGEST_STEP = {"raw_pool", "rejected_rows"}
OWNED_SIDE_TABLES = {
    "failed_ingest_rejections": _INGEST_STEP,  # rows of a failed ingest, shown until the next good one
    "ingest_log": _INGEST_STEP | {"pool_summary"},  # per source: input rows and where they went
    "precomputed_scores": _INGEST_STEP | {"rated_pool"},  # ratings a manifest source brings along
    "training_set_composition": {"training_sets"},  # selection.py: the recipe's counts per arm and pool
}


def declared_tables() -> dict[str, set[str]]:
    """For each asset key and check key (as recorded): the tables it may read."""
    graph = definitions.defs.resolve_asset_graph()
    allowed: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        name = key.to_user_string()
        allowed[name] = {name} | {parent.to_user_string() for parent in graph.get(key).parent_keys}
    # A multi-asset step writes its outputs together (e.g. raw_pool + rejected_rows in one transaction):
    # each output may read its siblings (a subset run keeps the unselected ones whole).
    for assets_def in definitions.defs.assets:
        keys = {k.to_user_string() for k in getattr(assets_def, "keys", ())}
        if len(keys) > 1:
            for name in keys:
                allowed[name] |= keys
    for checks in definitions.defs.asset_checks:
        for spec in checks.check_specs:
            checked = spec.asset_key.to_user_string()
            extra = {dep.asset_key.to_user_string() for dep in spec.additional_deps}
            allowed[f"{checked}:{spec.name}"] = allowed[checked] | extra
    return allowed


def undeclared_reads(recorder: ReadRecorder) -> dict[str, set[str]]:
    """Reader -> tables it read without a declared edge (only readers of this project's graph)."""
    allowed = declared_tables()
    problems: dict[str, set[str]] = {}
    for reader, tables in recorder.by_reader().items():
        known = [key for key in reader if key in allowed]
        if not known:  # a test's own toy asset, not part of the graph
            continue
        ok = set(CACHE_TABLES)
        for key in known:
            asset = key.split(":")[0]
            ok |= allowed[key]
            ok |= {table for table, owners in OWNED_SIDE_TABLES.items() if asset in owners}
        stray = tables - ok
        if stray:
            problems[",".join(sorted(reader))] = stray
    return problems


def test_tables_read_follows_duckdbs_parse_tree():
    assert tables_read("select * from a join b using (x) where c in (select c from d)") == {"a", "b", "d"}
    assert tables_read("with t as (select * from q where k = ?) select * from t") == {"q"}  # CTE is not a table
    assert tables_read('insert into "z" by name select * from (select * from x join y using (k))') == {"x", "y"}
    assert tables_read("create table if not exists w as select * from v limit 0") == {"v"}
    assert tables_read("select * from s union all by name select * from r") == {"r", "s"}
    assert tables_read("select column_name from information_schema.columns where table_name = ?") == set()
    for nothing in ("delete from z where k = ?", "alter table z add column if not exists j int", "begin transaction"):
        assert tables_read(nothing) == set()


@pytest.mark.parametrize("warehouse_backend", ["duckdb", "ducklake"], indirect=True)
def test_reads_are_attributed_to_the_running_asset_and_check(warehouse_backend, home):
    from resources import warehouse_resource

    warehouse = warehouse_resource(home=str(home))

    @dg.asset
    def upstream(warehouse: WarehouseResource):
        import pandas as pd

        warehouse.replace_partition("upstream", pd.DataFrame({"k": [1, 2]}))
        warehouse.replace_partition("stray", pd.DataFrame({"k": [3]}))

    @dg.asset(deps=[upstream])
    def downstream(warehouse: WarehouseResource):
        warehouse.query("select * from upstream join stray using (k)")

    @dg.asset_check(asset=downstream)
    def downstream_ok(warehouse: WarehouseResource):
        warehouse.read_partition("upstream")
        return dg.AssetCheckResult(passed=True)

    with recording_reads() as recorder:
        dg.materialize([upstream, downstream, downstream_ok], resources={"warehouse": warehouse})
    assert recorder.by_reader() == {  # registered frames (``_incoming``) are not tables
        frozenset({"downstream"}): {"upstream", "stray"},
        frozenset({"downstream:downstream_ok"}): {"upstream"},
    }


def test_session_reads_are_declared_edges(lineage_reads):
    """Runs last (conftest.py): every read the stage tests made follows a declared edge or a listed cache."""
    allowed = declared_tables()
    seen = {key for reader in lineage_reads.by_reader() for key in reader if key in allowed}
    if not seen:
        pytest.skip("no stage test ran in this session: run with the stage tests, e.g. the whole fast suite")
    stray = undeclared_reads(lineage_reads)
    assert stray == {}, f"declare these upstreams (deps=...) or list the table as a cache: {stray}"
