"""Settings of the pool stage: ingesting the sources, rating them, splitting them by quality."""

from __future__ import annotations

from pydantic import Field

from .base import StageSettings, budget


class IngestSettings(StageSettings):
    """Reading one source of the manifest into ``raw_pool`` (its partition)."""

    preset = "pool"
    manifest: str = Field(
        "paper",
        min_length=1,
        description=(
            "The pool manifest: a packaged name (demo, paper) or a YAML file listing the sources. The profile's (or "
            "LM_MIXUP_POOL_MANIFEST's) manifest also fixes the source partitions when the code location loads; a "
            "manifest chosen per run must contain the partition's source."
        ),
    )
    max_row_chars: int = Field(
        200_000,
        ge=1,
        description=(
            "A row whose prompt plus completion is longer than this is rejected (raw_pool_rejections) with the reason."
        ),
    )
    max_rejected_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "Fail the ingest when more than this share of a source's rows is rejected (nothing is written then)."
        ),
    )


class RatedPoolSettings(StageSettings):
    """Rating one source with the judge."""

    preset = "rated_pool"
    max_failed_fraction: float = budget(
        0.05, "the source's rows the judge could not rate (api_error, or parse_error after the re-asks)"
    )
