"""The ``training_checkpoints`` registry: where each training asset's latest checkpoint is.

Shared by the stages that produce checkpoints (training) and those that load them
(distill, training's own evaluation), so that no stage module imports another. A GPU
pod writes the checkpoint files; the producing asset writes the row. (Passing the
paths as asset values instead is planned: issue 14, item 2.)
"""

from __future__ import annotations

import dagster as dg
import pandas as pd

from resources import WarehouseResource


def checkpoint_path(warehouse: WarehouseResource, asset: str) -> str:
    """The latest checkpoint folder of ``asset``; a clear failure when it was never materialised."""
    rows = warehouse.query("select path from training_checkpoints where asset = ?", [asset])
    if rows.empty:
        raise dg.Failure(description=f"{asset} has no checkpoint yet: materialise it first")
    return rows["path"].iat[0]


def record_checkpoint(warehouse: WarehouseResource, asset: str, path: str, data_version: str, result) -> None:
    """One row per training asset: its latest checkpoint's path, data version, steps, wall time and device."""
    row = pd.DataFrame([{"asset": asset, "path": path, "data_version": data_version, "steps": result.steps,
                         "wall_seconds": round(result.wall_seconds, 2), "device": result.device,
                         "created_at": pd.Timestamp.now("UTC").tz_localize(None)}])
    warehouse.replace_partition("training_checkpoints", row, "asset", asset)
