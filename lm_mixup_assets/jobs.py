"""Jobs: what a person launches from the UI or the CLI."""

import dagster as dg

PER_SOURCE_JOB = "per_source_job"
ALL_SOURCES_JOB = "all_sources_job"

# Everything that is partitioned by source, in dependency order, for one source.
per_source_job = dg.define_asset_job(
    PER_SOURCE_JOB,
    selection=dg.AssetSelection.all().required_multi_asset_neighbors() & dg.AssetSelection.groups("pool", "clusters")
    - dg.AssetSelection.assets("pool_summary"),
    description="Ingest, rate, split (and cluster, when built) one source partition. Backfill it over all sources.",
)

# The cross-source assets, after the per-source partitions exist.
all_sources_job = dg.define_asset_job(
    ALL_SOURCES_JOB,
    selection=dg.AssetSelection.assets("pool_summary"),
    description="Cross-source summaries; run after per_source_job has materialised the sources you want.",
)

jobs = [per_source_job, all_sources_job]
