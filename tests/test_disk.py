"""Disk space checked before a run writes: the estimate against what real TRL runs write, and a run that
would not fit failing before its first step (free space is the one thing faked: a full disk cannot be
made safely on a test machine)."""

from pathlib import Path

import dagster as dg
import pytest

from lm_mixup_assets.evaluation import drop_merged_copy
from lm_mixup_assets.lib import disk
from lm_mixup_assets.lib.disk import InsufficientDiskSpace, disk_metadata, plan_training
from lm_mixup_assets.lib.downstream import merge_adapter, run_lora_sft
from lm_mixup_assets.lib.settings.evaluation import LoraSFTSettings
from lm_mixup_assets.lib.settings.training import SFTSettings
from lm_mixup_assets.lib.training import run_sft
from lm_mixup_assets.scaling import failing_on_full_disk

ROWS = [
    {
        "instruction": "Merge the variants.",
        "input": f"Variant: fact {i}.",
        "output": f"Fact {i}.",
        "cot": "",
        "task": "qa",
    }
    for i in range(4)
]
PAIRS = [{"prompt": f"What is {i} plus {i}?", "completion": f"{2 * i}."} for i in range(4)]


def _files_bytes(folder: Path, names: tuple[str, ...]) -> int:
    return sum((folder / n).stat().st_size for n in names if (folder / n).exists())


def _sft(model, out, **overrides):
    # keep_checkpoints: the finished run's checkpoint-N stays whole, to be measured
    settings = dict(
        max_steps=2,
        gradient_accumulation_steps=1,
        logging_steps=1,
        save_steps=1,
        save_total_limit=1,
        keep_checkpoints=True,
    )
    return run_sft(model, ROWS, out, SFTSettings(**{**settings, **overrides}))


def test_a_run_that_would_not_fit_fails_before_its_first_step_and_the_estimate_is_what_it_writes(
    tiny_causal_lm, tmp_path, monkeypatch
):
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1_000_000)  # 1 MB free
    out = tmp_path / "sft"
    with pytest.raises(InsufficientDiskSpace) as err:
        _sft(tiny_causal_lm, out)
    message = str(err.value)
    assert message.startswith("SFT: not enough disk space in " + str(out))
    assert "0.0 GB is free" in message and "LM_MIXUP_SFT_SAVE_TOTAL_LIMIT=1" in message
    assert "LM_MIXUP_SFT_CHECK_DISK_SPACE=false" in message
    assert not list(out.glob("checkpoint-*")) and not (out / "final").exists()  # nothing trained, nothing written

    # the switch: the same run, unchecked, trains; what it wrote is what was estimated
    result = _sft(tiny_causal_lm, out, check_disk_space=False)
    assert result.steps == 2
    plan = result.disk_plan
    written = _files_bytes(Path(result.output_dir) / "checkpoint-2", ("model.safetensors", "optimizer.pt"))
    # weights in fp32 and AdamW's two fp32 moments, counted from the model's parameters (measured: 0.01% apart)
    assert abs(plan["copy_bytes"] - written) <= 0.01 * written
    # save_total_limit 1 with 2 saves: the new checkpoint is written before the old one goes
    assert plan["copies"] == 2 and plan["needed_bytes"] > plan["free_bytes"] == 1_000_000
    assert disk_metadata(plan)["disk_checkpoints_at_once"] == 2


def test_save_only_model_and_adafactor_shrink_the_estimate(tiny_causal_lm, tmp_path):
    from transformers import AutoModelForCausalLM, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())

    def plan(**args):
        base = dict(output_dir=str(tmp_path), max_steps=10, save_steps=5, save_total_limit=None, report_to="none")
        return plan_training(model, TrainingArguments(**{**base, **args}), tmp_path, "SFT")

    tensors = len({id(p) for p in model.parameters()})
    weights += disk.WEIGHT_TENSOR_OVERHEAD * tensors
    adam = plan()
    # fp32 weights: AdamW's two moments are twice their bytes
    assert adam.copy_bytes == weights + 2 * (weights - disk.WEIGHT_TENSOR_OVERHEAD * tensors) + (
        disk.OPTIMIZER_TENSOR_OVERHEAD * tensors
    )
    assert adam.copies == 2 and adam.final_bytes == weights  # steps 5 and 10, nothing rotated
    assert plan(save_only_model=True).copy_bytes == weights
    assert weights < plan(optim="adafactor").copy_bytes < adam.copy_bytes / 2  # factored second moments
    rotating = plan(save_steps=1, save_total_limit=2)  # 10 saves, 2 kept, one more while the next is written
    assert (rotating.copies, rotating.kept) == (3, 2)
    # the peak is 3 checkpoints while saving, or 2 and final/ after the last rotation, whichever is more
    assert rotating.needed_bytes == max(3 * rotating.copy_bytes, 2 * rotating.copy_bytes + weights)
    assert adam.needed_bytes == 2 * adam.copy_bytes + weights  # nothing rotated: both checkpoints and final/
    assert plan(max_steps=-1, num_train_epochs=2, per_device_train_batch_size=2).copies == 1  # unknown rows: 1
    by_rows = plan_training(
        model,
        TrainingArguments(
            output_dir=str(tmp_path), max_steps=-1, num_train_epochs=2, save_steps=3, per_device_train_batch_size=2
        ),
        tmp_path,
        "SFT",
        train_rows=10,
    )
    assert by_rows.copies == 4  # 2 epochs x 5 steps = 10 steps: saves at 3, 6, 9 and 10


def test_lora_estimate_counts_the_adapter_and_a_merge_that_does_not_fit_writes_nothing(
    tiny_causal_lm, tmp_path, monkeypatch
):
    settings = LoraSFTSettings(
        max_steps=2,
        lora_r=4,
        lora_alpha=8,
        max_length=64,
        logging_steps=1,
        save_steps=100,
        use_cpu=True,
        keep_checkpoints=True,
    )
    result = run_lora_sft(tiny_causal_lm, PAIRS, tmp_path / "run", settings)
    written = _files_bytes(Path(result.output_dir) / "checkpoint-2", ("adapter_model.safetensors", "optimizer.pt"))
    # the adapter and its optimizer state, not the base model (measured: 2% apart; a third is per-tensor overhead)
    assert abs(result.disk_plan["copy_bytes"] - written) <= 0.05 * written

    target = tmp_path / "merged"
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1_000)
    with pytest.raises(InsufficientDiskSpace, match=r"merged model .*not enough disk space"):
        merge_adapter(result.checkpoint, target, dtype="bfloat16")
    assert not target.exists() and not target.with_name("merged.tmp").exists()
    monkeypatch.undo()
    merged = merge_adapter(result.checkpoint, target, dtype="bfloat16")
    assert (Path(merged) / "config.json").is_file()
    # once the arm's scores are stored, benchmark_scores deletes the copy, unless keep_merged
    assert drop_merged_copy(merged, result.checkpoint, keep=True) is None and target.is_dir()
    assert drop_merged_copy(merged, merged, keep=False) is None and target.is_dir()  # the asset's own model
    assert drop_merged_copy(merged, result.checkpoint, keep=False) > 0 and not target.exists()


def test_a_full_disk_is_a_dagster_failure_with_its_numbers():
    plan = disk.DiskPlan(
        "SFT",
        "/data/run",
        copy_bytes=18 * 10**9,
        copies=3,
        final_bytes=6 * 10**9,
        present_bytes=0,
        free_bytes=40 * 10**9,
        detail="3 checkpoints",
        kept=2,
    )
    with pytest.raises(dg.Failure) as err, failing_on_full_disk():
        disk.require_space(plan, "Point LM_MIXUP_HOME at a larger disk.")
    assert "writes ~54.0 GB (3 checkpoints; 0.0 GB already there) and 40.0 GB is free" in err.value.description
    assert err.value.metadata["disk_needed_gb"].value == 54.0 and err.value.metadata["disk_free_gb"].value == 40.0


def test_only_what_a_run_replaces_counts_as_present(tmp_path):
    """A resumed run's checkpoints are rotated away and its final model overwritten; what a later step put beside
    them (an evaluation's merged copy) stays, so it is not counted as space the run gets back."""
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "optimizer.pt").write_bytes(b"x" * 1000)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "model.safetensors").write_bytes(b"x" * 10_000)
    assert disk._run_bytes(tmp_path) == 1100


def test_switching_the_disk_check_off_keeps_the_run_key():
    """The check decides nothing a run writes: a finished run is still reused with it off."""
    on, off = SFTSettings(), SFTSettings(check_disk_space=False)
    assert on.values() != off.values() and on.run_values() == off.run_values()
    assert "check_disk_space" not in LoraSFTSettings().run_values()
