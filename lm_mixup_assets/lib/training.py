"""Training the distiller (docs/method.md, "Training"): cold-start SFT, then GRPO — plain functions.

No Dagster here: ``run_sft`` / ``run_grpo`` take paths, rows and a settings
model (``lib/settings/training.py``) and return a ``TrainResult``, so an asset, ``accelerate launch`` or a
Kubernetes step can call them alike.  torch / transformers / TRL are imported
inside the functions (importing this module is cheap); nothing needs CUDA or vLLM,
both are used when present.

Data
----
MIXTURE rows are dicts with ``instruction``, ``input``, ``output``, ``cot`` and
``task`` (or ``task_type``, the JSONL export's name).  The user turn
(``user_turn``) is ``instruction`` and ``input`` joined by a newline (``reference``,
as ``sft/i_t_resume.py``) or a blank line (``chat``); when ``input`` already starts
with ``instruction`` (our MIXTURE builder puts it there) it is used alone.

Formats (each a setting; defaults are the reference's, docs/method.md "Training formats"):

* ``SFTSettings.target_layout``
  - ``"reference"`` (``sft/i_t_resume.py``): system = ``prompts.REFERENCE_SYSTEM_PROMPT``;
    the training text is the chat template's prompt (``add_generation_prompt=True``)
    followed by ``<think>\\n{cot}\\n</think>\\n\\n<answer>\\n{output}\\n</answer>`` and
    nothing else: no end-of-turn token is trained (the reference cuts generations at
    ``</answer>``).  Loss on the response tokens only.  We tokenise it here and hand
    TRL ``input_ids`` + ``completion_mask``.
  - ``"chat"`` (ours): system = ``rewards.SYSTEM_PROMPT``; TRL conversational
    prompt–completion with ``<think>{cot}</think>\\n<answer>{output}</answer>`` as the
    assistant turn, so the template's end-of-turn is trained too (the model learns to
    stop); ``completion_only_loss=True`` masks the prompt.
* ``SFTSettings.cot_mode``, for a row whose ``cot`` is empty:
  ``"omit_empty"`` (reference: no think block, answer only), ``"plan"`` (ours: a short
  deterministic plan built from the row, no facts, so the layout the format reward
  checks is always taught), ``"empty_think"`` (an empty think block).
* ``GRPOSettings.prompt_layout``
  - ``"reference"`` (``examples/format_prompt/mixup.jinja`` via EasyR1): one user turn,
    ``prompts.render_grpo_format_prompt(user turn)``, no system turn (a chat template
    with a default system prompt, e.g. Qwen2.5's, adds its own, as in EasyR1);
  - ``"chat"``: the SFT ``chat`` prompt (system ``rewards.SYSTEM_PROMPT`` + user turn).

GRPO records carry ``prompt`` (conversational), ``task`` and ``reference``
(= ``output``): the columns ``rewards`` reads.  The policy loss is TRL's clipped
objective with ``epsilon`` 0.2 / ``epsilon_high`` 0.3 and ``delta`` 3.0: TRL clamps the
unclipped ratio at ``delta`` before the min, which for a negative advantage is
exactly dual-clip PPO's bound ``-A·C`` (EasyR1 ``clip_ratio_dual``) and for a positive
one changes nothing (``delta`` > 1 + ``epsilon_high``).

Too-long examples are dropped, not truncated (counted in the result): a truncated
SFT target would teach unclosed tags, a truncated prompt would hide variants (the
reference truncates SFT text at ``max_len``; ``drop_too_long=False`` restores that via
TRL's truncation).  TRL 1.16's ``GRPOConfig`` has no ``max_prompt_length``;
``GRPOSettings.max_prompt_length`` is enforced here by that filter.

Checkpoints: ``output_dir/checkpoint-N`` every ``save_steps``; a rerun with the same
``output_dir`` resumes from the newest complete one (``resume_from_checkpoint``) and
continues the global step.  The final model and tokenizer go to ``output_dir/final``.
With ``keep_checkpoints=False`` a finished run keeps of each ``checkpoint-N`` only its
trainer state and training arguments (the record): ``final/`` holds the same weights.

Reuse: a caller that names ``output_dir`` by :func:`run_key` of everything that decides the
run (model, data, settings) passes that key as ``reuse_key``; a finished run recorded in
``output_dir/train_result.json`` under the same key, its ``final/`` unchanged since, is
returned as it is (``TrainResult.reused``) instead of training again.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .disk import plan_training, require_space
from .mixture_tasks import TASK_NAMES, TASK_TYPES
from .prompts import REFERENCE_SYSTEM_PROMPT, render_grpo_format_prompt
from .rewards import SYSTEM_PROMPT, format_response
from .settings.training import CotMode, GrpoPromptLayout, GRPOSettings, SFTSettings, TargetLayout

__all__ = [
    "TrainResult",
    "SFTSettings",
    "GRPOSettings",
    "SFT_TARGET_LAYOUTS",
    "SFT_COT_MODES",
    "GRPO_PROMPT_LAYOUTS",
    "user_turn",
    "system_prompt",
    "distiller_chat",
    "grpo_prompt",
    "sft_response",
    "tokenize_reference_sft",
    "default_think",
    "build_sft_dataset",
    "build_grpo_dataset",
    "latest_checkpoint",
    "run_key",
    "finished_run",
    "free_memory",
    "run_sft",
    "run_grpo",
    "cuda_available",
    "vllm_available",
]

OnLog = Callable[[int, dict], None]

SFT_TARGET_LAYOUTS = tuple(m.value for m in TargetLayout)
SFT_COT_MODES = tuple(m.value for m in CotMode)
GRPO_PROMPT_LAYOUTS = tuple(m.value for m in GrpoPromptLayout)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is unknown; choose one of {choices}")


# --------------------------------------------------------------------------- #
# Results and settings
# --------------------------------------------------------------------------- #
@dataclass
class TrainResult:
    checkpoint: str  # output_dir/final: model + tokenizer, loadable with from_pretrained
    output_dir: str
    steps: int  # global optimizer steps after this run (continues across resumes)
    loss_history: list[tuple[int, float]]  # (global step, training loss) from the trainer's log history
    tokens_seen: int | None  # SFT: non-padding input tokens; GRPO: prompt + completion tokens
    wall_seconds: float  # trainer.train() only (no loading or saving)
    resumed_from: str | None = None
    reward_history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # GRPO: name -> (step, mean)
    n_examples: int = 0  # rows trained on (after the length filter)
    n_dropped_too_long: int = 0
    device: str = "cpu"
    use_vllm: bool = False
    log_history: list[dict] = field(default_factory=list)
    reused: bool = False  # a finished run with the same inputs, returned without training
    disk_plan: dict = field(default_factory=dict)  # DiskPlan.to_dict() (bytes), checked before the run started

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainResult:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        # JSON has no tuples: the histories come back as lists of [step, value]
        known["loss_history"] = [tuple(p) for p in known.get("loss_history", [])]
        known["reward_history"] = {k: [tuple(p) for p in v] for k, v in known.get("reward_history", {}).items()}
        return cls(**known)


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _settings_from(cls, settings):
    """``settings`` as a validated ``cls`` (a settings model, or a dict of its fields)."""
    if settings is None:
        return cls()
    if isinstance(settings, cls):
        return settings
    if isinstance(settings, Mapping):
        return cls.model_validate(dict(settings))
    raise TypeError(f"settings must be {cls.__name__} or a dict, got {type(settings).__name__}")


# --------------------------------------------------------------------------- #
# Datasets
# --------------------------------------------------------------------------- #
def _row_task(row: Mapping[str, Any]) -> str:
    task = row.get("task") or row.get("task_type")
    if task not in TASK_TYPES:
        raise ValueError(f"row has task {task!r}; expected one of {TASK_TYPES}")
    return str(task)


def user_turn(row: Mapping[str, Any], layout: str = "chat") -> str:
    """The distiller's user message for a MIXTURE row (see the module docstring):
    ``instruction`` + newline (``reference``) or blank line (``chat``) + ``input``."""
    _check_choice("layout", layout, SFT_TARGET_LAYOUTS)
    instruction = str(row.get("instruction") or "").strip()
    inp = str(row.get("input") or "").strip()
    if not inp and not instruction:
        raise ValueError("row has neither input nor instruction")
    if not instruction or inp.startswith(instruction):
        return inp
    if not inp:
        return instruction
    separator = "\n" if layout == "reference" else "\n\n"
    return f"{instruction}{separator}{inp}"


def system_prompt(layout: str = "chat") -> str:
    """The distiller's system turn: the reference's mix-up prompt or ours (``rewards.SYSTEM_PROMPT``)."""
    _check_choice("layout", layout, SFT_TARGET_LAYOUTS)
    return REFERENCE_SYSTEM_PROMPT if layout == "reference" else SYSTEM_PROMPT


def distiller_chat(row: Mapping[str, Any], layout: str = "chat") -> list[dict]:
    """``[system, user]`` as SFT trains it and as distillation / in-domain evaluation ask it
    (the reference's ``inference.py`` and ``batch_infer_split.py`` build the SFT prompt)."""
    return [{"role": "system", "content": system_prompt(layout)}, {"role": "user", "content": user_turn(row, layout)}]


def grpo_prompt(row: Mapping[str, Any], layout: str = "reference") -> list[dict]:
    """The GRPO prompt: ``reference`` = one user turn with the format prompt in front
    (``mixup.jinja``); ``chat`` = ``distiller_chat(row, "chat")``."""
    _check_choice("prompt_layout", layout, GRPO_PROMPT_LAYOUTS)
    if layout == "reference":
        return [{"role": "user", "content": render_grpo_format_prompt(user_turn(row, "reference"))}]
    return distiller_chat(row, "chat")


_NUMBER_WORDS = {2: "Two", 3: "Three", 4: "Four", 5: "Five", 6: "Six", 7: "Seven", 8: "Eight", 9: "Nine", 10: "Ten"}


def _n_variants(row: Mapping[str, Any]) -> int | None:
    n = row.get("n_variants")
    try:
        if n is not None and not (isinstance(n, float) and math.isnan(n)):
            return int(n)
    except (TypeError, ValueError):
        pass
    ids = row.get("variant_ids")
    if ids is not None and not isinstance(ids, str):
        try:
            return len(ids)
        except TypeError:
            return None
    return None


def default_think(row: Mapping[str, Any]) -> str:
    """The think block for a row without ``cot`` under ``cot_mode="plan"``: a plan, no facts (deterministic)."""
    task = _row_task(row)
    name = TASK_NAMES[task]
    n = _n_variants(row)
    head = (
        f"{_NUMBER_WORDS.get(n, str(n))} weak versions of one {name}."
        if n and n > 1
        else f"Several weak versions of one {name}."
    )
    return (
        f"{head} I keep the facts they share, repair typos and gaps, drop repetition and sentences from "
        f"unrelated topics, and write one complete {name} in the requested format."
    )


def _text(value: Any) -> str:
    """A cell as text: None and NaN (pandas' missing value) are empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def sft_response(row: Mapping[str, Any], layout: str = "reference", cot_mode: str = "omit_empty") -> str:
    """The SFT target for a row (module docstring).  ``reference``: cot and output right-stripped
    inside ``<think>\\n…\\n</think>\\n\\n<answer>\\n…\\n</answer>``; ``chat``: ``format_response``."""
    _check_choice("target_layout", layout, SFT_TARGET_LAYOUTS)
    _check_choice("cot_mode", cot_mode, SFT_COT_MODES)
    output = _text(row.get("output")).strip()
    if not output:
        raise ValueError(f"row without output: {dict(row)!r:.200}")
    cot = _text(row.get("cot")).strip()
    if not cot and cot_mode == "plan":
        cot = default_think(row)
    with_think = bool(cot) or cot_mode != "omit_empty"
    if layout == "chat":
        return format_response(cot, output) if with_think else f"<answer>{output}</answer>"
    think = f"<think>\n{cot}\n</think>\n\n" if with_think else ""
    return f"{think}<answer>\n{output}\n</answer>"


def build_sft_dataset(
    rows: Iterable[Mapping[str, Any]], layout: str = "reference", cot_mode: str = "omit_empty"
) -> list[dict]:
    """MIXTURE rows → records with ``prompt`` ([system, user] messages), ``completion``
    and ``task``.  ``chat``: ``completion`` is ``[assistant message]`` (TRL conversational);
    ``reference``: ``completion`` is the response text, to be appended to the rendered
    prompt by ``tokenize_reference_sft``.  Rows with an empty ``output`` raise."""
    out = []
    for row in rows:
        task = _row_task(row)
        response = sft_response(row, layout, cot_mode)
        completion = [{"role": "assistant", "content": response}] if layout == "chat" else response
        out.append({"prompt": distiller_chat(row, layout), "completion": completion, "task": task})
    return out


def tokenize_reference_sft(records: Sequence[Mapping[str, Any]], tokenizer) -> list[dict]:
    """``reference``-layout records → ``input_ids`` + ``completion_mask`` (1 on the response).

    The text is ``apply_chat_template(prompt, add_generation_prompt=True) + response`` with
    no end-of-turn token, tokenised as one string (as ``sft/i_t_resume.py``); the first
    ``len(tokenize(prompt))`` tokens are masked.  Special tokens come from the chat
    template only (``add_special_tokens=False``), so a tokenizer that adds a BOS cannot
    shift the mask."""
    prompts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in records]
    full = tokenizer([p + r["completion"] for p, r in zip(prompts, records)], add_special_tokens=False)["input_ids"]
    heads = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    out = []
    for r, ids, head in zip(records, full, heads):
        n_prompt = min(len(head), len(ids))
        if n_prompt >= len(ids):
            raise ValueError(f"task {r.get('task')!r}: the SFT response tokenised to nothing")
        out.append(
            {
                "input_ids": list(ids),
                "completion_mask": [0] * n_prompt + [1] * (len(ids) - n_prompt),
                "task": r.get("task"),
            }
        )
    return out


def build_grpo_dataset(rows: Iterable[Mapping[str, Any]], layout: str = "reference") -> list[dict]:
    """MIXTURE rows → GRPO records: ``prompt`` (conversational, ``grpo_prompt``), ``task``, ``reference``."""
    out = []
    for row in rows:
        task = _row_task(row)
        reference = _text(row.get("output")).strip()
        if not reference:
            raise ValueError(f"row without output (the alignment reference): {dict(row)!r:.200}")
        out.append({"prompt": grpo_prompt(row, layout), "task": task, "reference": reference})
    return out


def _drop_long(records: list[dict], tokenizer, max_tokens: int, kind: str) -> tuple[list[dict], int]:
    """Keep records of at most ``max_tokens`` tokens.  ``kind``: ``"tokenized"`` (``input_ids``),
    ``"sft_chat"`` (prompt + completion rendered) or ``"grpo"`` (the prompt with the generation header)."""
    if not records:
        return [], 0
    if kind == "tokenized":
        lengths = [len(r["input_ids"]) for r in records]
    else:
        texts = [
            tokenizer.apply_chat_template(
                r["prompt"] + r["completion"] if kind == "sft_chat" else r["prompt"],
                tokenize=False,
                add_generation_prompt=kind == "grpo",
            )
            for r in records
        ]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    kept = [r for r, n in zip(records, lengths) if n <= max_tokens]
    return kept, len(records) - len(kept)


# --------------------------------------------------------------------------- #
# Shared plumbing
# --------------------------------------------------------------------------- #
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _has_weights(folder: Path) -> bool:
    return any(
        f.suffix == ".safetensors" or (f.suffix == ".bin" and f.name != "training_args.bin")
        for f in folder.iterdir()
        if f.is_file()
    )


def latest_checkpoint(output_dir: str | Path, resumable: bool = False) -> str | None:
    """The newest ``checkpoint-N`` folder in ``output_dir`` that holds a trainer state
    (a save interrupted half-way is skipped); ``resumable``: one that still holds its weights
    (not one a finished run pruned, see ``keep_checkpoints``)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if p.is_dir()
        and (m := _CHECKPOINT_RE.match(p.name))
        and (p / "trainer_state.json").exists()
        and (not resumable or _has_weights(p))
    ]
    return str(max(found)[1]) if found else None


# --------------------------------------------------------------------------- #
# Reuse of a finished run, and what a finished run keeps
# --------------------------------------------------------------------------- #
RESULT_FILE = "train_result.json"


def run_key(*parts: Any) -> str:
    """A short hash of everything that decides a run's output (the starting model's fingerprint, the
    data's version, the settings' values...): name the output folder by it, so a run with other inputs
    never resumes or reuses this one's folder."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _weights_fingerprint(folder: str | Path) -> str:
    from .generation import model_fingerprint

    return model_fingerprint(str(folder))


def finished_run(output_dir: str | Path, key: str) -> TrainResult | None:
    """The run recorded as finished in ``output_dir`` under ``key``, if its model folder is still the one it
    saved (same weight and config files); else None (never finished, other inputs, or changed since)."""
    record = Path(output_dir) / RESULT_FILE
    if not key or not record.is_file():
        return None
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model = Path(saved.get("result", {}).get("checkpoint", ""))
    if saved.get("key") != key or not model.is_dir() or _weights_fingerprint(model) != saved.get("fingerprint"):
        return None
    result = TrainResult.from_dict(saved["result"])
    result.reused = True
    return result


def _record_finished(result: TrainResult, key: str | None) -> None:
    """Write ``train_result.json`` (tmp + replace): the run, its inputs' key and its model's fingerprint."""
    if not key:
        return
    target = Path(result.output_dir) / RESULT_FILE
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(
            {"key": key, "fingerprint": _weights_fingerprint(result.checkpoint), "result": result.to_dict()},
            default=str,
        ),
        encoding="utf-8",
    )
    tmp.replace(target)


def _prune_checkpoints(output_dir: Path, keep: bool) -> None:
    """After a finished run: keep the ``checkpoint-N`` folders whole, or only their trainer state and
    training arguments (the model itself is in ``final/``; the weights and optimizer state of a finished
    run are only needed to train on from it)."""
    if keep:
        return
    for folder in output_dir.iterdir():
        if folder.is_dir() and _CHECKPOINT_RE.match(folder.name):
            for item in folder.iterdir():
                if item.name in ("trainer_state.json", "training_args.bin"):
                    continue
                shutil.rmtree(item) if item.is_dir() else item.unlink()


def _sft_config(s, out: Path, **specific: Any):
    """TRL's SFTConfig for one of our SFT runs (distiller SFT, downstream LoRA): the shared trainer arguments,
    unpacked rows of at most ``max_length`` tokens, non-padding tokens counted; ``specific``: the run's own."""
    from trl import SFTConfig

    return SFTConfig(
        **_common_args(s, out),
        max_length=s.max_length,
        packing=False,
        include_num_input_tokens_seen="non_padding",
        **specific,
        **s.extra_args,
    )


def _train(trainer, out: Path, s, on_log: OnLog | None, what: str) -> tuple[str | None, float, dict]:
    """Train (from the newest resumable checkpoint in ``out`` when ``s.resume``): the checkpoint resumed from, the
    wall seconds and the disk plan. With ``s.check_disk_space`` a run whose checkpoints and final model would not
    fit on the disk under ``out`` fails here, before its first step (``lib/disk.py``)."""
    plan = plan_training(trainer.model, trainer.args, out, what, len(trainer.train_dataset))
    # Only the process that saves checks (args.should_save): another rank failing alone would hang the others.
    if s.check_disk_space and getattr(trainer.args, "should_save", True):
        require_space(
            plan,
            "Free space (a finished run's checkpoint-N folders under artifacts/checkpoints/ can be deleted by hand: "
            "later stages load its final/), point LM_MIXUP_HOME at a larger disk, or write fewer or smaller "
            f"checkpoints: LM_MIXUP_{s.preset.upper()}_SAVE_TOTAL_LIMIT=1, extra_args save_only_model (no optimizer "
            "state: a resumed run restarts its optimizer) or a larger save_steps. "
            f"LM_MIXUP_{s.preset.upper()}_CHECK_DISK_SPACE=false skips this check.",
        )
    _quiet(trainer, on_log)
    start = latest_checkpoint(out, resumable=True) if s.resume else None
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=start)
    return start, time.perf_counter() - t0, plan.to_dict()


def _train_result(
    trainer,
    *,
    checkpoint: str,
    out: Path,
    wall: float,
    resume: str | None,
    n_examples: int,
    n_dropped: int,
    disk: dict,
    **extra: Any,
) -> TrainResult:
    """What a finished trainer reports, the same for SFT, GRPO and LoRA runs (``extra``: the run kind's own fields)."""
    logs = list(trainer.state.log_history)
    return TrainResult(
        checkpoint=checkpoint,
        output_dir=str(out),
        steps=int(trainer.state.global_step),
        loss_history=_history(logs, "loss"),
        tokens_seen=int(trainer.state.num_input_tokens_seen or 0) or None,
        wall_seconds=wall,
        resumed_from=resume,
        n_examples=n_examples,
        n_dropped_too_long=n_dropped,
        device=str(trainer.args.device),
        log_history=logs,
        disk_plan=disk,
        **extra,
    )


def _close_run(result: TrainResult, keep_checkpoints: bool, reuse_key: str | None) -> TrainResult:
    """After the trainer is dropped: free its memory, prune the checkpoint folders, record the run as finished."""
    free_memory()
    _prune_checkpoints(Path(result.output_dir), keep_checkpoints)
    _record_finished(result, reuse_key)
    return result


def free_memory() -> None:
    """Give back what a finished step held (models, optimizer state): a long process runs many steps."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    # glibc keeps freed heap pages (torch's CPU tensors among them) for reuse; hand them back to the OS, so the
    # next step starts from what is live rather than from the last step's peak.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (macOS, musl): nothing to trim


def _log_callback(on_log: OnLog | None):
    from transformers import TrainerCallback

    class _OnLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if on_log is not None and logs and state.is_world_process_zero:
                on_log(int(state.global_step), dict(logs))

    return _OnLog()


def _load_tokenizer(model_path: str, padding_side: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{model_path}: the tokenizer has no chat template (conversational training needs one)")
    return tok


def _load_model(model_path: str):
    import torch
    from transformers import AutoModelForCausalLM

    # fp32 master weights; bf16 (when on) is autocast by the Trainer
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)


def _common_args(s, output_dir: Path) -> dict:
    cuda = cuda_available()
    use_cpu = (not cuda) if s.use_cpu is None else bool(s.use_cpu)
    if s.bf16 is None:
        import torch

        bf16 = bool(cuda and not use_cpu and torch.cuda.is_bf16_supported())
    else:
        bf16 = bool(s.bf16)
    gc = (cuda and not use_cpu) if s.gradient_checkpointing is None else bool(s.gradient_checkpointing)
    return dict(
        output_dir=str(output_dir),
        learning_rate=s.learning_rate,
        num_train_epochs=s.num_train_epochs,
        max_steps=s.max_steps,
        warmup_steps=s.warmup_ratio,
        weight_decay=s.weight_decay,
        lr_scheduler_type=s.lr_scheduler_type,
        per_device_train_batch_size=s.per_device_train_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        seed=s.seed,
        logging_steps=s.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=s.save_steps,
        save_total_limit=s.save_total_limit or None,
        bf16=bf16,
        fp16=False,
        use_cpu=use_cpu,
        gradient_checkpointing=gc,
        report_to="none",
        disable_tqdm=s.disable_tqdm,
        dataloader_num_workers=0,
    )


def _history(log_history: list[dict], key: str) -> list[tuple[int, float]]:
    return [
        (int(h["step"]), float(h[key]))
        for h in log_history
        if key in h and h[key] is not None and "step" in h and not math.isnan(float(h[key]))
    ]


def _quiet(trainer, on_log: OnLog | None) -> None:
    """With an ``on_log`` callback the caller reports progress: drop the Trainer's
    stdout printer (it would duplicate every log line)."""
    if on_log is not None:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)


def _finish(trainer, tokenizer, output_dir: Path) -> str:
    final = output_dir / "final"
    # the Trainer sets config.use_cache = args.use_cache (False) for training; the saved
    # model is for generation, so it keeps the KV cache on
    config = getattr(trainer.accelerator.unwrap_model(trainer.model), "config", None)
    if config is not None:
        config.use_cache = True
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    return str(final)


# --------------------------------------------------------------------------- #
# SFT
# --------------------------------------------------------------------------- #
def run_sft(
    model_path: str,
    rows: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    settings: SFTSettings | Mapping | None = None,
    on_log: OnLog | None = None,
    reuse_key: str | None = None,
) -> TrainResult:
    """Cold-start SFT of ``model_path`` (an HF folder or id) on MIXTURE ``rows``.

    Full fine-tune with TRL's ``SFTTrainer``, loss on the response only, in
    ``settings.target_layout`` / ``settings.cot_mode`` (module docstring).
    Resumes from the newest checkpoint in ``output_dir`` (``settings.resume``);
    saves model + tokenizer to ``output_dir/final``. ``reuse_key``: see the module docstring."""
    s = _settings_from(SFTSettings, settings)
    if reuse_key and (done := finished_run(output_dir, reuse_key)) is not None:
        return done
    from datasets import Dataset
    from trl import SFTTrainer

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _load_tokenizer(model_path, padding_side="right")
    records = build_sft_dataset(rows, s.target_layout, s.cot_mode)
    if s.target_layout == "reference":
        records = [{k: v for k, v in r.items() if k != "task"} for r in tokenize_reference_sft(records, tok)]
    dropped = 0
    if s.drop_too_long:
        records, dropped = _drop_long(
            records, tok, s.max_length, "tokenized" if s.target_layout == "reference" else "sft_chat"
        )
    if not records:
        raise ValueError(f"no SFT examples left ({dropped} longer than max_length={s.max_length} tokens)")
    args = _sft_config(s, out, completion_only_loss=True, assistant_only_loss=False)
    trainer = SFTTrainer(
        model=_load_model(model_path),
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tok,
        callbacks=[_log_callback(on_log)],
    )
    resume, wall, disk = _train(trainer, out, s, on_log, "SFT")
    result = _train_result(
        trainer,
        checkpoint=_finish(trainer, tok, out),
        out=out,
        wall=wall,
        resume=resume,
        n_examples=len(records),
        n_dropped=dropped,
        disk=disk,
    )
    del trainer
    return _close_run(result, s.keep_checkpoints, reuse_key)


# --------------------------------------------------------------------------- #
# GRPO
# --------------------------------------------------------------------------- #
def colocated_vllm_engine(trainer):
    """The vLLM engine a GRPOTrainer started for colocated rollouts, or None: TRL 1.x keeps it on the trainer's
    ``vllm_generation`` helper (``trainer.vllm_generation.llm``), TRL 0.x on the trainer (``trainer.llm``)."""
    generation = getattr(trainer, "vllm_generation", None)
    return getattr(generation, "llm", None) or getattr(trainer, "llm", None)


def _reward_names(reward_funcs: Sequence[Callable]) -> list[str]:
    from trl.trainer.utils import get_callable_name

    return [get_callable_name(f) for f in reward_funcs]


def run_grpo(
    model_path: str,
    rows: Sequence[Mapping[str, Any]],
    reward_funcs: Sequence[Callable],
    output_dir: str | Path,
    settings: GRPOSettings | Mapping | None = None,
    on_log: OnLog | None = None,
    reuse_key: str | None = None,
) -> TrainResult:
    """GRPO of ``model_path`` (normally the SFT checkpoint) on MIXTURE ``rows``.

    ``reward_funcs``: TRL reward functions (``rewards.make_trl_reward_funcs``); their
    dataset columns are ``task`` and ``reference``.  ``reward_history`` maps each
    function's name (and ``"reward"``, the weighted total) to its logged mean per step.
    ``reuse_key`` (module docstring) must cover what the reward functions read, e.g. the rating library."""
    s = _settings_from(GRPOSettings, settings)
    reward_funcs = list(reward_funcs)
    if not reward_funcs:
        raise ValueError("run_grpo needs at least one reward function")
    if reuse_key and (done := finished_run(output_dir, reuse_key)) is not None:
        return done
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _load_tokenizer(model_path, padding_side="left")
    records = build_grpo_dataset(rows, s.prompt_layout)
    dropped = 0
    if s.drop_too_long:
        records, dropped = _drop_long(records, tok, s.max_prompt_length, "grpo")
    if not records:
        raise ValueError(f"no GRPO prompts left ({dropped} longer than max_prompt_length={s.max_prompt_length})")
    common = _common_args(s, out)
    if s.use_vllm is None:
        use_vllm = cuda_available() and not common["use_cpu"] and vllm_available()
    else:
        use_vllm = bool(s.use_vllm)
    vllm_args = (
        dict(
            vllm_mode=s.vllm_mode,
            vllm_gpu_memory_utilization=s.vllm_gpu_memory_utilization,
            vllm_max_model_length=s.max_prompt_length + s.max_completion_length,
        )
        if use_vllm
        else {}
    )
    args = GRPOConfig(
        **common,
        num_generations=s.num_generations,
        temperature=s.temperature,
        beta=s.beta,
        max_completion_length=s.max_completion_length,
        steps_per_generation=s.steps_per_generation or None,
        epsilon=s.epsilon,
        epsilon_high=s.epsilon_high,
        delta=s.delta or None,
        loss_type=s.loss_type,
        scale_rewards=s.scale_rewards,
        use_vllm=use_vllm,
        reward_weights=[1.0] * len(reward_funcs),
        log_completions=False,
        **vllm_args,
        **s.extra_args,
    )
    trainer = GRPOTrainer(
        model=_load_model(model_path),
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tok,
        callbacks=[_log_callback(on_log)],
    )
    resume, wall, disk = _train(trainer, out, s, on_log, "GRPO")
    final = _finish(trainer, tok, out)
    logs = trainer.state.log_history
    rewards = {name: _history(logs, f"rewards/{name}/mean") for name in _reward_names(reward_funcs)}
    rewards["reward"] = _history(logs, "reward")
    result = _train_result(
        trainer,
        checkpoint=final,
        out=out,
        wall=wall,
        resume=resume,
        n_examples=len(records),
        n_dropped=dropped,
        disk=disk,
        reward_history=rewards,
        use_vllm=use_vllm,
    )
    # TRL's colocated vLLM engine and the process group it set up would outlive the step and block the next engine
    # of this process; a multi-process launch (WORLD_SIZE > 1) ends with its processes instead.
    llm = colocated_vllm_engine(trainer)
    if llm is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from .generation import shutdown_vllm

        shutdown_vllm(llm)
    del llm, trainer
    return _close_run(result, s.keep_checkpoints, reuse_key)
