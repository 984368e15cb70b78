"""DuckDB access: short connections, retried on the file lock, partition-replacing writes.

DuckDB allows one writing process per file. Every write here opens a
connection, does its work in one transaction and closes it, retrying while
another process holds the lock. Parallel steps therefore queue for the file
instead of failing (dagster issues #18746, #16248).
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
import pandas as pd

_LOCK_MARKERS = ("could not set lock", "conflicting lock", "database is locked", "lock on file")


def _is_lock_error(exc: BaseException) -> bool:
    return any(m in str(exc).lower() for m in _LOCK_MARKERS)


@contextmanager
def connect(path: str | Path, read_only: bool = False, lock_timeout_s: float = 300.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open ``path``, waiting (with jittered backoff) while another process holds the lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_timeout_s
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only and path.exists())
            break
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
    try:
        yield con
    finally:
        con.close()


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(
        con.execute(
            "select count(*) from information_schema.tables where table_schema = 'main' and table_name = ?",
            [table],
        ).fetchall()[0][0]
    )


def replace_partition(
    con: duckdb.DuckDBPyConnection,
    table: str,
    df: pd.DataFrame,
    partition_column: str | None = None,
    partition_value: str | None = None,
    column_types: dict[str, str] | None = None,
    in_transaction: bool = False,
) -> int:
    """Replace one partition of ``table`` (or the whole table) with ``df`` in one transaction.

    The first write creates the table from the frame's schema; ``column_types``
    pins DuckDB types the frame cannot show (e.g. ``VARCHAR[]`` when the first
    frame is empty). Columns are matched by name. ``in_transaction``: the caller
    holds a transaction spanning several writes and commits it.
    """
    con.register("_incoming", df)
    try:
        if not in_transaction:
            con.execute("begin transaction")
        if not table_exists(con, table):
            con.execute(f'create table "{table}" as select * from _incoming limit 0')
            # An all-empty / all-None column has DuckDB type NULL; widen it so later rows fit.
            for name, kind in con.execute(f'select column_name, data_type from information_schema.columns where table_name = ?', [table]).fetchall():
                wanted = (column_types or {}).get(name) or ("VARCHAR" if kind.strip('"') == "NULL" else None)
                if wanted:
                    con.execute(f'alter table "{table}" alter column "{name}" type {wanted}')
        if partition_column is None:
            con.execute(f'delete from "{table}"')
        else:
            con.execute(f'delete from "{table}" where "{partition_column}" = ?', [partition_value])
        con.execute(f'insert into "{table}" by name select * from _incoming')
        if not in_transaction:
            con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    finally:
        con.unregister("_incoming")
    return len(df)


def read_partition(
    con: duckdb.DuckDBPyConnection, table: str, partition_column: str | None = None, partition_value: str | None = None
) -> pd.DataFrame:
    if not table_exists(con, table):
        raise LookupError(f"table {table!r} does not exist yet: materialise it first")
    if partition_column is None:
        return con.execute(f'select * from "{table}"').df()
    return con.execute(f'select * from "{table}" where "{partition_column}" = ?', [partition_value]).df()
