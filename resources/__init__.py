"""Resources, built per profile (``LM_MIXUP_PROFILE``): see ``profiles.py``."""

from __future__ import annotations

import dagster as dg

from .judge import JudgeResource
from .profiles import active_profile, lm_mixup_home, settings
from .warehouse import WarehouseResource

__all__ = ["JudgeResource", "WarehouseResource", "build_resources", "active_profile", "settings", "lm_mixup_home"]


def build_resources(profile: str | None = None, home: str | None = None) -> dict:
    """The resource set for a profile; each value already carries its env-var overrides."""
    profile = profile or active_profile()
    warehouse = WarehouseResource(home=str(home or lm_mixup_home()))
    judge_settings = settings("judge", profile)
    if judge_settings["backend"] == "openai":
        # The key is read at run time from the environment, never stored in config.
        judge_settings["api_key"] = dg.EnvVar("OPENAI_API_KEY")
    resources = {
        "warehouse": warehouse,
        "judge": JudgeResource(**judge_settings),
    }
    from .embedder import EmbedderResource
    from .generator import GeneratorResource

    resources["embedder"] = EmbedderResource(**settings("embedder", profile))
    generator_settings = settings("generator", profile)
    if generator_settings["backend"] == "openai":
        generator_settings["api_key"] = dg.EnvVar("OPENAI_API_KEY")
    resources["generator"] = GeneratorResource(**generator_settings)
    # MIXTURE has its own writer (GPT-4o-mini in the paper), apart from the policy that distils.
    writer_settings = settings("mixture_writer", profile)
    if writer_settings["backend"] == "openai":
        writer_settings["api_key"] = dg.EnvVar("OPENAI_API_KEY")
    resources["mixture_writer"] = GeneratorResource(**writer_settings)
    return resources
