"""Jobs: what a person launches from the UI or the CLI (`dg launch --job NAME --partition KEY`).

The whole method, in order (``lm-mixup demo`` runs exactly this):

1. ``per_source_job`` for every source (a backfill over ``[source]``): ingest, rate, split, cluster;
2. ``all_sources_job``: the pool summary, MIXTURE, and the distiller's SFT + GRPO training;
3. ``distill_job`` for every source: distil the clusters, re-rate, keep the high ones;
4. ``long_tail_job``: rank the original and distilled high rows by rarity;
5. ``per_arm_job`` for every arm (a backfill over ``[arm]``): training set, downstream model, benchmark scores;
6. ``report_job``: the base model's scores and the report over all arms.
"""

import dagster as dg

PER_SOURCE_JOB = "per_source_job"
ALL_SOURCES_JOB = "all_sources_job"
DISTILL_JOB = "distill_job"
LONG_TAIL_JOB = "long_tail_job"
TRAINING_SETS_JOB = "training_sets_job"
PER_ARM_JOB = "per_arm_job"
REPORT_JOB = "report_job"

# Assets that are not per source: refreshed after the per-source partitions exist.
_cross_source = dg.AssetSelection.assets("pool_summary") | dg.AssetSelection.groups("mixture", "training")
_per_arm = dg.AssetSelection.assets("training_sets", "downstream_models", "benchmark_scores")

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
# Everything partitioned by source that comes before the distiller: backfill it over all sources.
per_source_job = dg.define_asset_job(
    PER_SOURCE_JOB,
    selection=dg.AssetSelection.groups("pool", "clusters") - _cross_source,
    description="Ingest, rate, split and cluster one source partition. Backfill it over all sources.",
)
all_sources_job = dg.define_asset_job(
    ALL_SOURCES_JOB,
    selection=_cross_source,
    description="Everything not partitioned by source: the pool summary, MIXTURE and the distiller's training.",
)
distill_job = dg.define_asset_job(
    DISTILL_JOB, selection=dg.AssetSelection.groups("distill"),
    description="Distil one source's clusters with the trained distiller, re-rate, keep the high ones. "
    "Backfill it over all sources once grpo_checkpoint exists.",
)
long_tail_job = dg.define_asset_job(
    LONG_TAIL_JOB, selection=dg.AssetSelection.assets("long_tail_scores"),
    description="Rank the original and distilled high-quality rows by long-tail score (after every source is distilled).",
)
training_sets_job = dg.define_asset_job(
    TRAINING_SETS_JOB, selection=dg.AssetSelection.assets("training_sets"),
    description="One training set per arm (mixup/original/random/low recipes). Backfill it over all arms.",
)
per_arm_job = dg.define_asset_job(
    PER_ARM_JOB, selection=_per_arm,
    description="For one arm: its training set, the downstream LoRA fine-tune and its lm-eval scores. Backfill over all arms.",
)
report_job = dg.define_asset_job(
    REPORT_JOB, selection=dg.AssetSelection.assets("base_model_scores", "benchmark_report"),
    description="Score the untuned base model and compare every evaluated arm (after per_arm_job).",
)
# The whole source-partitioned graph for one source, with the unpartitioned assets refreshed in the same run.
# (the per-arm assets are partitioned by arm: per_arm_job.)
lm_mixup_job = dg.define_asset_job(
    "lm_mixup_job",
    selection=dg.AssetSelection.all() - _per_arm,
    description="The whole graph for one source partition (plus the cross-source assets); per-arm assets: per_arm_job.",
)

jobs = [pool_job, clusters_job, mixture_job, training_job, per_source_job, all_sources_job, distill_job,
        long_tail_job, training_sets_job, per_arm_job, report_job, lm_mixup_job]
