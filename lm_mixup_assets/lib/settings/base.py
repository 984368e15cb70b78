"""Stage settings: one typed model per asset step, and how its values resolve.

Every configurable step has exactly one settings model (a pydantic ``StageSettings``
subclass next to the code that uses it): the asset, the lib function and the
benchmarks all take that model. Its defaults are the method's (the paper profile's
values); a profile is a *preset* of it (``resources/profiles.py``), the environment
overrides a preset, and a run's launchpad values override both:

    model default  <  profile preset  <  LM_MIXUP_<PRESET>_<FIELD>  <  launchpad

Resolution happens when a run starts (``resolve_settings``), never at import, so an
environment variable set after the code location loaded still applies, and a bad
value fails with the field, the value, where it came from and the reason.
Environment values are parsed by pydantic-settings (ints, floats, booleans, choices).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "StageSettings",
    "Choice",
    "SettingsError",
    "env_var",
    "env_overrides",
    "resolve_settings",
    "internal",
    "budget",
]


class Choice(str, enum.Enum):
    """Base of the settings' choice types: members compare equal to their string value
    (``Layout.chat == "chat"``) and print as it, so lib code keeps comparing strings."""

    def __str__(self) -> str:
        return str(self.value)

    __format__ = lambda self, spec: format(str(self.value), spec)  # noqa: E731  (f-strings show the value)


class StageSettings(BaseModel):
    """Base of every stage's settings model. ``preset`` names the profile section and the
    environment prefix (``LM_MIXUP_<PRESET>_``)."""

    # Choices are stored as their plain strings: lib code, DuckDB columns and JSON see "chat", not an enum.
    model_config = ConfigDict(extra="forbid", validate_default=True, use_enum_values=True)
    preset: ClassVar[str] = ""
    # Where each value came from (default, profile, an env var, launchpad); set by resolve_settings.
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """Plain values (choices as their strings), as JSON and run metadata want them."""
        return self.model_dump(mode="json")


def internal(default: Any, description: str, **kwargs) -> Any:
    """A field that is part of the model (and documented) but not shown in the launchpad:
    auto-detected switches and pass-through dicts a run rarely sets."""
    return Field(default, description=description, json_schema_extra={"launchpad": False}, **kwargs)


def budget(default: float, what: str) -> Any:
    """A failure-budget field (``what``: the calls it covers)."""
    return Field(
        default,
        ge=0.0,
        le=1.0,
        description=(
            f"Failure budget: the materialisation fails when more than this share of {what} fails. The rows are "
            "written first, with their status; successful answers stay cached, so a re-run after fixing the cause "
            "pays only for the failures. 1.0 = never fail on failed calls."
        ),
    )


class SettingsError(ValueError):
    """A settings value failed validation: names the field, the value and its source."""


def env_var(model: type[StageSettings], field: str) -> str:
    return f"LM_MIXUP_{model.preset.upper()}_{field.upper()}"


def env_overrides(model: type[BaseModel], prefix: str, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields of ``model`` set in the environment as ``<prefix><FIELD>``, parsed by pydantic-settings.

    Only variables that are present count; a value that does not parse raises ``SettingsError``
    naming the variable."""
    names = {k.upper() for k in os.environ}
    present = {n for n in model.model_fields if n not in skip and f"{prefix}{n}".upper() in names}
    if not present:
        return {}
    fields = {name: (model.model_fields[name].annotation | None, None) for name in present}
    reader = create_model(f"{model.__name__}Env", __base__=BaseSettings, **fields)
    reader.model_config = SettingsConfigDict(env_prefix=prefix, case_sensitive=False, extra="ignore")
    try:
        values = reader().model_dump()
    except ValidationError as exc:
        raise SettingsError(_explain(exc, {n: f"{prefix}{n}".upper() for n in present}, from_env=True)) from None
    return {k: v for k, v in values.items() if k in present}


def resolve_settings(
    model: type[StageSettings], preset: Mapping[str, Any] | None = None, explicit: Mapping[str, Any] | None = None
) -> tuple[StageSettings, dict[str, str]]:
    """Resolve one step's settings: model defaults < ``preset`` < environment < ``explicit``.

    Returns the validated model and, per field, where its value came from
    (``default``, ``profile``, the environment variable's name, or ``launchpad``)."""
    preset = dict(preset or {})
    unknown = sorted(set(preset) - set(model.model_fields))
    if unknown:
        raise SettingsError(f"{model.__name__}: the profile preset {model.preset!r} sets unknown fields {unknown}")
    env = env_overrides(model, f"LM_MIXUP_{model.preset.upper()}_")
    explicit = {k: v for k, v in (explicit or {}).items() if v is not None}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {name: "default" for name in model.model_fields}
    for layer, label in ((preset, "profile"), (env, None), (explicit, "launchpad")):
        for name, value in layer.items():
            values[name] = value
            sources[name] = label or env_var(model, name)
    try:
        settings = model.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_explain(exc, sources, values=values, name=model.__name__)) from None
    settings._sources = sources
    return settings, sources


def _explain(
    exc: ValidationError,
    sources: Mapping[str, str],
    from_env: bool = False,
    values: Mapping[str, Any] | None = None,
    name: str = "",
) -> str:
    lines = []
    env = {k.upper(): v for k, v in os.environ.items()} if from_env else {}
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "(model)"
        source = sources.get(field, "")
        shown = env.get(source, "") if from_env else (values or {}).get(field, err.get("input"))
        where = f" (from {source})" if source and source != "default" else ""
        lines.append(f"{field}={shown!r}{where}: {err['msg']}")
    head = f"{name} settings are invalid" if name else "settings from the environment are invalid"
    return head + ": " + "; ".join(lines)
