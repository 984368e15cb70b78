"""The DuckDB warehouse: one file under LM_MIXUP_HOME, short retried connections."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import Field
import pandas as pd

from lm_mixup_assets.lib import warehouse as wh


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
    """Where every table lives. ``home`` holds ``warehouse.duckdb`` and ``artifacts/``."""

    home: str = Field(description="Root of everything the platform writes (LM_MIXUP_HOME): warehouse.duckdb, artifacts/, dagster/.")
    lock_timeout_s: float = Field(300.0, gt=0, description="Seconds a writer waits for the DuckDB file lock before failing.")

    @property
    def database_path(self) -> Path:
        return Path(self.home).expanduser().resolve() / "warehouse.duckdb"

    @property
    def artifacts_dir(self) -> Path:
        path = Path(self.home).expanduser().resolve() / "artifacts"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short connection; while a lineage recorder is active its reads are attributed to the running step."""
        with wh.connect(self.database_path, read_only=read_only, lock_timeout_s=self.lock_timeout_s) as con:
            if not wh.active_recorders():
                yield con
                return
            # Taken here, in the step's own thread: worker threads do not see Dagster's context.
            reader = running_step_keys()
            yield wh.RecordingConnection(con, lambda: reader)

    def replace_partition(self, table: str, df: pd.DataFrame, partition_column: str | None = None,
                          partition_value: str | None = None, column_types: dict[str, str] | None = None) -> int:
        with self.connect() as con:
            return wh.replace_partition(con, table, df, partition_column, partition_value, column_types)

    def read_partition(self, table: str, partition_column: str | None = None, partition_value: str | None = None) -> pd.DataFrame:
        with self.connect() as con:
            return wh.read_partition(con, table, partition_column, partition_value)

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        with self.connect() as con:
            return con.execute(sql, params or []).df()
