"""Metadata helpers shared by the stages: previews, schemas, row counts, code and data versions."""

from __future__ import annotations

import warnings

import dagster as dg
import pandas as pd

from lm_mixup_assets.lib.columns import describe
from lm_mixup_assets.lib.versions import table_version

# Partitioned asset checks (``partitions_def`` on ``@dg.asset_check``) are a
# "preview" in Dagster 1.13; every stage imports this module before defining its
# checks, and we rely on the feature knowingly (docs/method.md, "Checks").
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)

_DTYPE_NAMES = {
    "int64": "BIGINT",
    "Int64": "BIGINT",
    "int32": "INTEGER",
    "float64": "DOUBLE",
    "bool": "BOOLEAN",
    "object": "VARCHAR",
}


def preview_md(df: pd.DataFrame, n: int = 5, max_chars: int = 80, columns: list[str] | None = None) -> dg.MetadataValue:
    """A few rows as a Markdown table, long text cut so the table stays readable."""
    view = df[columns] if columns else df
    view = view.head(n).copy()
    for col in view.columns:
        if view[col].dtype == object:
            view[col] = view[col].map(lambda v: _short(v, max_chars))
    if view.empty:
        return dg.MetadataValue.md("_(no rows)_")
    return dg.MetadataValue.md(view.to_markdown(index=False))


def _short(value, max_chars: int) -> str:
    text = str(value).replace("\n", " ⏎ ").replace("|", "\\|")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def column_schema(df: pd.DataFrame, table: str | None = None) -> dg.TableSchema:
    """The frame's columns with their types and what each means (``lib/columns.py``; ``table`` picks its own
    meaning of a shared name)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=str(c), type=_DTYPE_NAMES.get(str(t), str(t)), description=describe(str(c), table) or None
            )
            for c, t in df.dtypes.items()
        ]
    )


def warehouse_column_schema(con, table: str) -> dg.TableSchema:
    """:func:`column_schema` of a warehouse table, read from DuckDB's catalogue (for steps that hold no frame)."""
    rows = con.execute(
        "select column_name, data_type from information_schema.columns where table_schema = 'main' "
        "and table_name = ? order by ordinal_position",
        [table],
    ).fetchall()
    return dg.TableSchema(
        columns=[dg.TableColumn(name=name, type=kind, description=describe(name, table) or None) for name, kind in rows]
    )


def table_metadata(
    df: pd.DataFrame, preview_columns: list[str] | None = None, n: int = 5, table: str | None = None
) -> dict:
    return {
        "dagster/row_count": dg.MetadataValue.int(len(df)),
        "dagster/column_schema": column_schema(df, table),
        "preview": preview_md(df, n=n, columns=preview_columns),
    }


def rows_of_checked_partition(
    context: dg.AssetCheckExecutionContext, df: pd.DataFrame, column: str = "source"
) -> pd.DataFrame:
    """The rows of ``df`` in the one partition this check evaluates (its ``column`` equals the partition key).

    Checks on partitioned assets are partitioned themselves, so Dagster records
    each result against its partition: a green run of one source (or arm) never
    hides a red one of another, and a source being rebuilt by a parallel run
    does not fail this one (docs/method.md, "Checks").
    """
    if not context.has_partition_key:
        raise dg.Failure(
            f"check {context.check_specs[0].key.to_user_string()} needs a partition: it checks one "
            f"{column} at a time (define it with the asset's partitions_def)"
        )
    if column not in df.columns:
        raise ValueError(
            f"check query returned no {column!r} column (got {list(df.columns)}); cannot scope it to a partition"
        )
    return df[df[column] == context.partition_key]


# --------------------------------------------------------------------------- versions


def code_version(version: str) -> str:
    """The ``code_version`` of a stage's assets (each stage module holds one ``CODE_VERSION``).

    Rule: bump the module's ``CODE_VERSION`` ("1" -> "2") in the change that
    alters what its assets write for the same inputs (a new column, another
    formula, a fixed bug), not for refactors, logging or metadata. Dagster then
    marks the stage's assets, and so everything downstream, unsynced in the UI
    until they are re-materialised (docs/architecture.md, "Staleness").
    """
    if not version or not str(version).strip():
        raise ValueError("a code_version must be a non-empty string, e.g. '1'")
    return str(version)


def table_data_version(
    warehouse,
    table: str,
    partition_column: str | None = None,
    partition_value: str | None = None,
    ignore: frozenset[str] | set[str] = frozenset(),
) -> dg.DataVersion:
    """The data version of the rows an asset wrote to ``table`` (its partition, if given): see ``lib/versions.py``."""
    with warehouse.connect() as con:
        return dg.DataVersion(table_version(con, table, partition_column, partition_value, ignore))


def table_data_version_in(
    con, table: str, partition_column: str | None = None, partition_value: str | None = None
) -> dg.DataVersion:
    """:func:`table_data_version` on a connection the caller already holds (e.g. inside its write)."""
    return dg.DataVersion(table_version(con, table, partition_column, partition_value))
