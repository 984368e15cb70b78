"""Disk space a run will write, checked before it starts, so a full disk fails the first minute, not hour three.

A full fine-tune checkpoint holds the weights and the optimizer state: for the paper's 1.5B distiller in fp32
with AdamW that is ~6 GB of weights and ~12 GB of moments per ``checkpoint-N`` folder, and the Trainer writes a
new one before it deletes the oldest (``save_total_limit`` + 1 on disk at once). A merged 8B model for vLLM is
~16 GB per arm. ``plan_training`` and ``plan_model_copy`` estimate what a run adds from the loaded model's own
parameters; ``require_space`` compares it with what is free where it writes and raises ``InsufficientDiskSpace``
(the numbers and what to change) when it would not fit.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GB = 1e9
HEADROOM = 1.05  # estimates leave out small files (tokenizer, trainer state, RNG state); 5% covers them
# Bytes a checkpoint spends per tensor besides its data (measured: ~950 per tensor with AdamW, the safetensors
# header entry and the pickled optimizer state's): nothing for a large model, a third of a tiny adapter's files.
WEIGHT_TENSOR_OVERHEAD = 128
OPTIMIZER_TENSOR_OVERHEAD = 896
RUN_FOLDERS = ("final", "adapter")  # where a run saves its model (SFT and GRPO: final/; LoRA: adapter/)


class InsufficientDiskSpace(OSError):
    """The run would write more than the disk under its folder has free."""

    def __init__(self, message: str, plan: DiskPlan):
        super().__init__(message)
        self.plan = plan


@dataclass(frozen=True)
class DiskPlan:
    """What a run writes under ``folder`` at its peak, less ``present_bytes`` it will overwrite or rotate away (a
    resumed run's checkpoints): ``copies`` x ``copy_bytes`` while a checkpoint is saved (the new one before the
    oldest is deleted), or ``kept`` checkpoints and the ``final_bytes`` model after the last rotation, whichever is
    more. A model copy is one ``copy_bytes``."""

    what: str
    folder: str
    copy_bytes: int
    copies: int
    final_bytes: int
    present_bytes: int
    free_bytes: int
    detail: str = ""
    kept: int = 0

    @property
    def needed_bytes(self) -> int:
        peak = max(self.copy_bytes * self.copies, self.copy_bytes * self.kept + self.final_bytes)
        return max(0, peak - self.present_bytes)

    @property
    def fits(self) -> bool:
        return self.needed_bytes * HEADROOM <= self.free_bytes

    def to_dict(self) -> dict[str, Any]:
        """The plan in bytes (what a run's result keeps); ``disk_metadata`` turns it into GB figures."""
        return {**asdict(self), "needed_bytes": self.needed_bytes}

    def metadata(self) -> dict[str, Any]:
        return disk_metadata(self.to_dict())


def disk_metadata(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan's figures for an asset's metadata, in GB (MB precision); {} for no plan (a run reused as it was)."""
    if not plan:
        return {}
    return {
        "disk_needed_gb": round(plan["needed_bytes"] / GB, 3),
        "disk_free_gb": round(plan["free_bytes"] / GB, 3),
        "disk_checkpoint_gb": round(plan["copy_bytes"] / GB, 3),
        "disk_checkpoints_at_once": plan["copies"],
    }


def free_bytes(folder: str | Path) -> int:
    """Free bytes on the file system that holds ``folder`` (its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def folder_bytes(folder: str | Path) -> int:
    """Bytes of the files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed while walking
                pass
    return total


def _unique_parameters(model) -> list:
    """Each parameter once (tied embeddings are one tensor, saved once)."""
    seen: dict[int, Any] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    return list(seen.values())


def _numel(p) -> int:
    # DeepSpeed ZeRO-3 keeps a partition on each rank: its full size is ds_numel
    return int(getattr(p, "ds_numel", 0) or p.numel())


def _run_bytes(output_dir: str | Path) -> int:
    """What a run in ``output_dir`` overwrites or rotates away: its checkpoint-N folders and final model (not
    what later steps put beside them, such as an evaluation's merged copy)."""
    out = Path(output_dir)
    if not out.is_dir():
        return 0
    return sum(
        folder_bytes(f)
        for f in out.iterdir()
        if f.is_dir() and (f.name.startswith("checkpoint-") or f.name in RUN_FOLDERS)
    )


def optimizer_state_bytes(optim: str, trainable: list) -> int:
    """Bytes of the optimizer state saved for ``trainable`` parameters (fp32 states, as torch keeps them for fp32
    weights): AdamW two moments, 8-bit Adam two 1-byte moments, Adafactor one row and one column vector per
    matrix, SGD and Lion one buffer; an optimizer not named here is counted as AdamW (an upper bound)."""
    name = optim.lower()
    if "adafactor" in name:
        return sum(4 * (sum(p.shape[-2:]) if p.dim() >= 2 else _numel(p)) for p in trainable)
    numel = sum(_numel(p) for p in trainable)
    if "8bit" in name:
        return 2 * numel
    if "sgd" in name or "lion" in name:
        return 4 * numel
    return 8 * numel


def _planned_saves(args, train_rows: int | None) -> int | None:
    """How many checkpoints the run saves (one every ``save_steps`` and one at the end), or None when unknown."""
    steps = int(getattr(args, "max_steps", -1) or -1)
    if steps <= 0 and train_rows:
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
        # GRPO: each prompt becomes num_generations completions, a step takes completions, and every generation
        # is trained on num_iterations times
        per_step = per_step / max(1, int(getattr(args, "num_generations", 1) or 1))
        iterations = max(1, int(getattr(args, "num_iterations", 1) or 1))
        steps = math.ceil(train_rows * float(args.num_train_epochs) * iterations / per_step)
    if steps <= 0:
        return None
    return math.ceil(steps / max(1, int(args.save_steps)))


def plan_training(model, args, output_dir: str | Path, what: str, train_rows: int | None = None) -> DiskPlan:
    """What a Trainer run of ``model`` with training arguments ``args`` writes into ``output_dir``: its
    ``checkpoint-N`` folders (weights as they are held; a PEFT model saves its adapter only; the optimizer state
    unless ``save_only_model``), at most ``save_total_limit`` + 1 at once, then ``save_total_limit`` of them and
    the final model."""
    params = _unique_parameters(model)
    trainable = [p for p in params if p.requires_grad]
    saved = trainable if hasattr(model, "peft_config") else params
    weights = sum(_numel(p) * p.element_size() + WEIGHT_TENSOR_OVERHEAD for p in saved)
    optimizer = (
        0
        if getattr(args, "save_only_model", False)
        else optimizer_state_bytes(str(args.optim), trainable) + OPTIMIZER_TENSOR_OVERHEAD * len(trainable)
    )
    saves = _planned_saves(args, train_rows)
    limit = getattr(args, "save_total_limit", None)
    if limit:  # the Trainer writes a new checkpoint, then deletes beyond the limit; final/ comes after the last
        copies = min(saves, limit + 1) if saves is not None else limit + 1
        kept = min(saves, limit) if saves is not None else limit
    else:
        copies = kept = saves if saves is not None else 1
    detail = (
        f"{copies} checkpoint(s) at once of {weights / GB:.2f} GB weights + {optimizer / GB:.2f} GB optimizer "
        f"state ({args.optim}{', save_only_model' if optimizer == 0 else ''}; save_total_limit {limit or 'none'}), "
        f"then {kept} and the final model ({weights / GB:.2f} GB)"
    )
    return DiskPlan(
        what=what,
        folder=str(output_dir),
        copy_bytes=weights + optimizer,
        copies=copies,
        kept=kept,
        final_bytes=weights,
        present_bytes=_run_bytes(output_dir),
        free_bytes=free_bytes(output_dir),
        detail=detail,
    )


def plan_model_copy(model, target: str | Path, what: str, bytes_per_parameter: int) -> DiskPlan:
    """What saving ``model`` at ``bytes_per_parameter`` (2 for bf16, 4 for fp32) into ``target`` writes."""
    total = sum(_numel(p) for p in _unique_parameters(model)) * bytes_per_parameter
    target = Path(target)
    return DiskPlan(
        what=what,
        folder=str(target),
        copy_bytes=total,
        copies=1,
        final_bytes=0,
        # both are replaced: a copy left from an interrupted save (<target>.tmp) and the old copy
        present_bytes=folder_bytes(target) + folder_bytes(target.with_name(target.name + ".tmp")),
        free_bytes=free_bytes(target),
        detail=f"one model copy of {total / GB:.2f} GB",
    )


def require_space(plan: DiskPlan, hint: str) -> DiskPlan:
    """``plan`` when it fits (with 5% headroom), else ``InsufficientDiskSpace`` naming the numbers and ``hint``."""
    if plan.fits:
        return plan
    raise InsufficientDiskSpace(
        f"{plan.what}: not enough disk space in {plan.folder}: the run writes ~{plan.needed_bytes / GB:.1f} GB "
        f"({plan.detail}; {plan.present_bytes / GB:.1f} GB already there) and {plan.free_bytes / GB:.1f} GB is "
        f"free. {hint}",
        plan,
    )
