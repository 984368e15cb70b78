"""Checkpoint values (lib/checkpoints.py) and the IO manager that hands them from asset to asset."""

import json
import shutil

import dagster as dg
import pytest

from lm_mixup_assets.lib.checkpoints import ModelCheckpoint
from lm_mixup_assets.lib.versions import checkpoint_version
from resources import build_resources
from resources.checkpoint_store import (
    ALLOW_MISSING,
    CHECKPOINT_IO_MANAGER,
    UNPARTITIONED,
    CheckpointIOManager,
)

ARMS = dg.StaticPartitionsDefinition(["a", "b"])


def model_folder(path, weights=b"w" * 8):
    """A checkpoint folder as training leaves one: config and weights (what the fingerprint reads)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_a_checkpoint_value_round_trips_through_json_with_its_chain(tmp_path):
    base = ModelCheckpoint.of_folder(model_folder(tmp_path / "base"), "base_policy")
    sft = ModelCheckpoint.of_folder(
        model_folder(tmp_path / "sft", b"s" * 9),
        "sft_checkpoint",
        steps=2,
        wall_seconds=1.5,
        device="cpu",
        data_version="abc",
        started_from=base,
        training_settings={"chat_template": "none"},
    )
    back = ModelCheckpoint.from_json(sft.to_json())
    assert back == sft and back.started_from == base and back.created_at == sft.created_at
    assert list(back.lineage()) == ["sft_checkpoint", "base_policy"]
    assert sft.fingerprint == checkpoint_version(tmp_path / "sft") != base.fingerprint  # the data version
    with pytest.raises(ValueError, match="unknown_field"):  # a value from another layout is refused, not guessed
        ModelCheckpoint.from_json(json.dumps({"path": "p", "fingerprint": "f", "asset": "a", "unknown_field": 1}))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ModelCheckpoint.of_folder(tmp_path / "nowhere", "base_policy")


def test_values_flow_between_assets_by_partition(tmp_path):
    home = tmp_path / "home"
    model_folder(tmp_path / "base")
    for arm in ARMS.get_partition_keys():
        model_folder(tmp_path / "tuned" / arm, arm.encode() * 8)
    received = {}

    @dg.asset(io_manager_key=CHECKPOINT_IO_MANAGER)
    def base() -> dg.Output[ModelCheckpoint]:
        return dg.Output(ModelCheckpoint.of_folder(tmp_path / "base", "base"))

    @dg.asset(io_manager_key=CHECKPOINT_IO_MANAGER, partitions_def=ARMS)
    def tuned(context: dg.AssetExecutionContext, base: ModelCheckpoint) -> ModelCheckpoint:
        return ModelCheckpoint.of_folder(tmp_path / "tuned" / context.partition_key, "tuned", started_from=base)

    @dg.asset(partitions_def=ARMS)
    def scored(context: dg.AssetExecutionContext, tuned: ModelCheckpoint, base: ModelCheckpoint) -> None:
        received[context.partition_key] = (tuned, base)

    resources = {CHECKPOINT_IO_MANAGER: build_resources(profile="demo", home=str(home))[CHECKPOINT_IO_MANAGER]}
    assert dg.materialize([base], resources=resources).success
    for arm in ARMS.get_partition_keys():
        assert dg.materialize(
            [base, tuned, scored], selection=[tuned, scored], resources=resources, partition_key=arm
        ).success
    values = home / "artifacts" / "asset_values"
    assert sorted(p.relative_to(values).as_posix() for p in values.rglob("*") if p.is_file()) == [
        "base/__unpartitioned__.json",
        "tuned/a.json",
        "tuned/b.json",
    ]
    stored_b = ModelCheckpoint.from_json((values / "tuned" / "b.json").read_text())
    assert received["b"][0] == stored_b and stored_b.path == str(tmp_path / "tuned" / "b")
    assert received["a"][0].path == str(tmp_path / "tuned" / "a") and received["a"][1] == stored_b.started_from
    assert received["a"][1].path == str(tmp_path / "base")


def _input(io: CheckpointIOManager, key: str, partition: str | None = None, **metadata):
    ctx = dg.build_input_context(
        asset_key=dg.AssetKey(key),
        partition_key=partition,
        asset_partitions_def=ARMS if partition else None,
        definition_metadata=metadata,
    )
    return io.load_input(ctx)


def _store(io: CheckpointIOManager, key: str, value, partition: str | None = None):
    ctx = dg.build_output_context(
        asset_key=dg.AssetKey(key), partition_key=partition, asset_partitions_def=ARMS if partition else None
    )
    io.handle_output(ctx, value)


def test_loading_fails_clearly_when_never_materialised_or_deleted(tmp_path):
    io = CheckpointIOManager(home=str(tmp_path / "home"))
    with pytest.raises(dg.Failure, match=r"tuned\[b\] has no stored value yet: materialise tuned\[b\] first"):
        _input(io, "tuned", "b")
    with pytest.raises(dg.Failure, match="base has no stored value yet: materialise base first"):
        _input(io, "base")
    assert _input(io, "base", **{ALLOW_MISSING: True}) is None  # the consumer decides (a configured model)

    folder = model_folder(tmp_path / "tuned-b")
    value = ModelCheckpoint.of_folder(folder, "tuned")
    _store(io, "tuned", value, "b")
    assert _input(io, "tuned", "b") == value
    stored = io.value_file(dg.AssetKey("tuned"), "b")
    assert stored.parent.name == "tuned" and [p.name for p in stored.parent.iterdir()] == ["b.json"]  # no tmp left
    assert io.value_file(dg.AssetKey("base"), None).name == f"{UNPARTITIONED}.json"
    shutil.rmtree(folder)
    with pytest.raises(dg.Failure, match=r"tuned\[b\]'s checkpoint folder .*tuned-b no longer exists"):
        _input(io, "tuned", "b")
    with pytest.raises(TypeError, match="stores ModelCheckpoint values"):
        _store(io, "tuned", {"path": str(folder)}, "a")
