"""Resources, built per profile (``LM_MIXUP_PROFILE``): see ``profiles.py``."""

from __future__ import annotations

from .judge import JudgeResource
from .profiles import active_profile, lm_mixup_home, settings
from .warehouse import WarehouseResource

__all__ = ["JudgeResource", "WarehouseResource", "build_resources", "active_profile", "settings", "lm_mixup_home"]


def build_resources(profile: str | None = None, home: str | None = None) -> dict:
    """The resource set for a profile; each value already carries its env-var overrides.

    No resource has a key field: a backend switched to ``openai`` (by profile, env var or per run
    in the launchpad) reads its key from the environment variable named by ``api_key_env``
    (``OPENAI_API_KEY``) when it runs, so a key never reaches config or run history.
    """
    profile = profile or active_profile()
    warehouse = WarehouseResource(home=str(home or lm_mixup_home()))
    resources = {
        "warehouse": warehouse,
        "judge": JudgeResource(**settings("judge", profile)),
    }
    from .embedder import EmbedderResource
    from .generator import GeneratorResource

    resources["embedder"] = EmbedderResource(**settings("embedder", profile))
    resources["generator"] = GeneratorResource(**settings("generator", profile))
    # MIXTURE has its own writer (GPT-4o-mini in the paper), apart from the policy that distils.
    resources["mixture_writer"] = GeneratorResource(**settings("mixture_writer", profile))
    return resources
