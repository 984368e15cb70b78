"""The one Dagster code location: every stage's assets, checks, jobs and resources."""

import dagster as dg

from lm_mixup_assets import (
    clusters,
    distill,
    evaluation,
    jobs,
    maintenance,
    mixture,
    pool,
    selection,
    sql_assets,
    training,
)
from lm_mixup_assets.scaling import select_executor
from resources import build_resources

defs = dg.Definitions(
    assets=[
        *dg.load_assets_from_modules([pool, clusters, mixture, training, distill, selection, evaluation]),
        *sql_assets.sql_model_assets,
    ],
    asset_checks=dg.load_asset_checks_from_modules([pool, clusters, mixture, training, distill, selection, evaluation]),
    jobs=[*jobs.jobs, maintenance.warehouse_maintenance_job],
    schedules=[maintenance.warehouse_maintenance_schedule],
    resources=build_resources(),
    executor=select_executor(),
)
