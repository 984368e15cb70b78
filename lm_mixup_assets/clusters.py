"""Stage 2, clusters: embed each source's low-quality rows and group them into distillation inputs.

``low_quality_clusters[source]`` assigns every low-quality row to one
capacity-constrained cluster (sizes 2-5 by default, docs/method.md);
``cluster_inputs[source]`` turns each cluster into the distiller's input text.
"""

import time

import dagster as dg
import numpy as np
import pandas as pd

from lm_mixup_assets.checks import no_offenders, partition_rows
from lm_mixup_assets.config import launchpad_config
from lm_mixup_assets.lib.cluster_inputs import build_cluster_inputs
from lm_mixup_assets.lib.clustering import capacity_constrained_clusters
from lm_mixup_assets.lib.models import load_tokenizer
from lm_mixup_assets.lib.plots import sizes_and_similarities
from lm_mixup_assets.lib.reference_clustering import reference_clusters
from lm_mixup_assets.lib.settings.clusters import ClusteringSettings, ClusterInputsSettings
from lm_mixup_assets.metadata import (
    code_version,
    preview_md,
    table_data_version,
    table_metadata,
)
from lm_mixup_assets.partitions import source_partitions
from lm_mixup_assets.scaling import GPU_POOL, gpu_op_tags
from resources import WarehouseResource
from resources.embedder import EmbedderResource

GROUP = "clusters"
# Bump when this stage writes different data for the same inputs (rule: metadata.code_version).
CODE_VERSION = code_version("3")  # 3: fast clustering above 8192 rows: leaves of 512 in <= 256 coarse cells

CLUSTER_INPUT_TYPES = {
    "member_ids": "VARCHAR[]",
    "cluster_id": "BIGINT",
    "part": "BIGINT",
    "n_parts": "BIGINT",
    "n_members": "BIGINT",
    "input_tokens": "BIGINT",
    "over_max_tokens": "BOOLEAN",
}
CLUSTER_COLUMNS = [
    "source",
    "sample_id",
    "cluster_id",
    "cluster_size",
    "member_cosine",
    "cluster_mean_cosine",
    "embedding_model",
]


ClusteringConfig = launchpad_config(ClusteringSettings)


ClusterInputsConfig = launchpad_config(ClusterInputsSettings)


@dg.asset(
    code_version=CODE_VERSION,
    partitions_def=source_partitions,
    group_name=GROUP,
    deps=["low_quality_pool"],
    kinds={"pytorch", "duckdb"},
    # Embedding runs on a GPU on the paper profile (bge-m3 over ~240k rows).
    pool=GPU_POOL,
    op_tags=gpu_op_tags(),
    description="Every low-quality row with its cluster_id (capacity-constrained clustering of its embedding), "
    "the cluster's size and the member-to-centre cosine.",
)
def low_quality_clusters(
    context: dg.AssetExecutionContext,
    config: ClusteringConfig,
    embedder: EmbedderResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    config = config.resolve(context)
    source = context.partition_key
    low = warehouse.query(
        "select sample_id, prompt, completion from low_quality_pool where source = ? order by sample_id", [source]
    )
    started = time.monotonic()
    context.log.info(
        f"embedding {len(low)} low-quality rows of {source!r} with {embedder.model} on {embedder.resolved_device}"
    )
    vectors, model_load_s = embedder.embed_with_load_time((low["prompt"] + "\n" + low["completion"]).tolist())
    embed_s = time.monotonic() - started - model_load_s  # the rows' cost; the one-off model load on its own
    sizes = {
        "min_size": config.min_size,
        "max_size": config.max_size,
        "mean_cap": config.mean_cap,
        "std_cap": config.std_cap,
        "seed": config.seed,
    }
    if config.algorithm == "reference":
        result = reference_clusters(
            vectors,
            **sizes,
            kmeans_batch_size=config.kmeans_batch_size,
            kmeans_max_iter=config.kmeans_max_iter,
            device=embedder.resolved_device,
        )
    else:
        result = capacity_constrained_clusters(vectors, **sizes)
    cluster_s = time.monotonic() - started - model_load_s - embed_s
    for note in result.notes:
        context.log.info(note)
    labels = result.labels.astype("int64")
    mean_cos = pd.Series(result.member_cosine).groupby(labels).mean() if len(labels) else pd.Series(dtype=float)
    df = pd.DataFrame(
        {
            "source": source,
            "sample_id": low["sample_id"],
            "cluster_id": labels,
            "cluster_size": result.sizes[labels].astype("int64") if len(labels) else np.zeros(0, "int64"),
            "member_cosine": result.member_cosine.astype("float64"),
            "cluster_mean_cosine": mean_cos.reindex(labels).to_numpy() if len(labels) else np.zeros(0),
            "embedding_model": embedder.model,
        },
        columns=CLUSTER_COLUMNS,
    )
    warehouse.replace_partition(
        "low_quality_clusters",
        df,
        "source",
        source,
        column_types={
            "cluster_id": "BIGINT",
            "cluster_size": "BIGINT",
            "member_cosine": "DOUBLE",
            "cluster_mean_cosine": "DOUBLE",
        },
    )
    context.log.info(
        f"{source}: {len(df)} rows -> {len(result.sizes)} clusters (embed {embed_s:.1f}s, cluster {cluster_s:.2f}s)"
    )
    preview = df.merge(low, on="sample_id").sort_values(["cluster_id", "sample_id"])
    first = preview[preview["cluster_id"].isin(sorted(set(labels))[:3])] if len(labels) else preview
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "low_quality_clusters", "source", source),
        metadata={
            **table_metadata(
                df, ["sample_id", "cluster_id", "cluster_size", "member_cosine"], table="low_quality_clusters"
            ),
            "clusters": len(result.sizes),
            "algorithm": config.algorithm,
            "mean_member_cosine": float(result.member_cosine.mean()) if len(labels) else 0.0,
            "size_histogram": dg.MetadataValue.json(
                {int(s): int((result.sizes == s).sum()) for s in np.unique(result.sizes)}
            ),
            "plots": dg.MetadataValue.md(
                sizes_and_similarities(
                    result.sizes, result.member_cosine, f"low-quality clusters, {source}", f"clusters {source}"
                )
            ),
            "preview_clusters": preview_md(
                first, n=15, columns=["cluster_id", "member_cosine", "prompt", "completion"]
            ),
            "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in result.notes) or "_(none)_"),
            "embedding_model": embedder.model,
            "embed_seconds": round(embed_s, 2),
            "embed_rows_per_s": round(len(low) / embed_s, 1) if embed_s > 0 else 0.0,
            "embed_model_load_seconds": round(model_load_s, 2),
            "cluster_seconds": round(cluster_s, 3),
        },
    )


@dg.asset(
    code_version=CODE_VERSION,
    partitions_def=source_partitions,
    group_name=GROUP,
    deps=["low_quality_clusters", "low_quality_pool"],
    kinds={"duckdb", "pandas"},
    description="One row per cluster (or per part of an over-long cluster, split in member order, never "
    "truncated): the merged input (members as 'Q: ...' / 'A: ...' in the configured input_style, blank-line "
    "separated), the instruction, member sample_ids in order, "
    "and the input's token count with the policy tokenizer.",
)
def cluster_inputs(
    context: dg.AssetExecutionContext, config: ClusterInputsConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    config = config.resolve(context)
    source = context.partition_key
    members = warehouse.query(
        """
        select c.source, c.cluster_id, c.sample_id, l.prompt, l.completion
        from low_quality_clusters c join low_quality_pool l using (source, sample_id)
        where c.source = ? order by c.cluster_id, c.member_cosine desc, c.sample_id""",
        [source],
    )
    tokenizer = load_tokenizer(config.policy_tokenizer, str(warehouse.artifacts_dir))

    def count_tokens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    df = build_cluster_inputs(members, count_tokens, config.max_input_tokens, style=config.input_style)
    df["source"] = source
    warehouse.replace_partition("cluster_inputs", df, "source", source, column_types=CLUSTER_INPUT_TYPES)
    split = int((df["n_parts"] > 1).sum()) if len(df) else 0
    over = int(df["over_max_tokens"].sum()) if len(df) else 0
    context.log.info(
        f"{source}: {df['cluster_id'].nunique() if len(df) else 0} clusters -> {len(df)} inputs "
        f"({split} rows from split clusters, {over} still over {config.max_input_tokens} tokens)"
    )
    if over:
        context.log.warning(
            f"{over} inputs are longer than {config.max_input_tokens} tokens even alone; kept and flagged over_max_tokens"
        )
    examples = "\n\n---\n\n".join(
        f"**cluster {r.cluster_id}** ({r.n_members} members, {r.input_tokens} tokens)\n\n```\n{r.input_text[:1200]}\n```"
        for r in df.head(3).itertuples()
    )
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "cluster_inputs", "source", source),
        metadata={
            **table_metadata(
                df, ["cluster_id", "part", "n_members", "input_tokens", "input_text"], table="cluster_inputs"
            ),
            "inputs_split_from_long_clusters": split,
            "over_max_tokens": over,
            "max_input_tokens": config.max_input_tokens,
            "mean_input_tokens": float(df["input_tokens"].mean()) if len(df) else 0.0,
            "policy_tokenizer": config.policy_tokenizer,
            "examples": dg.MetadataValue.md(examples or "_(no clusters)_"),
        },
    )


# --------------------------------------------------------------------------- checks


@dg.asset_check(
    asset="low_quality_clusters",
    partitions_def=source_partitions,
    blocking=True,
    description="Every low-quality row of this source is in exactly one cluster.",
)
def clusters_cover_low_rows(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return no_offenders(
        context,
        warehouse,
        """
        with lo as (select source, sample_id from low_quality_pool where source in (select distinct source from low_quality_clusters)),
             c as (select source, sample_id, count(*) n from low_quality_clusters group by 1, 2)
        select coalesce(lo.source, c.source) as source, coalesce(lo.sample_id, c.sample_id) sample_id, coalesce(c.n, 0) times_clustered
        from lo full outer join c using (source, sample_id)
        where c.n is null or c.n <> 1 or lo.sample_id is null""",
        "exact coverage",
        "{n} rows not clustered exactly once",
    )


@dg.asset_check(
    asset="low_quality_clusters",
    partitions_def=source_partitions,
    description="This source's cluster sizes within [min_size, max_size] (default 2..5) if it has >= min_size rows.",
)
def cluster_sizes_in_range(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    # Bounds from the config defaults; a run with other bounds shows here as a warning, not silently.
    lo, hi = ClusteringConfig().min_size, ClusteringConfig().max_size
    sizes = partition_rows(
        context,
        warehouse,
        """
        select source, cluster_id, count(*) size, (select count(*) from low_quality_clusters x where x.source = c.source) as rows
        from low_quality_clusters c group by 1, 2""",
    )
    bad = sizes[(sizes["rows"] >= lo) & ((sizes["size"] < lo) | (sizes["size"] > hi))]
    return dg.AssetCheckResult(
        passed=bad.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"all sizes in [{lo}, {hi}]" if bad.empty else f"{len(bad)} clusters outside [{lo}, {hi}]",
        metadata={
            "size_counts": dg.MetadataValue.json(
                sizes["size"].value_counts().sort_index().to_dict() if len(sizes) else {}
            )
        },
    )


@dg.asset_check(
    asset="cluster_inputs",
    partitions_def=source_partitions,
    description="This source: member ids of cluster_inputs (all parts, in order) equal the cluster table's.",
)
def cluster_inputs_match_clusters(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return no_offenders(
        context,
        warehouse,
        """
        with i as (select source, cluster_id, unnest(member_ids) sample_id from cluster_inputs),
             ic as (select source, cluster_id, sample_id, count(*) n from i group by 1, 2, 3)
        select coalesce(ic.source, c.source) as source, coalesce(ic.cluster_id, c.cluster_id) cluster_id,
               coalesce(ic.sample_id, c.sample_id) sample_id
        from ic full outer join (select * from low_quality_clusters where source in (select distinct source from cluster_inputs)) c
             using (source, cluster_id, sample_id)
        where ic.n is null or ic.n <> 1 or c.sample_id is null""",
        "member ids match",
        "{n} members differ",
    )
