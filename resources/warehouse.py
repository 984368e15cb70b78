"""The DuckDB warehouse: one file under LM_MIXUP_HOME, short retried connections."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
import duckdb
import pandas as pd

from lm_mixup_assets.lib import warehouse as wh


class WarehouseResource(dg.ConfigurableResource):
    """Where every table lives. ``home`` holds ``warehouse.duckdb`` and ``artifacts/``."""

    home: str
    lock_timeout_s: float = 300.0

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
        with wh.connect(self.database_path, read_only=read_only, lock_timeout_s=self.lock_timeout_s) as con:
            yield con

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
