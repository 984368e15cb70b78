"""Stage 5a, distil: the trained distiller merges each low-quality cluster into one new pair, which is re-rated.

``distilled_pool[source]`` has one row per ``cluster_inputs`` row (generated,
or skipped with the reason); ``rated_distilled[source]`` judges every parsed
pair with the pool's judge and cache; ``distilled_high[source]`` (SQL) keeps
those at or above the threshold: the low-quality rows rescued.
"""

import time

import dagster as dg
import pandas as pd

from lm_mixup_assets.budgets import budget_metadata, enforce_budgets
from lm_mixup_assets.checks import no_offenders, offenders_result, partition_rows
from lm_mixup_assets.config import launchpad_config
from lm_mixup_assets.lib.budgets import assess
from lm_mixup_assets.lib.checkpoints import ModelCheckpoint
from lm_mixup_assets.lib.distill import distilled_sample_id, parse_distilled
from lm_mixup_assets.lib.plots import labelled_bars
from lm_mixup_assets.lib.settings.distill import DistillSettings, RescueYieldSettings
from lm_mixup_assets.lib.training import distiller_chat
from lm_mixup_assets.metadata import (
    code_version,
    column_schema,
    table_data_version,
    table_metadata,
)
from lm_mixup_assets.partitions import source_partitions
from lm_mixup_assets.rating import generator_budget, generator_usage, rate_frame
from lm_mixup_assets.scaling import GPU_POOL, gpu_op_tags
from resources import JudgeResource, WarehouseResource
from resources.checkpoint_store import ALLOW_MISSING, require_checkpoint
from resources.generator import GeneratorResource

GROUP = "distill"
# Bump when this stage writes different data for the same inputs (rule: metadata.code_version).
CODE_VERSION = code_version("1")

DISTILLED_COLUMNS = [
    "source",
    "cluster_id",
    "part",
    "member_ids",
    "n_members",
    "input_tokens",
    "distiller",
    "status",
    "reason",
    "response",
    "well_formed",
    "sample_id",
    "prompt",
    "completion",
    "completion_tokens",
    "from_cache",
    "distilled_at",
]
DISTILLED_TYPES = {
    "member_ids": "VARCHAR[]",
    "cluster_id": "BIGINT",
    "part": "BIGINT",
    "n_members": "BIGINT",
    "input_tokens": "BIGINT",
    "well_formed": "BOOLEAN",
    "completion_tokens": "BIGINT",
    "from_cache": "BOOLEAN",
}
STATUSES = ("ok", "parse_error", "api_error", "skipped")


DistillConfig = launchpad_config(DistillSettings)


def _distiller(config: DistillSettings, generator: GeneratorResource, grpo: ModelCheckpoint | None) -> str:
    if config.distiller:
        return config.distiller
    if generator.backend == "openai":
        # A served model has a name, not a path: serve the GRPO checkpoint and name it in the config.
        return generator.model
    return require_checkpoint(grpo, "grpo_checkpoint").path


@dg.asset(
    code_version=CODE_VERSION,
    partitions_def=source_partitions,
    group_name=GROUP,
    deps=["cluster_inputs"],
    # Optional: a configured or served distiller needs no grpo_checkpoint; _distiller checks it when used.
    ins={"grpo_checkpoint": dg.AssetIn(metadata={ALLOW_MISSING: True})},
    pool=GPU_POOL,
    op_tags=gpu_op_tags(),
    kinds={"pytorch", "duckdb"},
    description="The distiller's merge of every low-quality cluster: one row per cluster_inputs row with the response, "
    "the parsed prompt/completion (status ok), or parse_error / api_error / skipped with the reason. "
    "Greedy with the configured repetition penalty (reference 1.05), prompted in the distiller's training layout; "
    "the text after the first </answer> is ignored, as the reference's inference does. Carries the cluster's member sample_ids.",
)
def distilled_pool(
    context: dg.AssetExecutionContext,
    config: DistillConfig,
    generator: GeneratorResource,
    warehouse: WarehouseResource,
    grpo_checkpoint: ModelCheckpoint | None,
) -> dg.MaterializeResult:
    config = config.resolve(context)
    source = context.partition_key
    inputs = warehouse.query("select * from cluster_inputs where source = ? order by cluster_id, part", [source])
    distiller = _distiller(config, generator, grpo_checkpoint)
    reasons: list[str | None] = []
    for i, row in enumerate(inputs.itertuples()):
        if row.over_max_tokens or row.input_tokens > config.max_input_tokens:
            reasons.append(f"input has {row.input_tokens} tokens, over max_input_tokens={config.max_input_tokens}")
        elif config.max_clusters and i >= config.max_clusters:
            reasons.append(f"beyond max_clusters={config.max_clusters} (raise it to distil every cluster)")
        else:
            reasons.append(None)
    todo = [i for i, r in enumerate(reasons) if r is None]
    chats = [
        distiller_chat(
            {"instruction": inputs["instruction"].iat[i], "input": inputs["input_text"].iat[i]}, config.prompt_layout
        )
        for i in todo
    ]
    context.log.info(
        f"{source}: distilling {len(todo)} of {len(inputs)} cluster inputs with {generator.backend}:{distiller} "
        f"(max_new_tokens {config.max_new_tokens}, greedy, repetition_penalty {config.repetition_penalty}, "
        f"{config.prompt_layout} prompt)"
    )
    started = time.monotonic()
    usage: dict = {}
    with generator.session():  # the engine leaves the GPU when this asset ends
        outcomes, cached = (
            generator.generate(
                chats,
                warehouse,
                model=distiller,
                progress=context.log.info,
                usage=usage,
                max_new_tokens=config.max_new_tokens,
                temperature=0.0,
                repetition_penalty=config.repetition_penalty,
            )
            if todo
            else ([], [])
        )
    seconds = time.monotonic() - started
    by_row = {i: (o, c) for i, o, c in zip(todo, outcomes, cached)}
    now = pd.Timestamp.now("UTC").tz_localize(None)
    records = []
    for i, row in enumerate(inputs.itertuples()):
        rec = {
            "source": source,
            "cluster_id": row.cluster_id,
            "part": row.part,
            "member_ids": list(row.member_ids),
            "n_members": row.n_members,
            "input_tokens": row.input_tokens,
            "distiller": distiller,
            "status": "skipped",
            "reason": reasons[i],
            "response": None,
            "well_formed": False,
            "sample_id": None,
            "prompt": None,
            "completion": None,
            "completion_tokens": 0,
            "from_cache": False,
            "distilled_at": now,
        }
        if i in by_row:
            outcome, hit = by_row[i]
            rec.update(
                response=outcome.raw_answer, completion_tokens=0 if hit else outcome.completion_tokens, from_cache=hit
            )
            if outcome.status != "ok":
                rec.update(status="api_error", reason=outcome.error or "generation failed")
            else:
                parsed = parse_distilled(outcome.raw_answer, require_tags=config.require_answer_tags)
                rec.update(status=parsed.status, reason=parsed.reason, well_formed=parsed.well_formed)
                if parsed.status == "ok":
                    rec.update(
                        prompt=parsed.prompt,
                        completion=parsed.completion,
                        sample_id=distilled_sample_id(source, parsed.prompt, parsed.completion),
                    )
        records.append(rec)
    df = pd.DataFrame(records, columns=DISTILLED_COLUMNS)
    warehouse.replace_partition("distilled_pool", df, "source", source, column_types=DISTILLED_TYPES)

    counts = {s: int((df["status"] == s).sum()) for s in STATUSES}
    usage_md, usage_line = generator_usage(generator, usage, "generator") if todo else ({}, "nothing to generate")
    context.log.info(f"{source}: {usage_line}")
    answered = df[df["status"].isin(["ok", "parse_error"])]
    budgets = [
        generator_budget(f"distilled_pool[{source}]", generator, outcomes, config.max_failed_fraction),
        assess(
            f"distiller answers of distilled_pool[{source}] (parsing into a pair)",
            answered["status"].tolist(),
            [f"{r}; answer: {str(x)[:120]!r}" for r, x in zip(answered["reason"], answered["response"])],
            ["parse_error"],
            config.max_parse_error_fraction,
            generator.secrets(),
            "max_parse_error_fraction",
        ),
    ]
    generated = [o for o, hit in zip(outcomes, cached) if not hit and o.status == "ok"]
    new_tokens = sum(o.completion_tokens for o in generated)
    context.log.info(
        f"{source}: {counts} in {seconds:.1f}s ({len(generated)} generated, {sum(cached)} from the cache, "
        f"{new_tokens / max(seconds, 1e-9):.1f} new tokens/s)"
    )
    if counts["parse_error"]:
        context.log.warning(
            f"{counts['parse_error']} responses did not parse into a pair (kept with status parse_error): "
            f"{df.loc[df['status'] == 'parse_error', 'reason'].value_counts().head(3).to_dict()}"
        )
    enforce_budgets(context, budgets)  # after the write: failed rows are kept as evidence

    def text(value) -> str:  # None or NaN (pandas' missing text) -> ""
        return value if isinstance(value, str) else ""

    examples = "\n\n---\n\n".join(
        f"**cluster {r.cluster_id}** → `{r.status}`{f' ({text(r.reason)})' if text(r.reason) else ''}\n\n```\n{text(r.response)[:800]}\n```"
        for r in df[df["status"] != "skipped"].head(3).itertuples()
    )
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "distilled_pool", "source", source),
        metadata={
            **table_metadata(df, ["cluster_id", "n_members", "status", "prompt", "completion"], table="distilled_pool"),
            **{f"status_{s}": n for s, n in counts.items()},
            "parse_rate": round(counts["ok"] / max(1, counts["ok"] + counts["parse_error"]), 4),
            "well_formed_responses": int(df["well_formed"].sum()),
            "distiller": distiller,
            "prompt_layout": config.prompt_layout,
            "repetition_penalty": config.repetition_penalty,
            "generator_backend": generator.backend,
            "generation_seconds": round(seconds, 2),
            "new_completion_tokens": int(new_tokens),
            "tokens_per_second": round(new_tokens / max(seconds, 1e-9), 2),
            "examples": dg.MetadataValue.md(examples or "_(nothing distilled)_"),
            **usage_md,
            **budget_metadata("generation", budgets[0]),
            **budget_metadata("parse", budgets[1]),
        },
    )


RescueYieldConfig = launchpad_config(RescueYieldSettings)


RATED_DISTILLED_CARRY = ["source", "sample_id", "cluster_id", "part", "member_ids", "distiller", "prompt", "completion"]


@dg.asset(
    code_version=CODE_VERSION,
    partitions_def=source_partitions,
    group_name=GROUP,
    deps=["distilled_pool", "cluster_inputs", "low_quality_pool"],
    kinds={"duckdb", "pandas"},
    description="The pool's judge (same cache) on every distilled pair that parsed, under the judge's "
    "distilled_rubric_version (paper: the reference's QA re-rating rubric): four scores, compressed Overall "
    "and a status. Per-source rescue yield in metadata.",
)
def rated_distilled(
    context: dg.AssetExecutionContext, config: RescueYieldConfig, judge: JudgeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    config = config.resolve(context)
    source = context.partition_key
    distilled = warehouse.query(
        "select * from distilled_pool where source = ? and status = 'ok' order by cluster_id, part", [source]
    )
    df, metadata, budget = rate_frame(
        context,
        distilled,
        RATED_DISTILLED_CARRY,
        judge,
        warehouse,
        f"{source} (distilled)",
        rubric_version=judge.distilled_rubric_version,
        max_failed_fraction=config.max_failed_fraction,
        # compressed t >= 1 is Overall >= t + 4; t = 0 accepts every rated pair
        threshold_overall=config.quality_threshold + 4 if config.quality_threshold else None,
    )
    df["quality_threshold"] = config.quality_threshold
    with warehouse.connect() as con:  # a warehouse from before the column existed gains it
        con.execute("alter table if exists rated_distilled add column if not exists quality_threshold BIGINT")
    warehouse.replace_partition(
        "rated_distilled",
        df,
        "source",
        source,
        column_types={
            "member_ids": "VARCHAR[]",
            "cluster_id": "BIGINT",
            "part": "BIGINT",
            "quality_threshold": "BIGINT",
        },
    )
    enforce_budgets(context, [budget])  # after the write: failed rows are kept as evidence
    yield_table = rescue_yield(warehouse, source, df, config.quality_threshold)
    context.log.info(f"{source} rescue yield: " + ", ".join(f"{k} {v}" for k, v in yield_table.items()))
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "rated_distilled", "source", source),
        metadata={
            **metadata,
            "dagster/column_schema": column_schema(df, "rated_distilled"),
            "rescue_yield": dg.MetadataValue.md(pd.DataFrame([yield_table]).to_markdown(index=False)),
            "rescue_funnel": dg.MetadataValue.md(
                labelled_bars(
                    {s: yield_table[s] for s in ("low_rows", "cluster_inputs", "distilled", "parsed", "accepted")},
                    f"rescue yield, {source}",
                    f"rescue yield {source}",
                )
            ),
            "low_rows_rescued_fraction": round(
                yield_table["low_rows_covered_by_accepted"] / max(1, yield_table["low_rows"]), 4
            ),
        },
    )


def rescue_yield(warehouse: WarehouseResource, source: str, rated: pd.DataFrame, threshold: int) -> dict:
    """Low rows in -> cluster inputs -> distilled -> parsed -> accepted pairs (judged at or above the threshold)."""
    counts = warehouse.query(
        """
        select (select count(*) from low_quality_pool where source = $1) low_rows,
               (select count(*) from cluster_inputs where source = $1) cluster_inputs,
               (select count(*) from distilled_pool where source = $1 and status <> 'skipped') distilled,
               (select count(*) from distilled_pool where source = $1 and status = 'ok') parsed""",
        [source],
    ).iloc[0]
    accepted = rated[(rated["status"] == "ok") & (rated["overall_compressed"].fillna(-1) >= threshold)]
    covered = len({m for ids in accepted["member_ids"] for m in ids})
    return {
        "low_rows": int(counts["low_rows"]),
        "cluster_inputs": int(counts["cluster_inputs"]),
        "distilled": int(counts["distilled"]),
        "parsed": int(counts["parsed"]),
        "rated_ok": int((rated["status"] == "ok").sum()),
        "accepted": len(accepted),
        "low_rows_covered_by_accepted": covered,
        "threshold": threshold,
    }


# --------------------------------------------------------------------------- checks


@dg.asset_check(
    asset="distilled_pool",
    partitions_def=source_partitions,
    blocking=True,
    description="This source: one distilled_pool row per cluster_inputs row (same member ids); statuses known; ok rows carry a pair.",
)
def distilled_pool_accounting(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return no_offenders(
        context,
        warehouse,
        f"""
        with d as (select * from distilled_pool), i as (select * from cluster_inputs where source in (select distinct source from d))
        select coalesce(d.source, i.source) as source, coalesce(d.cluster_id, i.cluster_id) cluster_id,
               coalesce(d.part, i.part) part, d.status,
               case when d.source is null then 'not distilled or skipped' when i.source is null then 'no such cluster input'
                    when d.member_ids <> i.member_ids then 'member ids differ'
                    when d.status not in {STATUSES} then 'unknown status'
                    when d.status = 'ok' and (d.prompt is null or d.completion is null or d.sample_id is null) then 'ok without a pair'
                    when d.status <> 'ok' and d.reason is null then 'failure without a reason' end problem
        from d full outer join i using (source, cluster_id, part)
        where problem is not null""",
        "every cluster input accounted for",
        "{n} cluster inputs unaccounted for",
    )


@dg.asset_check(
    asset="rated_distilled",
    partitions_def=source_partitions,
    blocking=True,
    description="This source: every parsed distilled pair rated exactly once (ok or a failure status); ok rows have scores in range.",
)
def rated_distilled_accounting(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return no_offenders(
        context,
        warehouse,
        """
        with d as (select source, cluster_id, part from distilled_pool where status = 'ok'
                   and source in (select distinct source from rated_distilled)),
             r as (select source, cluster_id, part, count(*) n, any_value(status) status, any_value(overall) overall
                   from rated_distilled group by 1, 2, 3)
        select coalesce(d.source, r.source) as source, coalesce(d.cluster_id, r.cluster_id) cluster_id, r.n, r.status, r.overall
        from d full outer join r using (source, cluster_id, part)
        where r.n is null or r.n <> 1 or d.source is null
           or (r.status = 'ok' and not coalesce(r.overall between 1 and 10, false))""",
        "parsed = rated",
        "{n} pairs not rated exactly once",
    )


@dg.asset_check(
    asset="distilled_high",
    additional_deps=["low_quality_pool"],
    partitions_def=source_partitions,
    description="Every distilled-high pair's member ids in this source are low-quality rows of this source.",
)
def distilled_high_traces_to_low_rows(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    bad = partition_rows(
        context,
        warehouse,
        """
        with m as (select source, sample_id distilled_id, unnest(member_ids) member_id from distilled_high)
        select m.* from m left join low_quality_pool l on l.source = m.source and l.sample_id = m.member_id
        where l.sample_id is null""",
    )
    members = warehouse.query(
        "select coalesce(sum(len(member_ids)), 0) n from distilled_high where source = ?", [context.partition_key]
    )["n"].iat[0]
    return offenders_result(bad, f"{int(members)} member ids all found", "{n} member ids not in low_quality_pool")
