"""Data versions: short content hashes that tell Dagster whether an asset's output changed.

Dagster marks a downstream asset stale ("unsynced" in the UI) when the data
version of an upstream differs from the one the downstream was built from, or
when an asset's ``code_version`` changed (docs/architecture.md, "Staleness").

* A table partition's version hashes its rows in DuckDB, order-independent
  (a sum of row hashes plus the row count and the column list), so rebuilding
  the same rows gives the same version and any changed, added or lost row
  gives a new one. Bookkeeping columns (when a row was written, whether it
  came from a cache, the tokens a call cost) are left out: a re-run that
  answers from the cache writes the same content.
* A checkpoint's or model folder's version is its fingerprint (size and mtime
  of its weight and config files, ``generation.model_fingerprint``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb

from lm_mixup_assets.lib.generation import model_fingerprint
from lm_mixup_assets.lib.warehouse import table_exists

# Columns that record how or when a row was made, not what it says.
BOOKKEEPING_COLUMNS = frozenset({"from_cache", "prompt_tokens", "completion_tokens", "wall_seconds", "seconds"})
_TIME_TYPES = ("TIMESTAMP", "DATE", "TIME")
VERSION_CHARS = 16


def content_columns(
    con: duckdb.DuckDBPyConnection, table: str, ignore: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    """``table``'s columns that carry content: not time-typed, not bookkeeping, not in ``ignore``."""
    rows = con.execute(
        "select column_name, data_type from information_schema.columns "
        "where table_catalog = current_database() and table_schema = 'main' and table_name = ? "
        "order by ordinal_position",
        [table],
    ).fetchall()
    skip = BOOKKEEPING_COLUMNS | set(ignore)
    return [name for name, kind in rows if name not in skip and not str(kind).upper().startswith(_TIME_TYPES)]


def table_version(
    con: duckdb.DuckDBPyConnection,
    table: str,
    partition_column: str | None = None,
    partition_value: str | None = None,
    ignore: frozenset[str] | set[str] = frozenset(),
) -> str:
    """A hash of the rows of ``table`` (where ``partition_column = partition_value``, if given).

    Independent of row order. An empty partition has a version too (it is a
    state a downstream may have been built from); a missing table is an error.
    """
    if not table_exists(con, table):
        raise LookupError(f"table {table!r} does not exist: cannot compute its data version")
    columns = content_columns(con, table, ignore)
    if partition_column is not None and partition_column not in columns:
        raise ValueError(
            f"table {table!r} has no column {partition_column!r} to select partition {partition_value!r} by"
        )
    if not columns:
        raise ValueError(f"table {table!r} has no content columns to hash (all are bookkeeping or time columns)")
    selected = ", ".join(f'"{c}"' for c in columns)
    where = f' where "{partition_column}" = ?' if partition_column is not None else ""
    n, total = con.execute(
        # hugeint: a sum of 2^64-range hashes does not overflow for any table this platform holds.
        f'select count(*), coalesce(sum(hash(r)::hugeint), 0)::varchar from (select {selected} from "{table}"{where}) r',
        [partition_value] if partition_column is not None else [],
    ).fetchone()
    return _short_hash([table, columns, n, total])


def checkpoint_version(path: str | Path) -> str:
    """A model folder's version: the fingerprint of its weight and config files (a new save, a new version)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(path)!r} does not exist: cannot compute its data version")
    return _short_hash([model_fingerprint(str(folder))])


def _short_hash(parts: list) -> str:
    return hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()[:VERSION_CHARS]
