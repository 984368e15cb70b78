"""Warehouse housekeeping: a job (and a nightly schedule, off until switched on) that compacts the lake.

Every lake commit writes at least one file or catalog row: cache commits every half second
and partition replacements leave many small files behind. ``compact_warehouse`` moves the
inlined rows into Parquet, merges adjacent small files and deletes the files no snapshot
needs any more (``lib/warehouse.py``, ``maintain``); snapshots are kept unless the run's
config asks to expire old ones, because a training set names the snapshots it was drawn from
(docs/architecture.md, "Snapshots"). On the ``duckdb`` backend it checkpoints the file.
"""

import dagster as dg
from pydantic import Field

from lm_mixup_assets.lib import warehouse as wh
from resources import WarehouseResource


class CompactWarehouseConfig(dg.Config):
    expire_snapshots_older_than_days: float | None = Field(
        None,
        ge=0,
        description="Expire lake snapshots older than this many days, then delete their files. Empty = keep "
        "every snapshot (a training set's recorded snapshots stay readable).",
    )


@dg.op(
    description="Compact the warehouse: flush inlined rows, merge small files, delete unneeded files (ducklake); "
    "checkpoint (duckdb)."
)
def compact_warehouse(
    context: dg.OpExecutionContext, config: CompactWarehouseConfig, warehouse: WarehouseResource
) -> dict:
    # Outside a transaction: DuckLake's maintenance functions commit themselves, and each step is idempotent.
    with warehouse.connect() as con:
        done = wh.retry_on_conflict(
            lambda: wh.maintain(con, config.expire_snapshots_older_than_days), warehouse.lock_timeout_s
        )
    context.log.info(f"{warehouse.location}: {done}")
    context.add_output_metadata({k: dg.MetadataValue.int(v) for k, v in done.items()})
    return done


@dg.job(description="Warehouse housekeeping (compaction of a lake's small files); run it any time, writers keep going.")
def warehouse_maintenance_job():
    compact_warehouse()


warehouse_maintenance_schedule = dg.ScheduleDefinition(
    job=warehouse_maintenance_job,
    cron_schedule="30 3 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Nightly compaction; switch it on in the UI (Automation) once the lake takes regular writes.",
)
