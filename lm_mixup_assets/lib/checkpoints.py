"""A trained model as a value: what a training asset hands to the assets that load its checkpoint.

The weights stay a folder under ``artifacts/``; the value says where it is, which files it
was (``fingerprint``), how it was made and from which checkpoint it started. Producing assets
return it, an IO manager stores it as JSON and consumers receive it as a declared input.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from lm_mixup_assets.lib.versions import checkpoint_version

SettingValue = str | int | float | bool


def _now() -> datetime:
    return datetime.now(UTC)


class ModelCheckpoint(BaseModel):
    """One checkpoint or model folder and its provenance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    fingerprint: str  # lib/versions.checkpoint_version of the folder when it was produced
    asset: str  # the producing asset
    steps: int = 0
    wall_seconds: float = 0.0
    device: str = ""
    data_version: str = ""  # the training data's version ("" when nothing was trained)
    created_at: datetime = Field(default_factory=_now)
    # Settings a consumer must match (e.g. the text format a model was trained in).
    training_settings: dict[str, SettingValue] = Field(default_factory=dict)
    # The checkpoint training started from: consumers reach the whole chain through one input.
    started_from: ModelCheckpoint | None = None

    @classmethod
    def of_folder(cls, path: str | Path, asset: str, **fields) -> ModelCheckpoint:
        """The value for an existing folder, its fingerprint computed now."""
        return cls(path=str(path), fingerprint=checkpoint_version(path), asset=asset, **fields)

    def folder_exists(self) -> bool:
        return Path(self.path).is_dir()

    def lineage(self) -> dict[str, ModelCheckpoint]:
        """This checkpoint and every one it started from, by producing asset."""
        chain, node = {}, self
        while node is not None:
            chain.setdefault(node.asset, node)
            node = node.started_from
        return chain

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelCheckpoint:
        return cls.model_validate_json(text)
