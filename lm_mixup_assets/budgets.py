"""Failure budgets in Dagster terms: metadata for every budget, a ``dg.Failure`` for an exceeded one.

An asset that calls a judge or a generator writes its rows first (failed rows
keep their status: they are the evidence), then calls :func:`enforce_budgets`;
a failed asset stops the run, so nothing downstream reads a partial result.
The counting lives in ``lib/budgets.py``; docs/method.md, "Failure budgets".
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from lm_mixup_assets.lib.budgets import BudgetReport, describe

DEFAULT_MAX_FAILED_FRACTION = 0.05

__all__ = ["DEFAULT_MAX_FAILED_FRACTION", "budget_metadata", "enforce_budgets"]


def budget_metadata(prefix: str, report: BudgetReport) -> dict:
    """``<prefix>_failed_rows``, ``<prefix>_failed_fraction`` and ``<prefix>_max_failed_fraction``."""
    return {
        f"{prefix}_failed_rows": report.failed,
        f"{prefix}_failed_fraction": round(report.fraction, 4),
        f"{prefix}_max_failed_fraction": report.max_fraction,
    }


def enforce_budgets(context: dg.AssetExecutionContext, reports: Sequence[BudgetReport]) -> None:
    """Log every report; raise one ``dg.Failure`` naming each exceeded budget (counts, rates, three samples)."""
    for r in reports:
        if r.failed:
            (context.log.error if r.exceeded else context.log.warning)(r.summary())
    exceeded = [r for r in reports if r.exceeded]
    if not exceeded:
        return
    metadata: dict = {}
    for i, r in enumerate(exceeded):
        key = "" if len(exceeded) == 1 else f"{i}_"
        metadata.update(
            {
                f"{key}what": r.what,
                f"{key}failed": r.failed,
                f"{key}total": r.total,
                f"{key}failed_fraction": round(r.fraction, 4),
                f"{key}budget": r.max_fraction,
                f"{key}failed_by_status": dg.MetadataValue.json(r.by_status),
                f"{key}samples": dg.MetadataValue.json(list(r.samples)),
            }
        )
    raise dg.Failure(description=describe(reports), metadata=metadata)
