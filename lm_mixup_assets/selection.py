"""Stage 5b, selection: long-tail scores, then the ~3% training sets, one partition per recipe ("arm").

``long_tail_scores`` ranks the original high-quality pool and the distilled
high pool by rarity (mean cosine distance to the 15 nearest neighbours within
the set); ``training_sets[arm]`` draws each recipe's rows from them (or from
the rated / low pool for the baselines) and exports the JSONL a user takes to
any trainer. ``heldout_instructions`` reserves high-quality rows for the evaluation's held-out
task first: no training set contains them (``training_sets_exclude_heldout``).
"""

import json
import os
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from lm_mixup_assets.checks import no_offenders, partition_rows
from lm_mixup_assets.config import launchpad_config
from lm_mixup_assets.lib import warehouse as wh
from lm_mixup_assets.lib.heldout import draw_heldout
from lm_mixup_assets.lib.plots import BLUE, ORANGE, overlaid_histograms, stacked_barh
from lm_mixup_assets.lib.selection import (
    LONG_TAIL_RANKED,
    compose_arm,
    content_key,
    long_tail_text,
    parse_arm,
)
from lm_mixup_assets.lib.selection import long_tail_scores as score_long_tail
from lm_mixup_assets.lib.settings.selection import HeldoutSettings, LongTailSettings, TrainingSetSettings
from lm_mixup_assets.metadata import (
    code_version,
    preview_md,
    table_data_version,
    table_metadata,
)
from lm_mixup_assets.partitions import arm_partitions
from lm_mixup_assets.scaling import GPU_POOL, gpu_op_tags
from resources import WarehouseResource
from resources.embedder import EmbedderResource
from resources.warehouse import snapshot_metadata

GROUP = "selection"
# Bump when this stage writes different data for the same inputs (rule: metadata.code_version).
CODE_VERSION = code_version("1")

LONG_TAIL_COLUMNS = [
    "set_name",
    "source",
    "sample_id",
    "member_ids",
    "prompt",
    "completion",
    "overall_compressed",
    "mean_knn_distance",
    "long_tail_score",
    "k",
    "embedding_model",
]
TRAINING_SET_COLUMNS = [
    "arm",
    "position",
    "pool",
    "origin",
    "source",
    "sample_id",
    "member_ids",
    "prompt",
    "completion",
    "long_tail_score",
]
LIST_TYPES = {"member_ids": "VARCHAR[]"}
HELDOUT_COLUMNS = ["position", "source", "sample_id", "prompt", "completion", "overall", "overall_compressed"]


LongTailConfig = launchpad_config(LongTailSettings)
HeldoutConfig = launchpad_config(HeldoutSettings)


def _table_or_empty(warehouse: WarehouseResource, table: str, sql: str, columns: list[str]) -> pd.DataFrame:
    with warehouse.connect() as con:
        if not wh.table_exists(con, table):
            return pd.DataFrame(columns=columns)
        return con.execute(sql).df()


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    deps=["high_quality_pool", "distilled_high"],
    pool=GPU_POOL,
    op_tags=gpu_op_tags(),
    kinds={"pytorch", "duckdb"},
    description="Long-tail score of every original high-quality row and every distilled high row: mean cosine distance "
    "to the k nearest neighbours (k=15, exact faiss search) within its own set, min-max normalised to [0, 1]; higher = rarer.",
)
def long_tail_scores(
    context: dg.AssetExecutionContext, config: LongTailConfig, embedder: EmbedderResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    config = config.resolve(context)
    columns = ["source", "sample_id", "member_ids", "prompt", "completion", "overall_compressed"]
    sets = {
        "original_high": _table_or_empty(
            warehouse,
            "high_quality_pool",
            """
            select source, sample_id, [sample_id] member_ids, prompt, completion, overall_compressed
            from high_quality_pool order by source, sample_id""",
            columns,
        ),
        "distilled_high": _table_or_empty(
            warehouse,
            "distilled_high",
            """
            select source, sample_id, member_ids, prompt, completion, overall_compressed
            from distilled_high order by source, sample_id""",
            columns,
        ),
    }
    if sets["distilled_high"].empty:
        context.log.warning(
            "distilled_high is empty or missing: the mixup arms will report a shortfall "
            "(materialise the distill group for each source first)"
        )
    frames, stats = [], []
    for name, frame in sets.items():
        started = time.monotonic()
        texts = [
            long_tail_text(p, c, config.prompt_prefix, config.answer_prefix)
            for p, c in zip(frame["prompt"], frame["completion"])
        ]
        vectors = embedder.embed(texts) if len(frame) else np.zeros((0, 1))
        embed_s = time.monotonic() - started
        raw, score = score_long_tail(vectors, config.k)
        knn_s = time.monotonic() - started - embed_s
        frames.append(
            frame.assign(
                set_name=name,
                mean_knn_distance=raw,
                long_tail_score=score,
                k=min(config.k, max(0, len(frame) - 1)),
                embedding_model=embedder.model,
            )
        )
        stats.append(
            {
                "set": name,
                "rows": len(frame),
                "k": min(config.k, max(0, len(frame) - 1)),
                "embed_s": round(embed_s, 2),
                "knn_s": round(knn_s, 3),
                "mean_distance": round(float(raw.mean()), 4) if len(raw) else 0.0,
            }
        )
        context.log.info(f"{name}: {len(frame)} rows, embed {embed_s:.1f}s, exact kNN {knn_s:.2f}s")
    df = pd.concat(frames, ignore_index=True)[LONG_TAIL_COLUMNS]
    warehouse.replace_partition("long_tail_scores", df, column_types=LIST_TYPES)

    distances = overlaid_histograms(
        {name: g["mean_knn_distance"].tolist() for name, g in df.groupby("set_name")},
        30,
        "long-tail distribution",
        "mean cosine distance to k nearest neighbours",
        "long-tail distances",
    )
    rarest = df.sort_values("long_tail_score", ascending=False).groupby("set_name").head(3)
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "long_tail_scores"),
        metadata={
            **table_metadata(
                df, ["set_name", "source", "long_tail_score", "prompt", "completion"], table="long_tail_scores"
            ),
            "sets": dg.MetadataValue.md(pd.DataFrame(stats).to_markdown(index=False)),
            "rarest": preview_md(
                rarest, n=6, columns=["set_name", "source", "long_tail_score", "prompt", "completion"]
            ),
            "distance_histogram": dg.MetadataValue.md(distances),
            "embedding_model": embedder.model,
        },
    )


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    deps=["high_quality_pool"],
    kinds={"duckdb", "pandas"},
    description="High-quality pool rows held out of every training set: the evaluation scores how likely each "
    "model finds these answers (mean per-token log-likelihood, benchmark_scores' heldout_instruct task). A seeded "
    "uniform draw of `size` rows, at most max_source_fraction of a source's high rows, optionally only rows up to "
    "max_chars; each row keeps its source and sample_id (lineage to raw_pool). Demo: 48 rows of at most 1,200 "
    "characters; paper: none (the method evaluates on public benchmarks only).",
)
def heldout_instructions(
    context: dg.AssetExecutionContext, config: HeldoutConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    config = config.resolve(context)
    high = _table_or_empty(
        warehouse,
        "high_quality_pool",
        "select source, sample_id, prompt, completion, overall, overall_compressed from high_quality_pool",
        HELDOUT_COLUMNS[1:],
    )
    rows = draw_heldout(high, config.size, config.seed, config.max_source_fraction, config.max_chars)
    rows = rows.assign(position=range(len(rows))).reindex(columns=HELDOUT_COLUMNS)
    rows["position"] = rows["position"].astype("int64")
    warehouse.replace_partition("heldout_instructions", rows)
    if config.size and len(rows) < config.size:
        context.log.warning(
            f"held out {len(rows)} of the {config.size} rows asked for: {len(high)} high-quality rows, at most "
            f"{config.max_source_fraction:.0%} per source"
            + (f", up to {config.max_chars} characters" if config.max_chars else "")
        )
    per_source = (
        pd.DataFrame(
            {
                "high rows": high.groupby("source").size(),
                "held out": rows.groupby("source").size() if len(rows) else pd.Series(dtype="int64"),
            }
        )
        .fillna(0)
        .astype("int64")
        .rename_axis("source")
        .reset_index()
    )
    context.log.info(f"held out {len(rows)} high-quality rows: {per_source.to_dict('records')}")
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "heldout_instructions"),
        metadata={
            **table_metadata(rows, ["source", "overall", "prompt", "completion"], table="heldout_instructions"),
            "per_source": dg.MetadataValue.md(per_source.to_markdown(index=False)),
            "size": config.size,
        },
    )


TrainingSetConfig = launchpad_config(TrainingSetSettings)


CANDIDATE_TABLES = ("long_tail_scores", "low_quality_pool", "rated_pool", "heldout_instructions")


def _without_heldout(frame: pd.DataFrame, heldout: pd.DataFrame) -> pd.DataFrame:
    """``frame`` less the held-out rows: by (source, sample_id) and by content (a copy in another source too)."""
    if heldout.empty or frame.empty:
        return frame
    ids = set(zip(heldout["source"], heldout["sample_id"]))
    contents = {content_key(p, c) for p, c in zip(heldout["prompt"], heldout["completion"])}
    keep = [
        (src, sid) not in ids and content_key(p, c) not in contents
        for src, sid, p, c in zip(frame["source"], frame["sample_id"], frame["prompt"], frame["completion"])
    ]
    return frame[keep]


def _candidates(warehouse: WarehouseResource) -> tuple[dict[str, pd.DataFrame], int | None, int | None]:
    """The candidate pools less the held-out rows, all read at one state of the warehouse, that state's
    lake snapshot (None: duckdb) and the number of held-out rows left out (None: no held-out set materialised)."""
    with warehouse.reading_snapshot() as (con, snapshot):
        if not wh.table_exists(con, "long_tail_scores"):
            raise dg.Failure(description="long_tail_scores is missing: materialise it first")
        ranked = con.execute("select * from long_tail_scores").df()
        low = con.execute("""select source, sample_id, [sample_id] member_ids, prompt, completion
                             from low_quality_pool""").df()
        rated = con.execute("""select source, sample_id, [sample_id] member_ids, prompt, completion
                               from rated_pool where status = 'ok'""").df()
        has_heldout = wh.table_exists(con, "heldout_instructions")
        heldout = (
            con.execute("select source, sample_id, prompt, completion from heldout_instructions").df()
            if has_heldout
            else pd.DataFrame(columns=["source", "sample_id", "prompt", "completion"])
        )
    out = {name: ranked[ranked["set_name"] == name].drop(columns=["set_name"]) for name in LONG_TAIL_RANKED}
    out["original_low"] = low
    out["rated_pool"] = rated
    n_heldout = len(heldout) if has_heldout else None
    return {name: _without_heldout(frame, heldout) for name, frame in out.items()}, snapshot, n_heldout


def _export_jsonl(rows: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in rows.itertuples():
            fh.write(json.dumps({"prompt": r.prompt, "completion": r.completion}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # readers never see a half-written file


@dg.asset(
    code_version=CODE_VERSION,
    partitions_def=arm_partitions,
    group_name=GROUP,
    deps=["long_tail_scores", "rated_pool", "low_quality_pool", "heldout_instructions"],
    kinds={"duckdb", "pandas"},
    description="One training set per recipe: mixupA_oriB (distilled/original high by long-tail rank), original_high, "
    "random (uniform over the rated pool), full_low (uniform over the low pool), highA_lowB. Every row names its origin, "
    "source and member ids; the held-out rows (heldout_instructions) are never drawn. Exported as JSONL (prompt, "
    "completion) under artifacts/training_sets/.",
)
def training_sets(
    context: dg.AssetExecutionContext, config: TrainingSetConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    config = config.resolve(context)
    arm = context.partition_key
    recipe = parse_arm(arm)
    candidates, read_snapshot, n_heldout = _candidates(warehouse)
    if n_heldout is None:
        # Not an error (the paper profile holds none out), but a later held-out draw could pick rows this set holds.
        context.log.warning(
            "heldout_instructions is not materialised: no held-out row excluded; materialise it first if the "
            "evaluation scores a held-out task"
        )
    else:
        context.log.info(f"{n_heldout} held-out rows (heldout_instructions) excluded from the candidates")
    composed = compose_arm(
        recipe,
        candidates,
        config.size,
        seed=config.seed,
        original_rank=config.original_rank,
        row_order=config.row_order,
        shuffle_seed=config.shuffle_seed,
        drop_duplicate_content=config.drop_duplicate_content,
    )
    rows = composed.rows.assign(arm=arm)
    if rows.empty:
        rows = pd.DataFrame(columns=TRAINING_SET_COLUMNS)
    rows = rows.reindex(columns=TRAINING_SET_COLUMNS)
    rows["long_tail_score"] = rows["long_tail_score"].astype("float64")
    composition = pd.DataFrame(
        [
            {
                "arm": arm,
                "pool": p,
                "fraction": f,
                "wanted": composed.wanted[p],
                "available": composed.available[p],
                "taken": composed.taken[p],
                "shortfall": composed.wanted[p] - composed.taken[p],
            }
            for p, f in recipe.parts
        ]
    )
    warehouse.replace_partition("training_sets", rows, "arm", arm, column_types={**LIST_TYPES, "position": "BIGINT"})
    warehouse.replace_partition("training_set_composition", composition, "arm", arm)
    path = warehouse.artifacts_dir / "training_sets" / f"{arm}.jsonl"
    _export_jsonl(rows, path)
    pool_rows = int(warehouse.query("select count(*) n from rated_pool where status = 'ok'")["n"].iat[0])
    if composed.shortfall:
        context.log.warning(
            f"{arm}: pools too small for {config.size} rows, shortfall {composed.shortfall} "
            f"(available {composed.available}); the ratio is not filled from other pools"
        )
    context.log.info(f"{arm}: {len(rows)} rows {composed.taken} -> {path}")

    mix = rows.groupby(["source", "origin"]).size().unstack(fill_value=0) if len(rows) else pd.DataFrame()
    origin_mix = stacked_barh(
        mix, {"original": BLUE, "distilled": ORANGE}, f"{arm}: rows by source and origin", f"origin mix {arm}"
    )
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "training_sets", "arm", arm),
        metadata={
            **table_metadata(
                rows, ["position", "origin", "source", "long_tail_score", "prompt", "completion"], table="training_sets"
            ),
            "composition": dg.MetadataValue.md(composition.to_markdown(index=False)),
            "shortfall": dg.MetadataValue.json(composed.shortfall),
            "fraction_of_pool": round(len(rows) / max(1, pool_rows), 4),
            "origin_mix": dg.MetadataValue.md(origin_mix),
            "jsonl": dg.MetadataValue.path(str(path)),
            "size": config.size,
            "original_rank": config.original_rank,
            "row_order": config.row_order,
            "heldout_rows_excluded": dg.MetadataValue.int(n_heldout) if n_heldout is not None else "not materialised",
            # A lake keeps the exact rows this set was drawn from: query them at these snapshots.
            **snapshot_metadata({table: read_snapshot for table in CANDIDATE_TABLES}),
        },
    )


# --------------------------------------------------------------------------- checks


@dg.asset_check(
    asset="training_sets",
    partitions_def=arm_partitions,
    description="No sample twice in this arm, by id or by content.",
)
def training_sets_no_duplicates(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return no_offenders(
        context,
        warehouse,
        """
        select arm, sample_id, count(*) n from training_sets group by 1, 2 having count(*) > 1
        union all
        select arm, any_value(sample_id), count(*) from training_sets group by arm, trim(prompt), trim(completion) having count(*) > 1""",
        "no duplicates",
        "{n} duplicated rows",
        column="arm",
    )


@dg.asset_check(
    asset="training_sets",
    partitions_def=arm_partitions,
    blocking=True,
    description="This arm: rows per pool equal the recipe's counts; a pool too small for its share shows as a shortfall (warning).",
)
def training_sets_ratios(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    comp = partition_rows(
        context,
        warehouse,
        """
        select c.*, coalesce(t.n, 0) rows_in_table from training_set_composition c
        left join (select arm, pool, count(*) n from training_sets group by 1, 2) t using (arm, pool)""",
        column="arm",
    )
    wrong = comp[(comp["rows_in_table"] != comp["taken"]) | (comp["taken"] + comp["shortfall"] != comp["wanted"])]
    if len(wrong):
        return dg.AssetCheckResult(
            passed=False,
            description=f"{len(wrong)} pool counts disagree with the composition",
            metadata={"composition": preview_md(comp, 20)},
        )
    short = comp[comp["shortfall"] > 0]
    return dg.AssetCheckResult(
        passed=short.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description="ratios exact"
        if short.empty
        else "shortfall: "
        + ", ".join(f"{r.arm}/{r.pool} {r.taken} of {r.wanted} ({r.available} available)" for r in short.itertuples()),
        metadata={"composition": preview_md(comp, 20, max_chars=30)},
    )


@dg.asset_check(
    asset="training_sets",
    partitions_def=arm_partitions,
    blocking=True,
    description="No held-out row (heldout_instructions) is in this arm: not by source and sample id, not as a member "
    "of a distilled pair, not by content.",
)
def training_sets_exclude_heldout(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        missing = not wh.table_exists(con, "heldout_instructions")
    if missing:
        return dg.AssetCheckResult(passed=True, description="no held-out set materialised")
    return no_offenders(
        context,
        warehouse,
        """
        with m as (select arm, position, source, sample_id, unnest(member_ids) member_id, prompt, completion
                   from training_sets)
        select distinct m.arm, m.position, m.source, m.sample_id, h.sample_id heldout_id
        from m join heldout_instructions h
          on (h.source = m.source and (h.sample_id = m.sample_id or h.sample_id = m.member_id))
          or (trim(h.prompt) = trim(m.prompt) and trim(h.completion) = trim(m.completion))""",
        "no held-out row in this arm",
        "{n} held-out rows in the training set",
        column="arm",
    )


@dg.asset_check(
    asset="training_sets",
    additional_deps=["raw_pool"],
    partitions_def=arm_partitions,
    blocking=True,
    description="Every row of this arm traces back to pool rows: each member id is a raw_pool row of its source.",
)
def training_sets_trace_to_pool(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return no_offenders(
        context,
        warehouse,
        """
        with m as (select arm, position, origin, source, unnest(member_ids) member_id from training_sets)
        select m.* from m left join raw_pool r on r.source = m.source and r.sample_id = m.member_id
        where r.sample_id is null
        union all
        select arm, position, origin, source, null from training_sets where member_ids is null or len(member_ids) = 0""",
        "every member id found in raw_pool",
        "{n} member ids not found",
        column="arm",
    )
