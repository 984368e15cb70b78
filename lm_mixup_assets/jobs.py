"""Jobs: what a person launches from the UI or the CLI (`dg launch --job NAME --partition KEY`).

The whole method, in order (``lm-mixup demo`` runs exactly this):

1. ``per_source_job`` for every source (a backfill over ``[source]``): ingest, rate, split, cluster;
2. ``all_sources_job``: the pool summary, MIXTURE, and the distiller's SFT + GRPO training;
3. ``distill_job`` for every source: distil the clusters, re-rate, keep the high ones;
4. ``long_tail_job``: rank the original and distilled high rows by rarity; reserve the held-out rows;
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
    "pool_job",
    selection=dg.AssetSelection.groups("pool") - _cross_source,
    description="One stage (pool): ingest, rate and split one source partition. In the method's order this is part "
    "of step 1, per_source_job.",
)
clusters_job = dg.define_asset_job(
    "clusters_job",
    selection=dg.AssetSelection.groups("clusters"),
    description="One stage (clusters): embed and cluster one source's low-quality rows (needs the pool partition). "
    "Part of step 1, per_source_job.",
)
mixture_job = dg.define_asset_job(
    "mixture_job",
    selection=dg.AssetSelection.groups("mixture"),
    description="One stage (mixture): build the MIXTURE training set and the rating library from encyclopedic text. "
    "Part of step 2, all_sources_job.",
)
training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.groups("training"),
    description="One stage (training): train the distiller (SFT, then GRPO) and evaluate it on the MIXTURE test split. "
    "Part of step 2, all_sources_job.",
)
# Everything partitioned by source that comes before the distiller: backfill it over all sources.
per_source_job = dg.define_asset_job(
    PER_SOURCE_JOB,
    selection=dg.AssetSelection.groups("pool", "clusters") - _cross_source,
    description="Step 1 of 6 (per source; backfill it over all sources): ingest, rate, split and cluster one source. "
    "Next: all_sources_job.",
)
all_sources_job = dg.define_asset_job(
    ALL_SOURCES_JOB,
    selection=_cross_source,
    description="Step 2 of 6 (after per_source_job for every source): the pool summary, MIXTURE and the "
    "distiller's training. Next: distill_job per source.",
)
distill_job = dg.define_asset_job(
    DISTILL_JOB,
    selection=dg.AssetSelection.groups("distill"),
    description="Step 3 of 6 (per source; backfill it over all sources once grpo_checkpoint exists): distil the "
    "source's clusters with the trained distiller, re-rate, keep the high ones. Next: long_tail_job.",
)
long_tail_job = dg.define_asset_job(
    LONG_TAIL_JOB,
    selection=dg.AssetSelection.assets("long_tail_scores", "heldout_instructions"),
    description="Step 4 of 6 (after distill_job for every source): rank the original and distilled high-quality rows "
    "by long-tail score, and hold out the high-quality rows the evaluation scores (no training set gets them). "
    "Next: per_arm_job per arm.",
)
training_sets_job = dg.define_asset_job(
    TRAINING_SETS_JOB,
    selection=dg.AssetSelection.assets("training_sets"),
    description="Only the training sets of step 5: one per arm (mixup/original/random/low recipes), exported as "
    "JSONL. Backfill it over all arms.",
)
per_arm_job = dg.define_asset_job(
    PER_ARM_JOB,
    selection=_per_arm,
    description="Step 5 of 6 (per arm; backfill it over all arms): the arm's training set, the downstream LoRA "
    "fine-tune and its lm-eval scores. Next: report_job.",
)
report_job = dg.define_asset_job(
    REPORT_JOB,
    selection=dg.AssetSelection.assets("base_model_scores", "benchmark_report"),
    description="Step 6 of 6 (after per_arm_job for every arm): score the untuned base model and compare every "
    "evaluated arm; the report shows the funnel per source too.",
)
# The whole source-partitioned graph for one source, with the unpartitioned assets refreshed in the same run.
# (the per-arm assets are partitioned by arm: per_arm_job.)
lm_mixup_job = dg.define_asset_job(
    "lm_mixup_job",
    selection=dg.AssetSelection.all() - _per_arm,
    description="Steps 1-4 in one run for one source partition (plus the cross-source assets); the per-arm assets "
    "are per_arm_job's (step 5).",
)

jobs = [
    pool_job,
    clusters_job,
    mixture_job,
    training_job,
    per_source_job,
    all_sources_job,
    distill_job,
    long_tail_job,
    training_sets_job,
    per_arm_job,
    report_job,
    lm_mixup_job,
]
