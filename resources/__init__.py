"""Resources, built per profile (``LM_MIXUP_PROFILE``): see ``profiles.py``."""

from __future__ import annotations

from pathlib import Path

from lm_mixup_assets.lib.settings.base import env_overrides

from .judge import JudgeResource
from .profiles import PROFILES, active_profile, lm_mixup_home
from .warehouse import WarehouseResource

__all__ = [
    "JudgeResource",
    "WarehouseResource",
    "build_resources",
    "resource_values",
    "warehouse_resource",
    "active_profile",
    "lm_mixup_home",
]


def resource_values(section: str, resource_cls: type, profile: str | None = None) -> dict:
    """One resource section's values: the profile's preset, then ``LM_MIXUP_<SECTION>_<FIELD>`` (pydantic-settings)."""
    profile = profile or active_profile()
    return {
        **PROFILES[profile][section],
        **env_overrides(resource_cls, f"LM_MIXUP_{section.upper()}_", skip=frozenset({"api_key_env"})),
    }


def warehouse_resource(profile: str | None = None, home: str | None = None) -> WarehouseResource:
    """The warehouse of a profile (backend ``duckdb`` | ``ducklake``), with ``LM_MIXUP_WAREHOUSE_<FIELD>`` applied."""
    values = resource_values("warehouse", WarehouseResource, profile)
    return WarehouseResource(**{**values, "home": str(home or values.get("home") or lm_mixup_home())})


def build_resources(profile: str | None = None, home: str | None = None) -> dict:
    """The resource set for a profile; each value already carries its env-var overrides.

    No resource has a key field: a backend switched to ``openai`` (by profile, env var or per run
    in the launchpad) reads its key from the environment variable named by ``api_key_env``
    (``OPENAI_API_KEY``) when it runs, so a key never reaches config or run history.
    """
    from .checkpoint_store import CHECKPOINT_IO_MANAGER, CheckpointIOManager
    from .embedder import EmbedderResource
    from .generator import GeneratorResource

    profile = profile or active_profile()
    warehouse = warehouse_resource(profile, home)
    return {
        "warehouse": warehouse,
        "judge": JudgeResource(**resource_values("judge", JudgeResource, profile)),
        # Vectors are kept per model and text under the home: re-runs embed only what is new.
        "embedder": EmbedderResource(
            **{
                "cache_dir": str(Path(warehouse.home) / "artifacts" / "embedding_cache"),
                **resource_values("embedder", EmbedderResource, profile),
            }
        ),
        "generator": GeneratorResource(**resource_values("generator", GeneratorResource, profile)),
        # MIXTURE has its own writer (GPT-4o-mini in the paper), apart from the policy that distils.
        "mixture_writer": GeneratorResource(**resource_values("mixture_writer", GeneratorResource, profile)),
        # Checkpoint and model values (lib/checkpoints.py) as JSON next to the folders they name.
        CHECKPOINT_IO_MANAGER: CheckpointIOManager(home=warehouse.home),
    }
