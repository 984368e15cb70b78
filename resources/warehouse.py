"""The warehouse resource: a DuckDB file or a DuckLake, short connections, retried writes, snapshots."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Literal, TypeVar

import dagster as dg
import duckdb
import pandas as pd
from pydantic import Field

from lm_mixup_assets.lib import warehouse as wh

T = TypeVar("T")


def running_step_keys() -> frozenset[str] | None:
    """The asset keys and check keys the current Dagster step executes; ``None`` outside a step."""
    try:
        op_ctx = dg.OpExecutionContext.get()
    except dg.DagsterInvariantViolationError:
        return None
    if not op_ctx.has_assets_def:
        return None
    keys = {key.to_user_string() for key in op_ctx.selected_asset_keys}
    keys |= {check_key_name(key) for key in op_ctx.selected_asset_check_keys}
    return frozenset(keys) or None


def check_key_name(key: dg.AssetCheckKey) -> str:
    return f"{key.asset_key.to_user_string()}:{key.name}"


class WarehouseResource(dg.ConfigurableResource):
    """Where every table lives: one DuckDB file (``duckdb``) or a DuckLake (``ducklake``).

    ``home`` holds ``artifacts/`` and, by default, the tables: ``warehouse.duckdb``, or the lake's
    ``lake/catalog.sqlite`` and ``lake/data/``. On a cluster the lake's catalog is Postgres and its
    data path object storage, so pods on many hosts write at once (docs/scaling.md).
    """

    home: str = Field(
        description="Root of everything the platform writes (LM_MIXUP_HOME): the warehouse, artifacts/, dagster/."
    )
    backend: Literal["duckdb", "ducklake"] = Field(
        "duckdb",
        description="'duckdb': one DuckDB file, home/warehouse.duckdb (one writer at a time, one machine). "
        "'ducklake': a DuckLake (catalog + Parquet files): many writers on many hosts, every commit a queryable snapshot.",
    )
    catalog: str = Field(
        "",
        description="ducklake: the catalog database. A postgres:// URL (cluster; password from PGPASSWORD, never "
        "here), or a local file (.sqlite: SQLite, many local processes). Empty = home/lake/catalog.sqlite.",
    )
    data_path: str = Field(
        "",
        description="ducklake: where the Parquet files go: a folder or s3://bucket/prefix/ (credentials from the "
        "AWS_* environment variables). Empty = home/lake/data/.",
    )
    metadata_schema: str = Field(
        "",
        description="ducklake with a Postgres catalog: the schema holding this lake's catalog tables (several lakes "
        "in one database); empty = the database's default.",
    )
    lock_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Seconds a writer keeps trying: waiting for the DuckDB file lock, or retrying a lake "
        "commit that conflicted with another's.",
    )

    @property
    def root(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def database_path(self) -> Path:
        """The DuckDB file of the ``duckdb`` backend."""
        return self.root / "warehouse.duckdb"

    @property
    def lake(self) -> wh.Lake | None:
        """The lake of the ``ducklake`` backend (None for ``duckdb``)."""
        if self.backend != "ducklake":
            return None
        return wh.Lake(
            catalog=self.catalog or str(self.root / "lake" / "catalog.sqlite"),
            data_path=self.data_path or str(self.root / "lake" / "data"),
            metadata_schema=self.metadata_schema,
        )

    @property
    def location(self) -> str:
        """Where the tables are, in words (no password)."""
        lake = self.lake
        if lake is None:
            return str(self.database_path)
        return f"ducklake catalog {wh.redact(lake.catalog)}, data {lake.data_location()}"

    @property
    def artifacts_dir(self) -> Path:
        path = self.root / "artifacts"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def connect(self, read_only: bool = False, snapshot: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short connection; while a lineage recorder is active its reads are attributed to the running step.

        ``snapshot`` (ducklake): a read-only view of the lake as that snapshot left it."""
        lake = self.lake
        if snapshot is not None and lake is None:
            raise ValueError("snapshots are a ducklake feature; this warehouse is the duckdb backend")
        target = lake if lake is None or snapshot is None else replace(lake, snapshot=int(snapshot))
        with wh.connect(target or self.database_path, read_only=read_only, lock_timeout_s=self.lock_timeout_s) as con:
            if not wh.active_recorders():
                yield con
                return
            # Taken here, in the step's own thread: worker threads do not see Dagster's context.
            reader = running_step_keys()
            yield wh.RecordingConnection(con, lambda: reader)

    def write(self, work: Callable[[duckdb.DuckDBPyConnection], T], tables: Iterable[str] = ()) -> T:
        """``work(con)`` in one transaction, retried whole when a lake commit conflicts with another's.

        On a lake the commit names the run and step that made it, and the snapshot it created is
        recorded as ``lake_snapshot`` in the metadata of those of ``tables`` the running step
        materialises."""
        tables = list(tables)
        result, snapshot = wh.write_transaction(self.connect, work, self.lock_timeout_s, _commit_info(tables))
        if snapshot is not None:
            _note_snapshot(tables, snapshot)
        return result

    def replace_partition(
        self,
        table: str,
        df: pd.DataFrame,
        partition_column: str | None = None,
        partition_value: str | None = None,
        column_types: dict[str, str] | None = None,
    ) -> int:
        return self.write(
            lambda con: wh.replace_partition(
                con, table, df, partition_column, partition_value, column_types, in_transaction=True
            ),
            tables=[table],
        )

    def read_partition(
        self, table: str, partition_column: str | None = None, partition_value: str | None = None
    ) -> pd.DataFrame:
        with self.connect() as con:
            return wh.read_partition(con, table, partition_column, partition_value)

    def query(self, sql: str, params: list | None = None, snapshot: int | None = None) -> pd.DataFrame:
        with self.connect(snapshot=snapshot) as con:
            return con.execute(sql, params or []).df()

    @contextmanager
    def reading_snapshot(self) -> Iterator[tuple[duckdb.DuckDBPyConnection, int | None]]:
        """A connection whose reads all see one state of the warehouse, and that state's lake snapshot
        (None for duckdb). Record the snapshot with what was built from the reads: the same rows can be
        read again later with ``query(..., snapshot=...)`` or ``... from t at (version => n)``."""
        with self.connect() as con:
            con.execute("begin transaction")
            try:
                yield con, wh.current_snapshot(con)
            finally:
                wh.rollback_quietly(con)  # read only: nothing to commit


def _step_context():
    try:
        return dg.OpExecutionContext.get()
    except dg.DagsterInvariantViolationError:  # outside a step, or in a worker thread
        return None


def _commit_info(tables: list[str]) -> dict:
    """Who made a lake commit: stored with its snapshot (``select * from lake.snapshots()``)."""
    ctx = _step_context()
    extra: dict = {"tables": tables}
    if ctx is None:
        return {"author": "lm-mixup", "message": "write outside a Dagster step", "extra": extra}
    extra |= {
        "run_id": ctx.run_id,
        "step": ctx.op.name,
        "partition": ctx.partition_key if ctx.has_partition_key else None,
    }
    return {"author": "lm-mixup", "message": f"run {ctx.run_id[:8]} step {ctx.op.name}", "extra": extra}


def _note_snapshot(tables: list[str], snapshot: int) -> None:
    ctx = _step_context()
    if ctx is None or not ctx.has_assets_def:
        return
    selected = {key.to_user_string(): key for key in ctx.selected_asset_keys}
    for table in tables:
        if table in selected:
            try:
                dg.AssetExecutionContext.get().add_asset_metadata(
                    {"lake_snapshot": dg.MetadataValue.int(snapshot)}, asset_key=selected[table]
                )
            except dg.DagsterInvariantViolationError:  # an asset check's step: it materialises nothing
                return


def snapshot_metadata(snapshots: dict[str, int | None]) -> dict:
    """Metadata naming the lake snapshot each table was read at, and how to read those rows again."""
    known = {t: s for t, s in snapshots.items() if s is not None}
    if not known:
        return {}
    sql = "\n".join(f"select * from {t} at (version => {s});" for t, s in sorted(known.items()))
    return {
        "read_snapshots": dg.MetadataValue.json(known),
        "read_again": dg.MetadataValue.md(f"The rows this was built from (ducklake):\n```sql\n{sql}\n```"),
    }
