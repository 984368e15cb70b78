"""What flowed where: the per-source funnel of a warehouse, from input rows to training-set rows.

Plain functions over a DuckDB connection (no Dagster): ``lm-mixup demo`` prints them at the end
of a run and ``benchmark_report`` shows the same funnel as a plot. Every table is optional: a
stage that has not run yet counts 0 rows, so a partial run still reads as a funnel that stops
where the data stopped.

Stages, per source (``FUNNEL_COLUMNS``): input rows -> rejected / exact duplicates -> rated ok ->
high / low -> clusters of low rows -> distilled (clusters the distiller answered) -> distilled
ok (answers that parsed into a pair) -> accepted (re-rated at or above the threshold:
``distilled_high``) -> distinct original and distilled rows the training sets use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import duckdb
import pandas as pd

from .warehouse import table_exists

FUNNEL_COLUMNS = [
    "input_rows",
    "rejected",
    "duplicates",
    "rated_ok",
    "high",
    "low",
    "clusters",
    "distilled",
    "distilled_ok",
    "accepted",
    "original_in_training_sets",
    "distilled_in_training_sets",
]
# Plain words for each column (the CLI's header and the plot's labels).
FUNNEL_LABELS = {
    "input_rows": "input",
    "rejected": "rejected",
    "duplicates": "duplicates",
    "rated_ok": "rated ok",
    "high": "high",
    "low": "low",
    "clusters": "clusters",
    "distilled": "distilled",
    "distilled_ok": "parsed",
    "accepted": "accepted",
    "original_in_training_sets": "orig. in sets",
    "distilled_in_training_sets": "dist. in sets",
}


def _counts(con: duckdb.DuckDBPyConnection, table: str, sql: str) -> pd.DataFrame:
    return con.execute(sql).df() if table_exists(con, table) else pd.DataFrame(columns=["source"])


def source_funnel(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per source (and a ``total`` row): how many rows reached each stage (``FUNNEL_COLUMNS``)."""
    parts = [
        _counts(
            con,
            "pool_summary",
            """select source, input_rows, rejected, duplicates, rated_ok, high, low
                                        from pool_summary""",
        ),
        _counts(
            con, "cluster_inputs", "select source, count(distinct cluster_id) clusters from cluster_inputs group by 1"
        ),
        _counts(
            con,
            "distilled_pool",
            """select source, count(*) filter (where status <> 'skipped') distilled,
                                                 count(*) filter (where status = 'ok') distilled_ok
                                          from distilled_pool group by 1""",
        ),
        _counts(con, "distilled_high", "select source, count(*) accepted from distilled_high group by 1"),
        _counts(
            con,
            "training_sets",
            """select source,
                                                count(distinct sample_id) filter (where origin = 'original') original_in_training_sets,
                                                count(distinct sample_id) filter (where origin = 'distilled') distilled_in_training_sets
                                         from training_sets group by 1""",
        ),
    ]
    funnel = pd.DataFrame({"source": pd.Series(sorted({s for p in parts for s in p["source"].dropna()}), dtype=object)})
    for part in parts:
        funnel = funnel.merge(part.astype({"source": object}), on="source", how="left")
    funnel = funnel.reindex(columns=["source", *FUNNEL_COLUMNS]).fillna(0)
    funnel[FUNNEL_COLUMNS] = funnel[FUNNEL_COLUMNS].astype("int64")
    if len(funnel):
        total = funnel[FUNNEL_COLUMNS].sum().to_frame().T.assign(source="total")
        funnel = pd.concat([funnel, total[["source", *FUNNEL_COLUMNS]]], ignore_index=True)
    return funnel


def arm_origins(con: duckdb.DuckDBPyConnection, shortfall: bool = True) -> pd.DataFrame:
    """Per training-set arm: its rows, how many are distilled and (``shortfall``) the rows its recipe wanted
    but its pools did not have (``training_set_composition``)."""
    columns = ["arm", "rows", "original", "distilled", *(["shortfall"] if shortfall else [])]
    if not table_exists(con, "training_sets"):
        return pd.DataFrame(columns=columns)
    arms = con.execute("""select arm, count(*) "rows", count(*) filter (where origin = 'original') original,
                                 count(*) filter (where origin = 'distilled') distilled
                          from training_sets group by 1 order by 1""").df()
    if not shortfall:
        return arms[columns]
    if table_exists(con, "training_set_composition"):
        short = con.execute(
            "select arm, sum(shortfall)::bigint shortfall from training_set_composition group by 1"
        ).df()
        arms = arms.merge(short, on="arm", how="left")
    return arms.reindex(columns=columns).fillna(0)


def length_correlation(overall: Sequence[float], completions: Sequence[str]) -> dict[str, float]:
    """How much a judge's Overall follows answer length: Spearman and Pearson correlation of Overall with
    log(characters of the completion), over the rows given (``n``); NaN when fewer than 3 rows or no spread."""
    frame = pd.DataFrame(
        {
            "overall": pd.to_numeric(pd.Series(list(overall)), errors="coerce"),
            "log_len": [math.log(max(1, len(str(c or "")))) for c in completions],
        }
    ).dropna()
    if len(frame) < 3 or frame["overall"].nunique() < 2 or frame["log_len"].nunique() < 2:
        return {"spearman": float("nan"), "pearson": float("nan"), "n": len(frame)}
    return {
        "spearman": float(frame["overall"].corr(frame["log_len"], method="spearman")),
        "pearson": float(frame["overall"].corr(frame["log_len"], method="pearson")),
        "n": len(frame),
    }


def pool_length_correlation(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """:func:`length_correlation` over every rated-ok row of ``rated_pool`` (all sources)."""
    if not table_exists(con, "rated_pool"):
        return length_correlation([], [])
    rows = con.execute("select overall, completion from rated_pool where status = 'ok' and overall is not null").df()
    return length_correlation(rows["overall"].tolist(), rows["completion"].tolist())


def funnel_text(funnel: pd.DataFrame) -> str:
    """The funnel as a fixed-width table with the plain column names."""
    if funnel.empty:
        return "(no pool rows yet)"
    return funnel.rename(columns=FUNNEL_LABELS).to_string(index=False)


def report_intervals(con: duckdb.DuckDBPyConnection, baselines: Sequence[str] = ("base", "full_low")) -> pd.DataFrame:
    """The report as a person reads it: per model and task the headline score with its 95% interval, and per
    baseline the paired difference with its interval and whether it lies beyond it (``differs``). Empty before
    any model is scored; scores stored without intervals (older runs) show the score alone."""
    columns = ["arm", "task", "metric", "score", "ci", *[f"vs {b}" for b in baselines]]
    tables = [t for t in ("base_model_scores", "benchmark_scores") if table_exists(con, t)]
    if not tables:
        return pd.DataFrame(columns=columns)
    scores = con.execute(" union all by name ".join(f"select * from {t}" for t in tables)).df()
    if "headline" not in scores.columns or scores["headline"].isna().any():
        return pd.DataFrame(columns=columns)
    primary = scores[scores["headline"].astype(bool)]
    diffs = (
        {(r.arm, r.baseline, r.task): r for r in con.execute("select * from benchmark_comparisons").df().itertuples()}
        if table_exists(con, "benchmark_comparisons")
        else {}
    )
    rows = []
    for r in sorted(primary.itertuples(), key=lambda r: (r.task, r.arm != "base", r.arm)):
        row = {
            "arm": r.arm,
            "task": r.task,
            "metric": r.metric,
            "score": f"{r.value:.3f}",
            "ci": f"[{r.ci_low:.3f}, {r.ci_high:.3f}]" if pd.notna(r.ci_low) else "",
        }
        for b in baselines:
            d = diffs.get((r.arm, b, r.task))
            row[f"vs {b}"] = (
                ""
                if d is None
                else f"{d.mean_diff:+.3f} [{d.diff_low:+.3f}, {d.diff_high:+.3f}] "
                + ("differs" if d.differs else "within")
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)
