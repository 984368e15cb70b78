"""Metadata helpers shared by the stages: previews, schemas, row counts."""

from __future__ import annotations

import dagster as dg
import pandas as pd

_DTYPE_NAMES = {"int64": "BIGINT", "Int64": "BIGINT", "int32": "INTEGER", "float64": "DOUBLE", "bool": "BOOLEAN", "object": "VARCHAR"}


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


def column_schema(df: pd.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name=str(c), type=_DTYPE_NAMES.get(str(t), str(t))) for c, t in df.dtypes.items()]
    )


def table_metadata(df: pd.DataFrame, preview_columns: list[str] | None = None, n: int = 5) -> dict:
    return {
        "dagster/row_count": dg.MetadataValue.int(len(df)),
        "dagster/column_schema": column_schema(df),
        "preview": preview_md(df, n=n, columns=preview_columns),
    }
