"""The launchpad side of stage settings (``lib/config.py``).

``launchpad_config(Model)`` derives a ``dg.Config`` from a settings model: the same
fields, types and descriptions, each optional with ``null`` meaning "the profile's
value" — so the launchpad shows every field with its description (including the
demo and paper values and the environment variable that overrides it), a choice
field is a dropdown Dagster checks before the run starts, and the values a user
leaves empty resolve when the run starts. ``config.resolve(context)`` returns the
validated model, logs what is not at its default, and adds a ``settings``
entry to the materialisation's metadata (every value and where it came from), so
the run history records the values the step really ran with.
"""

from __future__ import annotations

import json
import typing
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field, create_model

from lm_mixup_assets.lib.settings.base import SettingsError, StageSettings, env_var, resolve_settings
from resources.profiles import PROFILES, active_profile

__all__ = ["launchpad_config", "StageConfig", "resolved_settings", "settings_metadata", "STAGE_SETTINGS"]

# Every settings model an asset takes, by preset name (filled as the stage modules load; `lm-mixup config`).
STAGE_SETTINGS: dict[str, type[StageSettings]] = {}


def resolved_settings(
    model: type[StageSettings], profile: str | None = None, explicit: dict | None = None
) -> tuple[StageSettings, dict[str, str]]:
    """``model`` resolved for ``profile`` (default: ``LM_MIXUP_PROFILE``) and the environment, now."""
    profile = profile or active_profile()
    return resolve_settings(model, PROFILES[profile].get(model.preset, {}), explicit)


class StageConfig(dg.Config):
    """Base of every launchpad config derived by ``launchpad_config``."""

    settings_model: ClassVar[type[StageSettings]]

    def resolve(self, context: dg.AssetExecutionContext | None = None) -> Any:
        """The step's settings for this run (a ``settings_model`` instance); a bad value fails the run
        before the step does any work, naming the field, the value and where it came from."""
        try:
            settings, sources = resolved_settings(self.settings_model, explicit=self.model_dump())
        except SettingsError as exc:
            raise dg.Failure(description=str(exc)) from None
        if context is not None:
            changed = {k: v for k, v in settings.values().items() if sources[k] != "default"}
            context.log.info(
                f"{self.settings_model.preset} settings ({active_profile()} profile), not at their "
                f"default: " + json.dumps(changed, default=str)
            )
            # Every output of the step records the values it ran with (merged into its materialisation).
            for output in context.op_execution_context.selected_output_names:
                context.add_output_metadata(settings_metadata(settings), output_name=output)
        return settings


def settings_metadata(settings: StageSettings) -> dict[str, dg.MetadataValue]:
    """A step's resolved settings and where each value came from, for its materialisation's metadata."""
    sources = getattr(settings, "_sources", None) or {}
    return {
        "settings": dg.MetadataValue.json(
            {k: {"value": v, "from": sources.get(k, "default")} for k, v in settings.values().items()}
        )
    }


def _launchpad_type(annotation: Any) -> Any:
    """The field's type for Dagster: ``X | None`` whatever ``X`` is (null = the profile's value)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType) and len(args) == 1:
        annotation = args[0]
    return annotation | None


def describe(model: type[StageSettings], name: str) -> str:
    """The launchpad description: the model's text, then the default, each profile's value, the env var."""
    field = model.model_fields[name]
    text = (field.description or "").rstrip()

    def shown(v: Any) -> str:
        return json.dumps(v.value if hasattr(v, "value") else v, default=str)

    per_profile = ", ".join(
        f"{p} {shown(PROFILES[p].get(model.preset, {}).get(name, field.default))}" for p in PROFILES
    )
    return f"{text} Default {shown(field.default)}; by profile: {per_profile}. Env: {env_var(model, name)}."


def launchpad_config(model: type[StageSettings]) -> type[StageConfig]:
    """The ``dg.Config`` of an asset whose settings are ``model`` (see the module docstring)."""
    fields = {}
    for name, field in model.model_fields.items():
        if (field.json_schema_extra or {}).get("launchpad") is False:
            continue
        fields[name] = (_launchpad_type(field.annotation), Field(None, description=describe(model, name)))
    name = model.__name__.removesuffix("Settings") + "Config"
    config = create_model(name, __base__=StageConfig, __doc__=model.__doc__, **fields)
    config.settings_model = model
    STAGE_SETTINGS[model.preset] = model
    return config
