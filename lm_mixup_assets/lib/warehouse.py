"""DuckDB access: short connections, retried on the file lock, partition-replacing writes.

DuckDB allows one writing process per file. Every write here opens a
connection, does its work in one transaction and closes it, retrying while
another process holds the lock. Parallel steps therefore queue for the file
instead of failing (dagster issues #18746, #16248).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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
            for name, kind in con.execute('select column_name, data_type from information_schema.columns where table_name = ?', [table]).fetchall():
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


# --- Lineage: which tables a statement reads -------------------------------------------------
# The asset graph is only trustworthy if every table an asset reads is a declared upstream
# (docs/method.md, "Lineage"). The warehouse resource records the tables each statement reads,
# and tests/test_lineage.py compares them with the declared graph.

_WRITE_PREFIX = re.compile(
    r"""^\s*(?:insert\s+(?:or\s+\w+\s+)?into\s+(?:"[^"]+"|\S+)(?:\s+by\s+(?:name|position))?"""
    r"""|create\s+(?:or\s+replace\s+)?(?:temp(?:orary)?\s+)?table\s+(?:if\s+not\s+exists\s+)?(?:"[^"]+"|\S+)\s+as)\s+""",
    re.IGNORECASE | re.DOTALL,
)
_QUERY_START = re.compile(r"^\s*(?:\(|select\b|with\b|from\b|values\b)", re.IGNORECASE)
_SYSTEM_SCHEMAS = {"information_schema", "pg_catalog"}
_parser = threading.local()


def _serialized_select(sql: str) -> dict | None:
    """DuckDB's own parse tree of a SELECT (parse only: no catalog, so unknown tables are fine)."""
    con = getattr(_parser, "con", None)
    if con is None:
        con = _parser.con = duckdb.connect()
    tree = json.loads(con.execute("select json_serialize_sql(?)", [sql]).fetchone()[0])
    return None if tree.get("error") else tree


def _walk(node, tables: set[str], ctes: set[str]) -> None:
    if isinstance(node, dict):
        is_table = node.get("type") == "BASE_TABLE" and "table_name" in node
        if is_table and node.get("schema_name", "") not in _SYSTEM_SCHEMAS:
            tables.add(node["table_name"])
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            ctes.update(entry["key"] for entry in cte_map.get("map", []))
        for value in node.values():
            _walk(value, tables, ctes)
    elif isinstance(node, list):
        for value in node:
            _walk(value, tables, ctes)


def tables_read(sql: str) -> set[str]:
    """Names of the tables (or registered frames) ``sql`` reads; CTE names and system catalogs excluded.

    SELECTs are parsed by DuckDB; ``insert into t ... select`` and ``create table t as select``
    contribute the tables of their query part. Statements that read nothing (DDL, transaction
    control, ``delete``/``alter`` on the asset's own table) give an empty set.
    """
    tables: set[str] = set()
    for statement in duckdb.extract_statements(sql):
        text = statement.query
        prefix = _WRITE_PREFIX.match(text)
        if prefix:
            text = text[prefix.end():]
        elif not _QUERY_START.match(text):
            continue
        tree = _serialized_select(text)
        if tree is None:
            continue
        found: set[str] = set()
        ctes: set[str] = set()
        _walk(tree, found, ctes)
        tables |= found - ctes
    return tables


@dataclass(frozen=True)
class TableRead:
    """One statement's read of one table, by the asset(s) or check(s) of the running step."""

    reader: frozenset[str]  # asset keys ("a/b") and check keys ("asset:check") of the step
    table: str


@dataclass
class ReadRecorder:
    """Collects TableReads while active (see ``recording_reads``); thread-safe."""

    reads: list[TableRead] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, reader: frozenset[str], sql: str, registered: frozenset[str] = frozenset()) -> None:
        found = tables_read(sql) - registered
        with self._lock:
            self.reads.extend(TableRead(reader, table) for table in sorted(found))

    def by_reader(self) -> dict[frozenset[str], set[str]]:
        grouped: dict[frozenset[str], set[str]] = {}
        with self._lock:
            for read in self.reads:
                grouped.setdefault(read.reader, set()).add(read.table)
        return grouped


_active_recorders: list[ReadRecorder] = []


def active_recorders() -> list[ReadRecorder]:
    return list(_active_recorders)


@contextmanager
def recording_reads(recorder: ReadRecorder | None = None) -> Iterator[ReadRecorder]:
    """Record, in this process, every table read through a recording connection until exit."""
    recorder = recorder or ReadRecorder()
    _active_recorders.append(recorder)
    try:
        yield recorder
    finally:
        _active_recorders.remove(recorder)


class RecordingConnection:
    """A DuckDB connection that reports each statement's reads to the active recorders first.

    ``reader`` is called per statement and names the running step (``None``: outside a step,
    nothing recorded). Everything else is the wrapped connection's.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, reader: Callable[[], frozenset[str] | None]):
        self._con = con
        self._reader = reader
        self._registered: set[str] = set()  # in-memory frames (``_incoming``...), not warehouse tables

    def _note(self, sql) -> None:
        if not _active_recorders or not isinstance(sql, str):
            return
        reader = self._reader()
        if reader:
            for recorder in active_recorders():
                recorder.record(reader, sql, frozenset(self._registered))

    def register(self, view_name, python_object):
        self._registered.add(view_name)
        return self._con.register(view_name, python_object)

    def unregister(self, view_name):
        self._registered.discard(view_name)
        return self._con.unregister(view_name)

    def execute(self, query, parameters=None):
        self._note(query)
        return self._con.execute(query, parameters)

    def executemany(self, query, parameters=None):
        self._note(query)
        return self._con.executemany(query, parameters)

    def sql(self, query, *args, **kwargs):
        self._note(query)
        return self._con.sql(query, *args, **kwargs)

    query = sql

    def __getattr__(self, name):
        return getattr(self._con, name)
