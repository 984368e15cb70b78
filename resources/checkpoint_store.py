"""The IO manager for model values: a training asset's ``ModelCheckpoint`` reaches its consumers as an input.

Each value is a small JSON file, ``<home>/artifacts/asset_values/<asset key>/<partition>.json``
(``__unpartitioned__`` for an unpartitioned asset), next to the folders it points at, so a step
in another process or pod (shared ``LM_MIXUP_HOME``) loads what the producing step stored.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from lm_mixup_assets.lib.checkpoints import ModelCheckpoint

CHECKPOINT_IO_MANAGER = "checkpoint_io_manager"
UNPARTITIONED = "__unpartitioned__"
# Input metadata: the consumer can run without the upstream (e.g. a configured model instead)
# and checks the value itself with ``require_checkpoint``.
ALLOW_MISSING = "allow_missing"


def require_checkpoint(value: ModelCheckpoint | None, label: str) -> ModelCheckpoint:
    """``value``, or a clear failure: never materialised, or its folder deleted since."""
    if value is None:
        raise dg.Failure(description=f"{label} has no stored value yet: materialise {label} first")
    if not value.folder_exists():
        raise dg.Failure(
            description=(
                f"{label}'s checkpoint folder {value.path} no longer exists (deleted or moved?): rematerialise {label}"
            )
        )
    return value


class CheckpointIOManager(dg.ConfigurableIOManager):
    """Stores and loads ``ModelCheckpoint`` values as JSON under ``home``'s artifacts folder."""

    home: str = Field(description="The platform home (LM_MIXUP_HOME); values live under artifacts/asset_values/.")

    def value_file(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        root = Path(self.home).expanduser().resolve() / "artifacts" / "asset_values"
        return root.joinpath(*asset_key.path) / f"{partition or UNPARTITIONED}.json"

    def handle_output(self, context: dg.OutputContext, obj: ModelCheckpoint) -> None:
        if not isinstance(obj, ModelCheckpoint):
            raise TypeError(f"{CHECKPOINT_IO_MANAGER} stores ModelCheckpoint values, not {type(obj).__name__}")
        partition = context.asset_partition_key if context.has_asset_partitions else None
        target = self.value_file(context.asset_key, partition)
        target.parent.mkdir(parents=True, exist_ok=True)
        # tmp + os.replace: a reader sees the old value or the new one, never half a file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(obj.to_json())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        context.add_output_metadata({"value_file": dg.MetadataValue.path(str(target))})

    def load_input(self, context: dg.InputContext) -> ModelCheckpoint | None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        label = context.asset_key.to_user_string() + (f"[{partition}]" if partition else "")
        source = self.value_file(context.asset_key, partition)
        value = ModelCheckpoint.from_json(source.read_text(encoding="utf-8")) if source.exists() else None
        if (context.definition_metadata or {}).get(ALLOW_MISSING):
            return value
        return require_checkpoint(value, label)
