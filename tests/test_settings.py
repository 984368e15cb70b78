"""Stage settings: one model per step, presets that validate, resolution at run start, a described launchpad."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from pydantic import Field

import definitions
from lm_mixup_assets.config import STAGE_SETTINGS, launchpad_config, resolved_settings
from lm_mixup_assets.lib.settings.base import Choice, SettingsError, StageSettings, internal
from resources.profiles import PROFILES, RESOURCE_SECTIONS

ROOT = Path(__file__).resolve().parents[1]


class _Layout(Choice):
    reference = "reference"
    chat = "chat"


class _ToySettings(StageSettings):
    preset = "toy_step"
    steps: int = Field(-1, ge=-1, description="Steps; -1 = epochs.")
    layout: _Layout = Field(_Layout.reference, description="Layout.")
    rate: float = Field(2e-5, gt=0, description="Rate.")
    auto: bool | None = internal(None, "Auto-detected.")


_ToyConfig = launchpad_config(_ToySettings)


@dg.asset
def _toy(context: dg.AssetExecutionContext, config: _ToyConfig) -> dg.MaterializeResult:
    settings = config.resolve(context)
    return dg.MaterializeResult(metadata={"steps": settings.steps, "layout": settings.layout, "rate": settings.rate})


def _run(run_config=None):
    return dg.materialize([_toy], run_config={"ops": {"_toy": {"config": run_config or {}}}}, raise_on_error=False)


def test_values_resolve_when_the_run_starts(monkeypatch):
    monkeypatch.delenv("LM_MIXUP_TOY_STEP_STEPS", raising=False)
    meta = _run().asset_materializations_for_node("_toy")[0].metadata
    assert (meta["steps"].value, meta["layout"].value) == (-1, "reference")
    monkeypatch.setenv("LM_MIXUP_TOY_STEP_STEPS", "7")  # set after the asset was defined: still applies
    assert _run().asset_materializations_for_node("_toy")[0].metadata["steps"].value == 7
    meta = _run({"steps": 3, "layout": "chat"}).asset_materializations_for_node("_toy")[0].metadata
    assert (meta["steps"].value, meta["layout"].value) == (3, "chat")  # the launchpad wins over the environment
    recorded = meta["settings"].value  # what the step ran with, and where each value came from
    assert recorded["steps"] == {"value": 3, "from": "launchpad"} and recorded["rate"] == {
        "value": 2e-5,
        "from": "default",
    }


def test_bad_values_fail_with_field_value_and_source(monkeypatch):
    with pytest.raises(dg.DagsterInvalidConfigError, match="not in enum"):  # a choice is checked before the run
        dg.materialize([_toy], run_config={"ops": {"_toy": {"config": {"layout": "alpaca"}}}})
    result = _run({"rate": 0.0})
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "rate=0.0 (from launchpad): Input should be greater than 0" in str(failure.event_specific_data.error)
    monkeypatch.setenv("LM_MIXUP_TOY_STEP_STEPS", "many")
    with pytest.raises(SettingsError, match=r"steps='many' \(from LM_MIXUP_TOY_STEP_STEPS\).*valid integer"):
        resolved_settings(_ToySettings)
    assert "auto" not in _ToyConfig.model_fields  # internal fields stay out of the launchpad


def test_every_profile_preset_validates_against_its_model():
    registered = set(STAGE_SETTINGS)
    for profile, sections in PROFILES.items():
        unknown = set(sections) - registered - set(RESOURCE_SECTIONS)
        assert not unknown, f"{profile}: presets without a settings model: {unknown}"
        for model in STAGE_SETTINGS.values():
            resolved_settings(model, profile)  # raises on a bad preset value or an unknown field
    assert set(PROFILES["paper"]) == set(RESOURCE_SECTIONS)  # the models' defaults are the paper's values


def test_every_config_field_has_a_description():
    missing = []
    for asset in definitions.defs.resolve_asset_graph().assets_defs:
        for op in asset.node_def.iterate_op_defs() if hasattr(asset.node_def, "iterate_op_defs") else [asset.node_def]:
            schema = op.config_schema
            fields = getattr(schema.config_type, "fields", {}) if schema else {}
            missing += [f"{op.name}.{name}" for name, f in fields.items() if not f.description]
    for key, resource in definitions.defs.resources.items():
        fields = getattr(type(resource), "model_fields", {})
        missing += [f"resource {key}.{name}" for name, f in fields.items() if not f.description]
    for model in STAGE_SETTINGS.values():
        missing += [f"{model.__name__}.{name}" for name, f in model.model_fields.items() if not f.description]
    assert not missing, missing


def test_cli_config_validates_before_any_run():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LM_MIXUP_")}
    env.update(LM_MIXUP_PROFILE="demo", LM_MIXUP_SFT_MAX_STEPS="abc", LM_MIXUP_HOME=os.environ.get("LM_MIXUP_HOME", ""))
    env = {k: v for k, v in env.items() if v}
    done = subprocess.run(
        [sys.executable, "-m", "lm_mixup_assets.cli", "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # the code location still loads: nothing read at import
    assert "max_steps='abc' (from LM_MIXUP_SFT_MAX_STEPS)" in done.stderr
    assert "[grpo] GRPOSettings" in done.stdout and "max_completion_length          48" in done.stdout
