"""Warehouse access, two backends: short connections, retried writes, partition-replacing writes.

* ``duckdb``: one DuckDB file. DuckDB allows one writing process per file, so every write
  opens a connection, does its work in one transaction and closes it, retrying while another
  process holds the lock: parallel steps queue for the file instead of failing (dagster issues
  #18746, #16248). The lock is a local file lock: one machine only.
* ``ducklake``: a DuckLake. DuckDB stays the engine; a catalog database (a SQLite file here,
  Postgres on a cluster) holds the metadata and Parquet files (a folder or ``s3://``) hold the
  data. Many processes and hosts write at once; a commit that conflicts with another's is
  retried whole (:func:`retry_on_conflict`). Every commit is a snapshot that stays queryable
  (``select ... from t at (version => n)``) until it is expired.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import duckdb
import pandas as pd

T = TypeVar("T")
BACKENDS = ("duckdb", "ducklake")
LAKE_NAME = "lake"  # the attached lake's catalog name: tables are lake.main.<table>
_LOCK_MARKERS = ("could not set lock", "conflicting lock", "database is locked", "lock on file")


def _is_lock_error(exc: BaseException) -> bool:
    return any(m in str(exc).lower() for m in _LOCK_MARKERS)


@dataclass(frozen=True)
class Lake:
    """A DuckLake: where its catalog and its data files live.

    ``catalog``: a ``postgres://`` / ``postgresql://`` URL (a libpq URI; keep the password out of
    it: libpq reads ``PGPASSWORD``), or a file path: ``.sqlite`` / ``.db`` a SQLite catalog (many
    local processes), anything else a DuckDB catalog file (one process at a time, like the
    ``duckdb`` backend). ``data_path``: a folder or ``s3://bucket/prefix/``. ``metadata_schema``:
    the Postgres schema of this lake's catalog tables (several lakes in one database).
    ``snapshot``: attach read-only at that snapshot (time travel).
    """

    catalog: str
    data_path: str
    metadata_schema: str = ""
    snapshot: int | None = None
    name: str = LAKE_NAME

    @property
    def catalog_kind(self) -> str:
        return catalog_kind(self.catalog)

    def attach_target(self) -> str:
        kind = self.catalog_kind
        if kind == "postgres":
            return f"ducklake:postgres:{self.catalog}"
        path = Path(self.catalog.removeprefix("sqlite:")).expanduser().resolve()
        return f"ducklake:sqlite:{path}" if kind == "sqlite" else f"ducklake:{path}"

    def data_location(self) -> str:
        if is_remote(self.data_path):
            return self.data_path.rstrip("/") + "/"
        return str(Path(self.data_path).expanduser().resolve()) + "/"

    def attach_sql(self, name: str | None = None) -> str:
        """The ``ATTACH`` statement (also what a user types in the ``duckdb`` CLI, after ``LOAD ducklake``)."""
        options = [f"DATA_PATH {_literal(self.data_location())}"]
        if self.metadata_schema:
            options.append(f"METADATA_SCHEMA {_literal(self.metadata_schema)}")
        if self.snapshot is not None:
            options.append(f"SNAPSHOT_VERSION {int(self.snapshot)}")
        return f"ATTACH {_literal(self.attach_target())} AS {name or self.name} ({', '.join(options)})"

    def extensions(self) -> list[str]:
        names = ["ducklake", {"postgres": "postgres_scanner", "sqlite": "sqlite_scanner"}.get(self.catalog_kind)]
        if is_remote(self.data_path):
            names.append("httpfs")
        return [n for n in names if n]


def catalog_kind(catalog: str) -> str:
    """``postgres``, ``sqlite`` or ``duckdb``: what kind of database a lake's catalog is."""
    lowered = catalog.strip().lower()
    if lowered.startswith(("postgres://", "postgresql://")):
        return "postgres"
    if lowered.startswith("sqlite:") or lowered.endswith((".sqlite", ".sqlite3", ".db")):
        return "sqlite"
    if "://" in lowered:
        raise ValueError(f"lake catalog {redact(catalog)!r}: use a postgres:// URL or a local file path")
    return "duckdb"


def is_remote(path: str) -> bool:
    return "://" in path


def redact(url: str) -> str:
    """``url`` with any password replaced, for logs and metadata."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --- Extensions, loaded from their Python packages (no download at run time) ------------------------

EXTENSION_PACKAGES = {
    name: f"duckdb_extension_{name}" for name in ("ducklake", "sqlite_scanner", "postgres_scanner", "httpfs")
}


def extension_path(name: str) -> Path:
    """The ``.duckdb_extension`` file of ``name`` in its installed ``duckdb-extension-*`` package."""
    package = EXTENSION_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    wheel = f"{package.replace('_', '-')}=={duckdb.__version__}"
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the DuckDB extension {name!r} is not installed: pip install {wheel}")
    path = Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        found = sorted(p.parent.name for p in Path(spec.origin).parent.glob("extensions/*/*.duckdb_extension"))
        raise RuntimeError(
            f"{package} has no build for duckdb {duckdb.__version__} (it has {found}): pip install {wheel}"
        )
    return path


def load_extensions(con: duckdb.DuckDBPyConnection, names: list[str]) -> None:
    for name in names:
        con.execute(f"load {_literal(str(extension_path(name)))}")


def _s3_secret_sql() -> str | None:
    """A DuckDB S3 secret from the standard AWS variables (none set: DuckDB's own defaults)."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        return None
    parts = [f"KEY_ID {_literal(key)}", f"SECRET {_literal(secret)}"]
    if os.environ.get("AWS_SESSION_TOKEN"):
        parts.append(f"SESSION_TOKEN {_literal(os.environ['AWS_SESSION_TOKEN'])}")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        parts.append(f"REGION {_literal(region)}")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:  # an S3-compatible store (MinIO, Ceph, R2...): host[:port], path-style URLs
        parts += [
            f"ENDPOINT {_literal(re.sub(r'^https?://', '', endpoint).rstrip('/'))}",
            "URL_STYLE 'path'",
            f"USE_SSL {str(not endpoint.startswith('http://')).lower()}",
        ]
    return f"CREATE OR REPLACE SECRET lm_mixup_s3 (TYPE s3, {', '.join(parts)})"


def _prepare_sqlite_catalog(path: Path) -> None:
    """WAL mode on a new SQLite catalog: readers never block the writer (about twice the commit rate of
    the default rollback journal with three writers, measured)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > 0:
        return
    with sqlite3.connect(path) as con:
        con.execute("pragma journal_mode=wal")


def open_lake(lake: Lake) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB with ``lake`` attached and in use (extensions loaded from their packages)."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    try:
        load_extensions(con, lake.extensions())
        if is_remote(lake.data_path) and (secret := _s3_secret_sql()):
            con.execute(secret)
        if lake.catalog_kind == "sqlite":
            _prepare_sqlite_catalog(Path(lake.catalog.removeprefix("sqlite:")).expanduser().resolve())
        elif lake.catalog_kind == "duckdb":
            Path(lake.catalog).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        if not is_remote(lake.data_path):
            Path(lake.data_location()).mkdir(parents=True, exist_ok=True)
        con.execute(lake.attach_sql())
        con.execute(f"use {lake.name}")
    except BaseException as exc:
        con.close()
        if isinstance(exc, duckdb.Error):
            raise type(exc)(
                f"attaching the lake (catalog {redact(lake.catalog)}, data {lake.data_path}): {exc}"
            ) from exc
        raise
    return con


# One attached lake per process and lake (attaching costs ~0.2-1 s); each connect() is a cursor on it.
_MAX_OPEN_LAKES = 4
_open_lakes: OrderedDict[tuple[int, Lake], duckdb.DuckDBPyConnection] = OrderedDict()
_open_lakes_lock = threading.Lock()


def _lake_cursor(lake: Lake, fresh: bool = False) -> duckdb.DuckDBPyConnection:
    """A new connection (cursor) to this process's attached ``lake``, attaching it first if needed."""
    key = (os.getpid(), lake)  # a forked child never reuses its parent's catalog connections
    with _open_lakes_lock:
        con = _open_lakes.pop(key, None)
        if con is not None and fresh:
            con.close()
            con = None
        if con is None:
            con = open_lake(lake)
        _open_lakes[key] = con
        while len(_open_lakes) > _MAX_OPEN_LAKES:
            _open_lakes.popitem(last=False)[1].close()
        cursor = con.cursor()
    cursor.execute(f"use {lake.name}")
    return cursor


def close_lakes() -> None:
    """Detach every lake this process holds open (tests, benchmarks)."""
    with _open_lakes_lock:
        while _open_lakes:
            _open_lakes.popitem()[1].close()


def drop_postgres_schema(dsn: str, schema: str) -> None:
    """Drop a lake's catalog schema from a Postgres database (its data files stay where they are)."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    try:
        load_extensions(con, ["postgres_scanner"])
        con.execute(f"attach {_literal(dsn)} as pg (type postgres)")
        con.execute("call postgres_execute('pg', ?)", [f'drop schema if exists "{schema}" cascade'])
    finally:
        con.close()


@contextmanager
def connect(
    where: str | Path | Lake, read_only: bool = False, lock_timeout_s: float = 300.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short connection to a DuckDB file (waiting, with jittered backoff, while another process
    holds its lock) or to a lake (a cursor on this process's attached lake; ``read_only`` is
    ignored there: use ``Lake(snapshot=...)`` for a read-only view)."""
    if isinstance(where, Lake):
        try:
            con = _lake_cursor(where)
        except duckdb.Error:  # e.g. the catalog server restarted: attach again, once
            con = _lake_cursor(where, fresh=True)
        try:
            yield con
        finally:
            con.close()  # an open transaction is rolled back
        return
    path = Path(where)
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


# --- Transactions: retried on conflict, snapshots on a lake -----------------------------------------

# A lake commit that lost a race (another commit changed the same table), a SQLite catalog busy with
# another writer, a DuckDB write-write conflict between two connections of one process.
_CONFLICT_MARKERS = (
    "transaction conflict",
    "database is locked",
    "write-write conflict",
    "conflict on tuple",
    "could not serialize",
    "deadlock detected",
    "failed to query most recent snapshot",
)


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.Error) and any(m in str(exc).lower() for m in _CONFLICT_MARKERS)


@dataclass
class RetryCounter:
    """How many transactions were retried after a conflict, in this process (benchmarks, tests)."""

    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self) -> None:
        with self._lock:
            self.retries += 1


conflicts_retried = RetryCounter()


def retry_on_conflict(attempt: Callable[[], T], timeout_s: float = 300.0) -> T:
    """``attempt()``, run again (jittered backoff) while it fails on a conflict, for up to ``timeout_s``.

    ``attempt`` must be a whole transaction (it opens its connection and commits), so a retry
    starts from the current state of the warehouse."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        try:
            return attempt()
        except duckdb.Error as exc:
            if not is_conflict(exc) or time.monotonic() > deadline:
                raise
        conflicts_retried.add()
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)


def is_lake(con) -> bool:
    """Whether ``con``'s current database is a DuckLake."""
    row = con.execute("select type from duckdb_databases() where database_name = current_database()").fetchone()
    return bool(row) and row[0] == "ducklake"


def current_snapshot(con) -> int | None:
    """The lake snapshot ``con`` reads now (inside a transaction: the one it is pinned to); None off a lake."""
    if not is_lake(con):
        return None
    name = con.execute("select current_database()").fetchone()[0]
    return int(con.execute(f"select id from ducklake_current_snapshot({_literal(name)})").fetchone()[0])


def last_committed_snapshot(con) -> int | None:
    """The snapshot ``con``'s last commit created (None off a lake, or when it changed nothing)."""
    name = con.execute("select current_database()").fetchone()[0]
    row = con.execute(f"select id from ducklake_last_committed_snapshot({_literal(name)})").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def maintain(con, expire_older_than_days: float | None = None) -> dict[str, int]:
    """Housekeeping. A lake: move inlined rows (small writes such as cache commits, kept in the
    catalog) into Parquet, merge adjacent small files, optionally expire snapshots older than
    ``expire_older_than_days`` (their rows can no longer be read ``at (version => n)``), and delete
    the files no snapshot needs any more. A DuckDB file: a checkpoint. Returns what was done."""
    if not is_lake(con):
        con.execute("checkpoint")
        return {"checkpoints": 1}
    name = _literal(con.execute("select current_database()").fetchone()[0])
    done = {
        "inlined_rows_flushed": int(
            sum(r[-1] or 0 for r in con.execute(f"call ducklake_flush_inlined_data({name})").fetchall())
        ),
        "files_merged": int(
            sum(r[2] or 0 for r in con.execute(f"call ducklake_merge_adjacent_files({name})").fetchall())
        ),
        "snapshots_expired": 0,
    }
    if expire_older_than_days is not None:
        cutoff = pd.Timestamp.now("UTC") - pd.Timedelta(days=float(expire_older_than_days))
        done["snapshots_expired"] = len(
            con.execute(
                f"call ducklake_expire_snapshots({name}, older_than => ?::timestamptz)", [cutoff.to_pydatetime()]
            ).fetchall()
        )
    done["files_deleted"] = len(con.execute(f"call ducklake_cleanup_old_files({name}, cleanup_all => true)").fetchall())
    return done


def rollback_quietly(con) -> None:
    try:
        con.execute("rollback")
    except duckdb.Error:  # no transaction left (already rolled back)
        pass


def write_transaction(
    connect: Callable[[], object],
    work: Callable[[duckdb.DuckDBPyConnection], T],
    timeout_s: float = 300.0,
    commit_info: dict | None = None,
) -> tuple[T, int | None]:
    """Run ``work(con)`` in one transaction, retried whole on conflict; returns its result and, on a
    lake, the snapshot the commit created. ``commit_info`` (author, message, extra JSON) is stored
    with a lake snapshot (``select * from lake.snapshots()``)."""

    def attempt() -> tuple[T, int | None]:
        with connect() as con:
            lake = is_lake(con)
            con.execute("begin transaction")
            try:
                if lake and commit_info:
                    name = con.execute("select current_database()").fetchone()[0]
                    con.execute(
                        f"call {name}.set_commit_message(?, ?, extra_info => ?)",
                        [
                            commit_info.get("author", "lm-mixup"),
                            commit_info.get("message", ""),
                            json.dumps(commit_info.get("extra", {}), sort_keys=True, default=str),
                        ],
                    )
                out = work(con)
                con.execute("commit")
            except BaseException:
                rollback_quietly(con)
                raise
            return out, (last_committed_snapshot(con) if lake else None)

    return retry_on_conflict(attempt, timeout_s)


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(
        con.execute(
            "select count(*) from information_schema.tables where table_catalog = current_database() "
            "and table_schema = 'main' and table_name = ?",
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
            _create_table_for(con, table, df, column_types or {})
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


def _create_table_for(con, table: str, df: pd.DataFrame, column_types: dict[str, str]) -> None:
    """Create ``table`` with the registered frame ``_incoming``'s columns, typed up front (a lake
    cannot change a column's type later, only widen it)."""
    # An all-empty / all-None column has no type of its own; VARCHAR, so later rows fit.
    untyped = {c for c in df.columns if df[c].dtype == object and df[c].isna().all()}
    columns = []
    for name, kind, *_ in con.execute("describe select * from _incoming").fetchall():
        wanted = column_types.get(name) or ("VARCHAR" if name in untyped or kind.strip('"') == "NULL" else kind)
        columns.append(f'"{name}" {wanted}')
    con.execute(f'create table "{table}" ({", ".join(columns)})')


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
            text = text[prefix.end() :]
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
