"""Every stage's settings, one typed model per configurable step (see ``base.py`` for how
values resolve: model default < profile preset < environment < launchpad).

One module per stage; the asset, its lib functions and the benchmarks all take these models.
"""

from .base import Choice, SettingsError, StageSettings, budget, env_overrides, env_var, internal, resolve_settings

__all__ = [
    "Choice",
    "SettingsError",
    "budget",
    "StageSettings",
    "env_overrides",
    "env_var",
    "internal",
    "resolve_settings",
]
