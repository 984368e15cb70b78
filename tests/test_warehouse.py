"""The warehouse on both backends: a DuckDB file and a DuckLake (SQLite catalog; Postgres where one runs).

The same writes and reads go through ``WarehouseResource`` on each backend (``warehouse_backend``
in conftest.py sets LM_MIXUP_WAREHOUSE_*); the lake's own promises are tested on the lake:
snapshots recorded with each materialisation, a training set's reads queryable after the
upstream tables changed, writers in three processes committing concurrently, compaction that
keeps every snapshot readable, data files in object storage.
"""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

import definitions
from lm_mixup_assets import cli
from lm_mixup_assets.lib import warehouse as wh
from lm_mixup_assets.lib.versions import table_version
from lm_mixup_assets.maintenance import warehouse_maintenance_job
from resources import warehouse_resource
from resources.warehouse import WarehouseResource
from tests.helpers import materialize_source

ROOT = Path(__file__).resolve().parent.parent


def frame(source: str, n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": source,
            "i": range(start, start + n),
            "note": [None] * n,
            "tags": [[f"t{k}"] for k in range(start, start + n)],
        }
    )


def test_partitions_replace_read_and_version_alike_on_both_backends(warehouse_backend, home):
    warehouse = warehouse_resource(home=str(home))
    assert (warehouse.lake is None) == (warehouse_backend == "duckdb")
    warehouse.replace_partition("t", frame("a", 3), "source", "a")
    warehouse.replace_partition("t", frame("b", 2), "source", "b")
    warehouse.replace_partition("t", frame("a", 4, start=10), "source", "a")  # replaces a's rows only
    # The all-None column was created VARCHAR, so a later partition's text fits (a lake cannot retype a column).
    warehouse.replace_partition("t", frame("c", 1).assign(note="text"), "source", "c")
    got = warehouse.query("select source, count(*) n, min(i) lo from t group by 1 order by 1")
    assert got.values.tolist() == [["a", 4, 10], ["b", 2, 0], ["c", 1, 0]]
    assert warehouse.read_partition("t", "source", "c")["note"].tolist() == ["text"]
    with warehouse.connect() as con:
        types = dict(
            con.execute(
                "select column_name, data_type from information_schema.columns where "
                "table_catalog = current_database() and table_name = 't'"
            ).fetchall()
        )
        assert types == {"source": "VARCHAR", "i": "BIGINT", "note": "VARCHAR", "tags": "VARCHAR[]"}
        assert wh.table_exists(con, "t") and not wh.table_exists(
            con, "ducklake_snapshot"
        )  # not the lake's catalog tables
        version = table_version(con, "t", "source", "a")
    # The same rows hash to the same data version whatever holds them.
    plain = duckdb.connect()
    wh.replace_partition(plain, "t", frame("a", 4, start=10), "source", "a")
    assert version == table_version(plain, "t", "source", "a")
    with pytest.raises(LookupError, match="materialise it first"):
        warehouse.read_partition("missing")


def test_a_failed_write_changes_nothing(warehouse_backend, home):
    warehouse = warehouse_resource(home=str(home))
    warehouse.replace_partition("t", frame("a", 3), "source", "a")

    def half_then_fail(con):
        wh.replace_partition(con, "t", frame("a", 1), "source", "a", in_transaction=True)
        raise RuntimeError("the step died mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        warehouse.write(half_then_fail, tables=["t"])
    assert warehouse.query("select count(*) n from t")["n"][0] == 3


@pytest.fixture
def lake_backend(warehouse_backend):
    if warehouse_backend == "duckdb":
        pytest.skip("snapshots are a ducklake feature")
    return warehouse_backend


def test_snapshots_name_their_run_and_read_the_past(lake_backend, home):
    warehouse = warehouse_resource(home=str(home))

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a", "b"]))
    def t(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        warehouse.replace_partition("t", frame(context.partition_key, 2), "source", context.partition_key)
        return dg.MaterializeResult(metadata={"rows": 2})

    first = dg.materialize([t], resources={"warehouse": warehouse}, partition_key="a")
    dg.materialize([t], resources={"warehouse": warehouse}, partition_key="b")
    md = first.asset_materializations_for_node("t")[0].metadata
    snapshot = md["lake_snapshot"].value
    assert md["rows"].value == 2  # the asset's own metadata is kept beside it
    made = warehouse.query(
        "select author, commit_message, commit_extra_info from lake.snapshots() where snapshot_id = ?", [snapshot]
    ).iloc[0]
    assert made["author"] == "lm-mixup" and first.run_id[:8] in made["commit_message"]
    assert '"partition": "a"' in made["commit_extra_info"] and '"tables": ["t"]' in made["commit_extra_info"]
    assert warehouse.query("select count(*) n from t")["n"][0] == 4
    assert warehouse.query("select count(*) n from t", snapshot=snapshot)["n"][0] == 2  # read-only, as it was
    assert warehouse.query(f"select count(*) n from t at (version => {snapshot})")["n"][0] == 2
    with pytest.raises(duckdb.Error, match="read-only"):
        warehouse.query("delete from t", snapshot=snapshot)
    # A read transaction sees one snapshot even while another connection commits.
    with warehouse.reading_snapshot() as (con, pinned):
        warehouse.replace_partition("t", frame("c", 5), "source", "c")
        assert con.execute("select count(*) from t").fetchone()[0] == 4
    assert pinned == snapshot + 1 and warehouse.query("select count(*) n from t")["n"][0] == 9

    # Compaction (the maintenance job) keeps every snapshot readable unless asked to expire them.
    with warehouse.connect() as con:
        for i in range(3):  # small writes: rows inlined in the catalog, flushed to Parquet by compaction
            con.execute("insert into t (source, i) values ('small', ?)", [i])
        history = {
            s: con.execute(f"select count(*), sum(i) from t at (version => {s})").fetchone()
            for s in range(snapshot, wh.current_snapshot(con) + 1)
        }
    done = warehouse_maintenance_job.execute_in_process(resources={"warehouse": warehouse}).output_for_node(
        "compact_warehouse"
    )
    assert done["inlined_rows_flushed"] >= 3 and done["snapshots_expired"] == 0  # small writes are inlined
    with warehouse.connect() as con:
        assert history == {
            s: con.execute(f"select count(*), sum(i) from t at (version => {s})").fetchone() for s in history
        }


def test_cache_tables_have_no_keys_on_a_lake_and_stay_one_row_per_answer(lake_backend, home):
    from lm_mixup_assets.lib.judging import JUDGE_CACHE

    warehouse = warehouse_resource(home=str(home))
    row = {"cache_key": "k", "model": "m", "rubric_version": "v", "raw_answer": "a"}
    JUDGE_CACHE.store(warehouse.connect, [row])
    JUDGE_CACHE.store(warehouse.connect, [row, {**row, "cache_key": "k2"}])  # k is already there: kept once
    assert warehouse.query("select cache_key, count(*) n from judge_cache group by 1 order by 1").values.tolist() == [
        ["k", 1],
        ["k2", 1],
    ]


# A writer process (lib only: no Dagster import, so three start in about a second). argv: lake fields, part, rounds
@pytest.fixture
def s3_bucket(monkeypatch):
    """An S3-compatible server on 127.0.0.1 (moto's; real S3 is not reachable here) with one bucket, and the
    AWS_* variables a pod would get from its Secret."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] (dev extra) runs the local S3 endpoint")
    import boto3

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "lake-key",
        "AWS_SECRET_ACCESS_KEY": "lake-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="lm-mixup-lake")
    yield client
    wh.close_lakes()
    server.stop()


def test_a_lake_keeps_its_data_in_object_storage(lake_backend, home, s3_bucket, monkeypatch):
    """The cluster form: catalog in SQLite or Postgres, Parquet files in a bucket, credentials from AWS_*."""
    monkeypatch.setenv("LM_MIXUP_WAREHOUSE_DATA_PATH", "s3://lm-mixup-lake/tables/")
    warehouse = warehouse_resource(home=str(home))
    assert warehouse.lake.extensions()[-1] == "httpfs"
    warehouse.replace_partition("t", frame("a", 500), "source", "a")  # over the inlining limit: a Parquet file
    warehouse.replace_partition("t", frame("b", 3), "source", "b")
    assert warehouse.query("select source, count(*) n from t group by 1 order by 1").values.tolist() == [
        ["a", 500],
        ["b", 3],
    ]
    keys = [o["Key"] for o in s3_bucket.list_objects_v2(Bucket="lm-mixup-lake")["Contents"]]
    assert keys and all(k.startswith("tables/main/t/") and k.endswith(".parquet") for k in keys)
    assert not (home / "lake" / "data").exists()  # nothing on the local disk


CHILD_WRITER = """
import json, sys, pandas as pd
from lm_mixup_assets.lib import warehouse as wh
lake, part, rounds = wh.Lake(**json.loads(sys.argv[1])), sys.argv[2], int(sys.argv[3])
for k in range(rounds):
    frame = pd.DataFrame({"part": part, "k": k, "i": range(200)})
    wh.write_transaction(lambda: wh.connect(lake), lambda con: wh.replace_partition(
        con, "shared", frame, "part", part, in_transaction=True), commit_info={"extra": {"tables": ["shared"]}})
print("RETRIED", wh.conflicts_retried.retries)
"""


def test_three_processes_replace_their_partitions_of_one_table_at_once(lake_backend, home):
    """No lock to wait for: every commit lands, a conflicting one is retried (docs/scaling.md)."""
    import dataclasses
    import json

    rounds = 4
    warehouse = warehouse_resource(home=str(home))
    warehouse.replace_partition(
        "shared", pd.DataFrame({"part": ["x"], "k": [0], "i": [0]}), "part", "x"
    )  # created once
    lake = json.dumps(dataclasses.asdict(warehouse.lake))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD_WRITER, lake, part, str(rounds)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for part in "abc"
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    got = warehouse.query("select part, count(*) n, max(k) k from shared where part <> 'x' group by 1 order by 1")
    assert got.values.tolist() == [[p, 200, rounds - 1] for p in "abc"]
    commits = warehouse.query("select count(*) n from lake.snapshots() where commit_extra_info like '%shared%'")["n"][0]
    assert commits == 3 * rounds + 1  # every replacement is its own snapshot
    print("conflicts retried:", sum(int(o.split("RETRIED")[-1]) for o in outputs))


def test_sql_command_queries_either_backend(warehouse_backend, home, capsys):
    warehouse = warehouse_resource(home=str(home))
    warehouse.replace_partition("t", frame("a", 2), "source", "a")
    assert cli.main(["sql", "select source, count(*) n from t group by 1"]) == 0
    assert capsys.readouterr().out.split() == ["source", "n", "a", "2"]
    assert cli.main(["sql", "--csv", "select i from t order by i"]) == 0
    assert capsys.readouterr().out == "i\n0\n1\n"
    assert cli.main(["sql", "select * from nope"]) == 1
    assert "nope" in capsys.readouterr().err


def test_the_backend_follows_the_profile_and_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("LM_MIXUP_WAREHOUSE_BACKEND", raising=False)
    assert warehouse_resource("demo", str(tmp_path)).backend == "duckdb"
    assert warehouse_resource("paper", str(tmp_path)).backend == "ducklake"
    monkeypatch.setenv("LM_MIXUP_WAREHOUSE_BACKEND", "ducklake")
    monkeypatch.setenv("LM_MIXUP_WAREHOUSE_CATALOG", "postgres://lm_mixup@db.internal:5432/lake")
    monkeypatch.setenv("LM_MIXUP_WAREHOUSE_DATA_PATH", "s3://bucket/lm-mixup/")
    lake = warehouse_resource("demo", str(tmp_path)).lake
    assert lake.attach_sql() == (
        "ATTACH 'ducklake:postgres:postgres://lm_mixup@db.internal:5432/lake' AS lake "
        "(DATA_PATH 's3://bucket/lm-mixup/')"
    )
    assert lake.extensions() == ["ducklake", "postgres_scanner", "httpfs"]
    assert wh.redact("postgres://u:secret@h/db") == "postgres://u:***@h/db"
    monkeypatch.setenv("LM_MIXUP_WAREHOUSE_BACKEND", "spark")
    with pytest.raises(Exception, match="duckdb"):
        warehouse_resource("demo", str(tmp_path))


# --------------------------------------------------------------------------- the graph on both backends

SELECTION = {"long_tail_scores", "training_sets"}


def graph_assets():
    return [a for a in definitions.defs.assets if a.node_def.name in SELECTION]


def test_a_tiny_graph_materialises_and_its_training_set_reads_stay_queryable(warehouse_backend, resources, query):
    """Pool (one source) -> long-tail scores -> one training set, on each backend. On a lake the training set
    records the snapshot it read; after the upstream tables changed, those rows are still there to query.
    (Threshold 6 leaves the high pool empty, so no embedding: the graph runs in seconds.)"""

    def split_at(threshold):
        config = {"ops": {"quality_split": {"config": {"quality_threshold": threshold}}}}
        result = materialize_source("humaneval", resources, run_config=config)
        assert result.success
        # Every table asset of the run (Python, multi-asset ingest, SQL step) names the snapshot it wrote.
        snapshots = {
            e.asset_key.to_user_string(): e.materialization.metadata.get("lake_snapshot")
            for e in result.get_asset_materialization_events()
        }
        assert set(snapshots) == {"raw_pool", "rejected_rows", "rated_pool", "high_quality_pool", "low_quality_pool"}
        assert all((s is None) == (warehouse_backend == "duckdb") for s in snapshots.values()), snapshots

    def training_set():
        result = dg.materialize(
            graph_assets(), resources=resources, selection=["training_sets"], partition_key="full_low"
        )
        assert result.success
        return result.asset_materializations_for_node("training_sets")[0].metadata

    columns = "sample_id, prompt, completion"
    split_at(6)
    assert dg.materialize(graph_assets(), resources=resources, selection=["long_tail_scores"]).success
    md = training_set()
    trained_on = query(f"select {columns} from training_sets where arm = 'full_low' order by position")
    assert len(trained_on) == 100 and query("select count(*) n from low_quality_pool")["n"][0] == 164
    if warehouse_backend == "duckdb":
        assert "read_snapshots" not in md and "lake_snapshot" not in md
        return
    read_at, written_at = md["read_snapshots"].value, md["lake_snapshot"].value
    assert set(read_at) == {"long_tail_scores", "low_quality_pool", "rated_pool", "heldout_instructions"}
    assert written_at > read_at["rated_pool"]
    assert "at (version =>" in md["read_again"].value

    # Weeks later: the pool is re-split at another threshold (70 low rows now) and the set drawn again.
    split_at(5)
    training_set()
    low_now = query(f"select {columns} from low_quality_pool")
    low_then = query(f"select {columns} from low_quality_pool at (version => {read_at['low_quality_pool']})")
    assert len(low_now) == 70 and len(low_then) == 164
    assert len(trained_on.merge(low_now)) < len(trained_on) == len(trained_on.merge(low_then))
    # ...and the set itself, as a model was trained on it, at the snapshot its materialisation wrote.
    again = query(
        f"select {columns} from training_sets at (version => {written_at}) where arm = 'full_low' order by position"
    )
    pd.testing.assert_frame_equal(again, trained_on)
    assert not query(f"select {columns} from training_sets where arm = 'full_low' order by position").equals(trained_on)
