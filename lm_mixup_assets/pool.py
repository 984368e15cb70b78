"""Stage 1, the pool: ingest each source, rate every row with the judge, summarise.

``raw_pool[source]`` and ``rejected_rows[source]`` come from one ingest step
(with ``precomputed_scores``, the ratings a source brings along, if any);
``rated_pool[source]`` adds the judge's four scores, or records the
precomputed ones as a ``precomputed`` judge; the high/low split is SQL
(``dbt_like_sql/``); ``pool_summary`` shows all sources side by side.
"""

import time

import dagster as dg
import pandas as pd

from lm_mixup_assets.budgets import enforce_budgets
from lm_mixup_assets.checks import no_offenders
from lm_mixup_assets.config import launchpad_config
from lm_mixup_assets.lib import warehouse as wh
from lm_mixup_assets.lib.ingest import PRECOMPUTED_TYPES, SourceError, ingest_source
from lm_mixup_assets.lib.manifest import ManifestError, load_manifest
from lm_mixup_assets.lib.plots import histogram_grid
from lm_mixup_assets.lib.settings.pool import IngestSettings, RatedPoolSettings
from lm_mixup_assets.lib.summary import length_correlation
from lm_mixup_assets.metadata import (
    code_version,
    column_schema,
    preview_md,
    table_data_version,
    table_data_version_in,
    table_metadata,
)
from lm_mixup_assets.partitions import source_partitions
from lm_mixup_assets.rating import precomputed_frame, rate_frame
from resources import JudgeResource, WarehouseResource

GROUP = "pool"
# Bump when this stage writes different data for the same inputs (rule: metadata.code_version).
CODE_VERSION = code_version("1")
INGEST_LOG = "ingest_log"  # one row per source: input rows and where they went
PRECOMPUTED = "precomputed_scores"  # ratings a manifest source brings along (its `precomputed:` entry)
# The rejected rows of a source's last *failed* ingest (over max_rejected_fraction): evidence for the
# user, outside the accounting; cleared by the next successful ingest of that source.
FAILED_INGEST_REJECTIONS = "failed_ingest_rejections"
FAILURE_SAMPLE_ROWS = 20  # rejected rows shown in a failed ingest's message metadata

IngestConfig = launchpad_config(IngestSettings)


@dg.multi_asset(
    name="ingest_pool_source",
    partitions_def=source_partitions,
    group_name=GROUP,
    # Either asset may be selected alone (`dg launch --assets raw_pool,rated_pool`); the ingest still
    # writes all of the source's tables in one transaction, so they never disagree.
    can_subset=True,
    specs=[
        dg.AssetSpec(
            "raw_pool",
            description="One row per distinct (prompt, completion) of a source, with a stable sample_id "
            "(hash of source + normalised content) and how many exact duplicates were folded into it.",
            kinds={"duckdb", "pandas"},
            group_name=GROUP,
            code_version=CODE_VERSION,
        ),
        dg.AssetSpec(
            "rejected_rows",
            description="Every input row that could not be ingested: source, file, position, reason, raw text (truncated).",
            kinds={"duckdb", "pandas"},
            group_name=GROUP,
            code_version=CODE_VERSION,
        ),
    ],
)
def ingest_pool_source(context: dg.AssetExecutionContext, config: IngestConfig, warehouse: WarehouseResource):
    config = config.resolve(context)
    source = context.partition_key
    try:
        spec = load_manifest(config.manifest).source(source)
    except ManifestError as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(f"ingesting source {source!r} from {spec.origin}")
    started = time.monotonic()
    try:
        result = ingest_source(spec, max_row_chars=config.max_row_chars)
    except SourceError as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(
        f"{source}: {result.input_rows} input rows -> {len(result.rows)} ingested, "
        f"{len(result.rejected)} rejected, {result.duplicates} exact duplicates folded "
        f"({time.monotonic() - started:.1f}s)"
    )
    log_row = pd.DataFrame(
        [
            {
                "source": source,
                "origin": spec.origin,
                "input_rows": result.input_rows,
                "ingested": len(result.rows),
                "rejected": len(result.rejected),
                "duplicates": result.duplicates,
                "ingested_at": pd.Timestamp.now("UTC").tz_localize(None),
            }
        ]
    )
    reasons = result.rejected["reason"].str.replace(r"\d+", "N", regex=True).value_counts().head(10)
    reasons_md = dg.MetadataValue.md(reasons.to_frame("rows").to_markdown() if len(reasons) else "_(none)_")
    if result.input_rows == 0 or result.rejected_fraction > config.max_rejected_fraction:
        _fail_ingest(context, warehouse, spec, result, config, reasons, reasons_md)

    def write_ingest(con) -> None:
        # One source's ingest tables change in one transaction: a reader (or a crash) never sees half an
        # ingest, and ingest_log always describes exactly the rows in raw_pool and rejected_rows.
        for table, frame in (("raw_pool", result.rows), ("rejected_rows", result.rejected)):
            _add_missing_columns(con, table, frame)  # e.g. `file`, added after a warehouse was first made
        wh.replace_partition(con, "raw_pool", result.rows, "source", source, in_transaction=True)
        wh.replace_partition(con, "rejected_rows", result.rejected, "source", source, in_transaction=True)
        wh.replace_partition(con, INGEST_LOG, log_row, "source", source, in_transaction=True)
        # Always replaced, so dropping `precomputed:` from the manifest sends the source back to the judge.
        wh.replace_partition(
            con, PRECOMPUTED, result.precomputed, "source", source, in_transaction=True, column_types=PRECOMPUTED_TYPES
        )
        if wh.table_exists(con, FAILED_INGEST_REJECTIONS):
            con.execute(f"delete from {FAILED_INGEST_REJECTIONS} where source = ?", [source])

    warehouse.write(write_ingest, tables=["raw_pool", "rejected_rows"])
    with warehouse.connect() as con:
        versions = {t: table_data_version_in(con, t, "source", source) for t in ("raw_pool", "rejected_rows")}
    selected = context.op_execution_context.selected_output_names
    if selected != {"raw_pool", "rejected_rows"}:
        context.log.info(f"{source}: only {sorted(selected)} selected; all ingest tables were written together")
    if "rejected_rows" in selected:
        yield dg.MaterializeResult(
            asset_key="rejected_rows",
            data_version=versions["rejected_rows"],
            metadata={
                **table_metadata(
                    result.rejected, ["file", "position", "locator", "reason", "raw_text"], table="rejected_rows"
                ),
                "rejected_fraction": dg.MetadataValue.float(round(result.rejected_fraction, 4)),
                "reasons": reasons_md,
            },
        )
    if "raw_pool" in selected:
        yield dg.MaterializeResult(
            asset_key="raw_pool",
            data_version=versions["raw_pool"],
            metadata={
                **table_metadata(result.rows, ["sample_id", "locator", "prompt", "completion"], table="raw_pool"),
                "input_rows": result.input_rows,
                "duplicates_folded": result.duplicates,
                "rejected": len(result.rejected),
                "input_formats": dg.MetadataValue.json(result.formats),
                "input_files": result.rows["file"].nunique() if len(result.rows) else 0,
                "origin": spec.origin,
                **(
                    {
                        "precomputed_scores": len(result.precomputed),
                        "precomputed_judge": spec.precomputed.judge_model,
                        "precomputed_duplicate_conflicts": result.precomputed_conflicts,
                    }
                    if spec.precomputed
                    else {}
                ),
            },
        )


def _fail_ingest(context, warehouse: WarehouseResource, spec, result, config: IngestSettings, reasons, reasons_md):
    """Fail without touching raw_pool, rejected_rows, ingest_log or precomputed_scores (their previous state
    stays whole); the attempt's rejected rows go to FAILED_INGEST_REJECTIONS and the failure's metadata."""
    source = spec.name
    if result.input_rows == 0:
        raise dg.Failure(
            description=f"source {source!r} ({spec.origin}) has no input rows; check the file or the "
            "manifest filter. The source's tables keep their previous contents."
        )
    attempt = result.rejected.assign(attempted_at=pd.Timestamp.now("UTC").tz_localize(None))
    warehouse.replace_partition(FAILED_INGEST_REJECTIONS, attempt, "source", source)
    sample = result.rejected.head(FAILURE_SAMPLE_ROWS).assign(raw_text=lambda d: d["raw_text"].str.slice(0, 120))
    raise dg.Failure(
        description=(
            f"source {source!r}: {len(result.rejected)} of {result.input_rows} rows rejected "
            f"({result.rejected_fraction:.0%} > max_rejected_fraction {config.max_rejected_fraction:.0%}). "
            f"Top reasons: {'; '.join(f'{r} ({n})' for r, n in reasons.head(3).items())}. "
            f"Nothing was written: raw_pool, rejected_rows and ingest_log keep their previous contents. This attempt's "
            f"rejected rows are in the {FAILED_INGEST_REJECTIONS} table (and below); fix the field mapping in the "
            "manifest or raise the limit."
        ),
        metadata={
            "rejected": len(result.rejected),
            "input_rows": result.input_rows,
            "rejected_fraction": dg.MetadataValue.float(round(result.rejected_fraction, 4)),
            "reasons": reasons_md,
            "rejected_sample": dg.MetadataValue.md(
                sample[["file", "position", "locator", "reason", "raw_text"]].to_markdown(index=False)
            ),
        },
    )


def _add_missing_columns(con, table: str, frame: pd.DataFrame) -> None:
    if not wh.table_exists(con, table):
        return
    have = {
        r[0]
        for r in con.execute(
            "select column_name from information_schema.columns where table_name = ?", [table]
        ).fetchall()
    }
    for column in frame.columns:
        if column not in have:
            kind = "BIGINT" if pd.api.types.is_integer_dtype(frame[column]) else "VARCHAR"
            con.execute(f'alter table "{table}" add column "{column}" {kind}')


RatedPoolConfig = launchpad_config(RatedPoolSettings)


@dg.asset(
    code_version=CODE_VERSION,
    partitions_def=source_partitions,
    group_name=GROUP,
    deps=["raw_pool"],
    kinds={"duckdb", "pandas"},
    description="The judge's Rarity, Complexity, Informativeness and Overall (1-10) for every raw_pool row, "
    "overall_compressed (0-5), and a status: ok, parse_error or api_error. Failures carry no scores. A source "
    "with precomputed ratings (manifest `precomputed:`) is recorded as judge_backend 'precomputed', no calls made. "
    "Known bias of the demo's heuristic judge: its Overall is mostly a length meter, not a judge of correctness: "
    "Pearson 0.92 (Spearman 0.91) with log(answer length) over the 2,840 rated rows of the demo pool, 0.92 on real "
    "Alpaca/Dolly rows; each materialisation reports that correlation for its rows "
    "(overall_vs_log_length_pearson, overall_vs_log_length_spearman).",
)
def rated_pool(
    context: dg.AssetExecutionContext, config: RatedPoolConfig, judge: JudgeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    config = config.resolve(context)
    source = context.partition_key
    carry = ["source", "sample_id", "prompt", "completion"]
    raw = warehouse.read_partition("raw_pool", "source", source).assign(source=source)
    with warehouse.connect() as con:
        pre = (
            wh.read_partition(con, PRECOMPUTED, "source", source)
            if wh.table_exists(con, PRECOMPUTED)
            else pd.DataFrame(columns=["sample_id"])
        )
    if len(pre):
        joined = raw.merge(pre.drop(columns=["source"]), on="sample_id", how="left", indicator=True)
        unscored = joined[joined["_merge"] != "both"]
        if len(unscored):  # written in one transaction with raw_pool, so this means a damaged warehouse
            raise dg.Failure(
                description=f"source {source!r} has precomputed ratings but {len(unscored)} raw_pool rows have "
                f"none (e.g. sample_id {unscored['sample_id'].iat[0]}); re-materialise raw_pool for this source"
            )
        context.log.info(
            f"{source}: {len(joined)} rows carry precomputed ratings "
            f"({', '.join(sorted(set(pre['judge_model'])))}); no judge calls"
        )
        df, metadata = precomputed_frame(joined, carry, source)
        budget = None
    else:
        df, metadata, budget = rate_frame(
            context, raw, carry, judge, warehouse, source, max_failed_fraction=config.max_failed_fraction
        )
    warehouse.replace_partition("rated_pool", df, "source", source)
    ok = df[df["status"] == "ok"]
    bias = length_correlation(ok["overall"].tolist(), ok["completion"].tolist())
    metadata = {
        **metadata,
        "overall_vs_log_length_spearman": round(bias["spearman"], 3),
        "overall_vs_log_length_pearson": round(bias["pearson"], 3),
    }
    # Written first, failed rows included (the evidence); an exceeded budget then stops the run.
    enforce_budgets(context, [budget] if budget else [])
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "rated_pool", "source", source), metadata=metadata
    )


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    deps=["raw_pool", "rejected_rows", "rated_pool", "high_quality_pool", "low_quality_pool"],
    kinds={"duckdb", "pandas"},
    description="Per-source counts (input, rejected, duplicates, raw, rated ok/failed, high, low), "
    "judge tokens, and the Overall score histogram of every source with the high/low threshold marked; names "
    "the manifest's sources not materialised yet.",
)
def pool_summary(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        missing = [
            t
            for t in (INGEST_LOG, "raw_pool", "rated_pool", "high_quality_pool", "low_quality_pool")
            if not wh.table_exists(con, t)
        ]
        if missing:
            raise dg.Failure(
                description=f"pool_summary needs {missing}: materialise the pool group for at least one source first"
            )
        summary = con.execute(f"""
            with raw as (select source, count(*) n from raw_pool group by 1),
                 rated as (select source, count(*) filter (where status = 'ok') ok,
                                  count(*) filter (where status <> 'ok') failed,
                                  sum(prompt_tokens) pt, sum(completion_tokens) ct
                           from rated_pool group by 1),
                 hi as (select source, count(*) n from high_quality_pool group by 1),
                 lo as (select source, count(*) n from low_quality_pool group by 1)
            select l.source, l.input_rows, l.rejected, l.duplicates,
                   coalesce(raw.n, 0) raw, coalesce(rated.ok, 0) rated_ok, coalesce(rated.failed, 0) rated_failed,
                   coalesce(hi.n, 0) high, coalesce(lo.n, 0) low,
                   round(coalesce(hi.n, 0) / nullif(coalesce(rated.ok, 0), 0), 4) high_fraction,
                   coalesce(rated.pt, 0)::bigint judge_prompt_tokens, coalesce(rated.ct, 0)::bigint judge_completion_tokens
            from {INGEST_LOG} l
            left join raw using (source) left join rated using (source)
            left join hi using (source) left join lo using (source)
            order by l.source""").df()
        scores = con.execute(
            "select source, overall, completion from rated_pool where status = 'ok' and overall is not null"
        ).df()
        threshold = con.execute("select min(quality_threshold) from high_quality_pool").fetchone()[0]
        if threshold is None:
            threshold = con.execute("select min(quality_threshold) from low_quality_pool").fetchone()[0]
    warehouse.replace_partition("pool_summary", summary)
    missing_sources = sorted(set(source_partitions.get_partition_keys()) - set(summary["source"]))
    if missing_sources:
        context.log.warning(
            f"pool_summary covers {len(summary)} sources; not materialised yet: {missing_sources} "
            "(run per_source_job for them)"
        )
    bias = length_correlation(scores["overall"].tolist(), scores["completion"].tolist())
    totals = summary.drop(columns=["source", "high_fraction"]).sum(numeric_only=True)
    context.log.info(
        f"pool: {int(totals['raw'])} rows over {len(summary)} sources, {int(totals['high'])} high, {int(totals['low'])} low"
    )
    hist = histogram_grid(
        {s: g["overall"].astype(float).tolist() for s, g in scores.groupby("source")},
        bins=[x + 0.5 for x in range(0, 11)],
        title="Judge Overall score per source",
        xlabel="Overall (1-10)",
        # compressed t >= 1 is Overall >= t + 4 (the split's threshold is a compressed score)
        threshold=int(threshold) + 4 if threshold else None,
        threshold_label="high from",
    )
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "pool_summary"),
        metadata={
            "dagster/row_count": len(summary),
            "dagster/column_schema": column_schema(summary, "pool_summary"),
            "summary": preview_md(summary, n=len(summary) or 1, max_chars=40),
            "score_histograms": dg.MetadataValue.md(hist),
            "total_raw": int(totals["raw"]),
            "total_high": int(totals["high"]),
            "total_low": int(totals["low"]),
            "high_fraction": round(float(totals["high"]) / max(1.0, float(totals["rated_ok"])), 4),
            "judge_tokens": int(totals["judge_prompt_tokens"] + totals["judge_completion_tokens"]),
            "sources_not_materialised": dg.MetadataValue.md(
                ", ".join(f"`{s}`" for s in missing_sources) + " (run `per_source_job` for them)"
                if missing_sources
                else "none: every source of the manifest is in the summary"
            ),
            "overall_vs_log_length_spearman": round(bias["spearman"], 3),
            "overall_vs_log_length_pearson": round(bias["pearson"], 3),
        },
    )


# --------------------------------------------------------------------------- checks


def _mismatches(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, sql: str, ok_text: str, what: str
) -> dg.AssetCheckResult:
    """Offending rows of ``sql`` (which returns a ``source`` column) in the checked source, shown as ``mismatches``."""
    return no_offenders(
        context,
        warehouse,
        sql,
        ok_text,
        f"this source fails: {what} ({{n}} offending row(s) in mismatches)",
        metadata_key="mismatches",
    )


@dg.asset_check(
    asset="raw_pool",
    additional_deps=["rejected_rows"],
    partitions_def=source_partitions,
    blocking=True,
    description="This source: input rows = ingested + rejected + duplicates folded.",
)
def raw_pool_accounting(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return _mismatches(
        context,
        warehouse,
        f"""
        select l.source, l.input_rows, coalesce(r.n, 0) ingested, coalesce(j.n, 0) rejected, l.duplicates,
               coalesce(r.dups, 0) duplicates_in_table
        from {INGEST_LOG} l
        left join (select source, count(*) n, sum(duplicate_count) dups from raw_pool group by 1) r using (source)
        left join (select source, count(*) n from rejected_rows group by 1) j using (source)
        where l.input_rows <> coalesce(r.n, 0) + coalesce(j.n, 0) + l.duplicates
           or l.duplicates <> coalesce(r.dups, 0)""",
        "input = ingested + rejected + duplicates for this source",
        "rows unaccounted for",
    )


@dg.asset_check(
    asset="raw_pool", partitions_def=source_partitions, description="sample_id is unique within this source."
)
def raw_pool_unique_ids(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return _mismatches(
        context,
        warehouse,
        "select source, sample_id, count(*) n from raw_pool group by 1, 2 having count(*) > 1",
        "all sample_ids unique",
        "duplicate sample_id",
    )


@dg.asset_check(
    asset="rated_pool",
    partitions_def=source_partitions,
    blocking=True,
    description="This source: raw rows = rated ok + failed (same sample_ids).",
)
def rated_pool_accounting(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return _mismatches(
        context,
        warehouse,
        """
        with r as (select source, count(*) n from raw_pool group by 1),
             p as (select source, count(*) n from rated_pool group by 1),
             j as (select source, count(*) n from raw_pool join rated_pool using (source, sample_id) group by 1)
        select p.source, coalesce(r.n, 0) raw_rows, p.n rated_rows, coalesce(j.n, 0) "matched"
        from p left join r using (source) left join j using (source)
        where coalesce(r.n, 0) <> p.n or coalesce(j.n, 0) <> p.n""",
        "every raw row rated exactly once (ok or a failure status)",
        "raw and rated rows differ",
    )


@dg.asset_check(
    asset="rated_pool",
    partitions_def=source_partitions,
    description="This source's ok rows: four scores in 1-10 and compressed in 0-5 (precomputed "
    "ratings may lack the scores their source did not release); failed rows: no scores.",
)
def rated_pool_score_ranges(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return _mismatches(
        context,
        warehouse,
        """
        select source, sample_id, status, judge_backend, rarity, complexity, informativeness, overall, overall_compressed
        from rated_pool
        where (status = 'ok' and not (coalesce(rarity between 1 and 10, true) and coalesce(complexity between 1 and 10, true)
                                      and coalesce(informativeness between 1 and 10, true)
                                      and coalesce(overall between 1 and 10, true)
                                      and overall_compressed between 0 and 5
                                      -- (greatest() skips NULLs in DuckDB, so test the missing overall first)
                                      and (overall is null or overall_compressed = least(9, greatest(4, overall)) - 4)))
           or (status = 'ok' and judge_backend <> 'precomputed'
               and (rarity is null or complexity is null or informativeness is null or overall is null))
           or (status = 'ok' and overall_compressed is null)
           or (status <> 'ok' and coalesce(rarity, complexity, informativeness, overall, overall_compressed) is not null)
           or status not in ('ok', 'parse_error', 'api_error')""",
        "all scores in range; failures carry none",
        "scores out of range",
    )


@dg.asset_check(
    asset="rated_pool", partitions_def=source_partitions, description="No empty prompt or completion in this source."
)
def rated_pool_no_empty_text(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return _mismatches(
        context,
        warehouse,
        "select source, sample_id from rated_pool where trim(coalesce(prompt, '')) = '' or trim(coalesce(completion, '')) = ''",
        "no empty text",
        "empty prompt or completion",
    )


@dg.asset_check(
    asset="low_quality_pool",
    additional_deps=["high_quality_pool"],
    partitions_def=source_partitions,
    blocking=True,
    description="This source: rated ok = high + low, no row in both pools, one threshold, each row on the right side "
    "of it. Blocking: a split that does not add up stops the clusters and the training sets.",
)
def quality_split_accounting(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return _mismatches(
        context,
        warehouse,
        """
        with ok as (select source, count(*) n from rated_pool where status = 'ok' group by 1),
             hi as (select source, count(*) n, min(overall_compressed - quality_threshold) margin,
                           min(quality_threshold) t_min, max(quality_threshold) t_max from high_quality_pool group by 1),
             lo as (select source, count(*) n, max(overall_compressed - quality_threshold) margin,
                           min(quality_threshold) t_min, max(quality_threshold) t_max from low_quality_pool group by 1),
             dup as (select source, count(*) n from high_quality_pool h join low_quality_pool l using (source, sample_id) group by 1),
             src as (select source from ok union select source from hi union select source from lo)
        select src.source, coalesce(ok.n, 0) rated_ok, coalesce(hi.n, 0) high, coalesce(lo.n, 0) low,
               coalesce(dup.n, 0) in_both, hi.t_min high_threshold, lo.t_min low_threshold
        from src left join ok using (source) left join hi using (source) left join lo using (source) left join dup using (source)
        where coalesce(ok.n, 0) <> coalesce(hi.n, 0) + coalesce(lo.n, 0) or coalesce(dup.n, 0) > 0
           or coalesce(hi.margin, 0) < 0 or coalesce(lo.margin, -1) >= 0
           or hi.t_min <> hi.t_max or lo.t_min <> lo.t_max or hi.t_min <> lo.t_min""",
        "ok = high + low for this source, no row in both, one threshold",
        "split does not add up",
    )
