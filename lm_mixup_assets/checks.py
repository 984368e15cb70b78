"""Partition-scoped asset checks: one way to query a partition's offending rows and report them.

Not a stage module: every stage's checks use it. A check's SQL returns the
offending rows of every partition with a partition column (``source`` or
``arm``); only the checked partition's rows count (see
:func:`~lm_mixup_assets.metadata.rows_of_checked_partition`).
"""

from __future__ import annotations

import dagster as dg
import pandas as pd

from lm_mixup_assets.metadata import preview_md, rows_of_checked_partition


def partition_rows(context: dg.AssetCheckExecutionContext, warehouse, sql: str, column: str = "source") -> pd.DataFrame:
    """The rows of ``sql`` in the one partition this check evaluates (its ``column`` equals the partition key)."""
    return rows_of_checked_partition(context, warehouse.query(sql), column)


def offenders_result(bad: pd.DataFrame, ok: str, failed: str, metadata_key: str = "offenders") -> dg.AssetCheckResult:
    """Passed when ``bad`` is empty (described as ``ok``); else ``failed`` (its ``{n}`` = the number of
    offending rows) and a preview of them."""
    return dg.AssetCheckResult(
        passed=bad.empty,
        description=ok if bad.empty else failed.replace("{n}", str(len(bad))),
        metadata={metadata_key: preview_md(bad, n=10)} if len(bad) else {},
    )


def no_offenders(
    context: dg.AssetCheckExecutionContext,
    warehouse,
    sql: str,
    ok: str,
    failed: str,
    column: str = "source",
    metadata_key: str = "offenders",
) -> dg.AssetCheckResult:
    """The usual check: ``sql`` lists offending rows; this partition passes when it has none."""
    return offenders_result(partition_rows(context, warehouse, sql, column), ok, failed, metadata_key)
