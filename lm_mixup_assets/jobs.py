"""Jobs: what a person launches from the UI or the CLI (`dg launch --job NAME --partition SOURCE`)."""

import dagster as dg

PER_SOURCE_JOB = "per_source_job"
ALL_SOURCES_JOB = "all_sources_job"

# Assets that are not per source: refreshed after the per-source partitions exist.
_cross_source = dg.AssetSelection.assets("pool_summary") | dg.AssetSelection.groups("mixture", "training")

pool_job = dg.define_asset_job(
    "pool_job", selection=dg.AssetSelection.groups("pool") - _cross_source,
    description="Ingest, rate and split one source partition.",
)
clusters_job = dg.define_asset_job(
    "clusters_job", selection=dg.AssetSelection.groups("clusters"),
    description="Embed and cluster one source's low-quality rows (needs the pool partition).",
)
mixture_job = dg.define_asset_job(
    "mixture_job", selection=dg.AssetSelection.groups("mixture"),
    description="Build the MIXTURE training set and the rating library from encyclopedic text.",
)
training_job = dg.define_asset_job(
    "training_job", selection=dg.AssetSelection.groups("training"),
    description="Train the distiller (SFT, then GRPO) and evaluate it on the MIXTURE test split.",
)
# Everything partitioned by source, in dependency order, for one source: backfill it over all sources.
per_source_job = dg.define_asset_job(
    PER_SOURCE_JOB,
    selection=dg.AssetSelection.groups("pool", "clusters") - _cross_source,
    description="Every per-source stage for one source partition. Backfill it over all sources.",
)
# The cross-source assets, after the per-source partitions exist.
all_sources_job = dg.define_asset_job(
    ALL_SOURCES_JOB,
    selection=_cross_source,
    description="Everything not partitioned by source: the pool summary, MIXTURE and the distiller's training.",
)
# The whole graph for one source; its unpartitioned assets are refreshed in the same run.
lm_mixup_job = dg.define_asset_job(
    "lm_mixup_job",
    selection=dg.AssetSelection.all(),
    description="The whole graph built so far, for one source partition (plus the cross-source assets).",
)

jobs = [pool_job, clusters_job, mixture_job, training_job, per_source_job, all_sources_job, lm_mixup_job]
