"""Training the distiller (METHOD.md §4): cold-start SFT, then GRPO — plain functions.

No Dagster here: ``run_sft`` / ``run_grpo`` take paths, rows and a settings
dataclass and return a ``TrainResult``, so an asset, ``accelerate launch`` or a
Kubernetes step can call them alike.  torch / transformers / TRL are imported
inside the functions (importing this module is cheap); nothing needs CUDA or vLLM,
both are used when present.

Data
----
MIXTURE rows are dicts with ``instruction``, ``input``, ``output``, ``cot`` and
``task`` (or ``task_type``, the JSONL export's name).  The user turn is ``input``
(the MIXTURE builder already puts the task instruction in front of the variants);
when ``input`` does not start with ``instruction`` the two are joined with a blank
line, so Alpaca-style rows work too.  The system turn is ``rewards.SYSTEM_PROMPT``.

* SFT rows (``build_sft_dataset``): conversational prompt–completion,
  ``prompt = [system, user]``, ``completion = [assistant]`` with
  ``<think>cot</think>\\n<answer>output</answer>``.  TRL 1.16 tokenises
  ``prompt`` with ``add_generation_prompt=True`` and ``prompt + completion`` with
  the chat template, and with ``completion_only_loss`` (default ``None`` → on for
  prompt–completion data; we set ``True`` explicitly) masks every label before the
  completion: loss on the assistant turn only, as the method asks.
* Empty ``cot`` (the demo MIXTURE has none): the think block gets a short,
  deterministic plan built from the row (how many variants, which task), e.g.
  "Three weak versions of one question-answer pair. I keep the facts they share …".
  Tags are kept so SFT teaches the exact layout the format reward checks; the plan
  carries no facts, so it cannot teach the model to invent any.
* GRPO rows (``build_grpo_dataset``): ``prompt`` (conversational, as above),
  ``task`` and ``reference`` (= ``output``) — the columns ``rewards`` reads.

Too-long examples are dropped, not truncated (counted in the result): a truncated
SFT target would teach unclosed tags, a truncated prompt would hide variants.  TRL
1.16's ``GRPOConfig`` has no ``max_prompt_length``; ``GRPOSettings.max_prompt_length``
is enforced here by that filter.

Checkpoints: ``output_dir/checkpoint-N`` every ``save_steps``; a rerun with the same
``output_dir`` resumes from the newest complete one (``resume_from_checkpoint``) and
continues the global step.  The final model and tokenizer go to ``output_dir/final``.
"""

from __future__ import annotations

import importlib.util
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .mixture_tasks import TASK_NAMES, TASK_TYPES
from .rewards import SYSTEM_PROMPT, format_response

__all__ = [
    "TrainResult",
    "SFTSettings",
    "GRPOSettings",
    "user_turn",
    "default_think",
    "build_sft_dataset",
    "build_grpo_dataset",
    "latest_checkpoint",
    "run_sft",
    "run_grpo",
    "cuda_available",
    "vllm_available",
]

OnLog = Callable[[int, dict], None]


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


@dataclass
class SFTSettings:
    """Cold-start SFT.  Defaults are the paper's (METHOD.md §4): full fine-tune,
    lr 2e-5, 3 epochs, max length 2400, warmup 5 %, weight decay 0.01, bf16 on GPU.
    ``max_steps > 0`` overrides the epochs (demo runs)."""

    learning_rate: float = 2e-5
    num_train_epochs: float = 3.0
    max_length: int = 2400
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    lr_scheduler_type: str = "linear"  # not published; transformers' default
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    max_steps: int = -1
    seed: int = 42
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    bf16: bool | None = None  # None: on when CUDA supports it
    gradient_checkpointing: bool | None = None  # None: on with CUDA (memory), off on CPU (speed)
    use_cpu: bool | None = None  # None: when CUDA is absent
    drop_too_long: bool = True
    resume: bool = True
    disable_tqdm: bool = True
    extra_args: dict = field(default_factory=dict)  # passed through to SFTConfig

    @classmethod
    def demo(cls, **overrides) -> "SFTSettings":
        """A CPU-sized run: a few steps, small batches, short sequences."""
        base = dict(max_steps=20, gradient_accumulation_steps=1, logging_steps=1, save_steps=10, max_length=1024,
                    learning_rate=5e-5)
        base.update(overrides)
        return cls(**base)


@dataclass
class GRPOSettings:
    """GRPO.  Defaults are the paper's (METHOD.md §4): 4 rollouts per prompt,
    temperature 1.0, KL 0.01 (TRL's k3 estimator, the "low-var KL", added to the
    loss), lr 1e-6, 1 epoch, prompt/response ≤ 2400 tokens, 128 prompts per
    generation round and mini-batches of 16 prompts: with one process,
    8 completions × 8 accumulation = 64 completions (16 prompts × 4) per optimizer
    step and ``steps_per_generation = 64`` micro-batches = 512 completions
    (128 prompts × 4) per generation round.  ``use_vllm=None`` uses vLLM (colocated)
    when CUDA is present and vLLM imports."""

    num_generations: int = 4
    temperature: float = 1.0
    beta: float = 0.01
    learning_rate: float = 1e-6
    max_prompt_length: int = 2400
    max_completion_length: int = 2400
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 8
    steps_per_generation: int | None = 64  # None: TRL's default (= gradient_accumulation_steps)
    num_train_epochs: float = 1.0
    max_steps: int = -1
    lr_scheduler_type: str = "constant"  # not published; constant is the usual GRPO (verl) choice
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    loss_type: str = "dapo"  # TRL 1.16 default: token-level mean over the batch
    scale_rewards: str = "group"  # GRPO's per-group std normalisation
    seed: int = 42
    logging_steps: int = 1
    save_steps: int = 50
    save_total_limit: int | None = 2
    bf16: bool | None = None
    gradient_checkpointing: bool | None = None
    use_cpu: bool | None = None
    use_vllm: bool | None = None
    vllm_mode: str = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    drop_too_long: bool = True
    resume: bool = True
    disable_tqdm: bool = True
    extra_args: dict = field(default_factory=dict)  # passed through to GRPOConfig

    @classmethod
    def demo(cls, **overrides) -> "GRPOSettings":
        """A CPU-sized run: one prompt × 4 rollouts per step, 64-token completions."""
        base = dict(max_steps=10, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                    steps_per_generation=None, max_completion_length=64, max_prompt_length=1024, save_steps=5)
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if per_step % self.num_generations:
            raise ValueError(f"per_device_train_batch_size × gradient_accumulation_steps = {per_step} must be a "
                             f"multiple of num_generations = {self.num_generations}")
        spg = self.steps_per_generation or self.gradient_accumulation_steps
        gen_batch = self.per_device_train_batch_size * spg
        if gen_batch % self.num_generations:
            raise ValueError(f"generation batch {gen_batch} (per-device batch × steps_per_generation) must be a "
                             f"multiple of num_generations = {self.num_generations}")
        if self.num_generations < 2:
            raise ValueError("GRPO needs num_generations >= 2 (advantages are relative within a group)")


def _settings_from(cls, settings):
    if settings is None:
        return cls()
    if isinstance(settings, cls):
        return settings
    if isinstance(settings, Mapping):  # e.g. a Dagster config dict
        known = {f.name for f in fields(cls)}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
        return cls(**settings)
    raise TypeError(f"settings must be {cls.__name__} or a dict, got {type(settings).__name__}")


# --------------------------------------------------------------------------- #
# Datasets
# --------------------------------------------------------------------------- #
def _row_task(row: Mapping[str, Any]) -> str:
    task = row.get("task") or row.get("task_type")
    if task not in TASK_TYPES:
        raise ValueError(f"row has task {task!r}; expected one of {TASK_TYPES}")
    return str(task)


def user_turn(row: Mapping[str, Any]) -> str:
    """The distiller's user message for a MIXTURE row (see the module docstring)."""
    instruction = str(row.get("instruction") or "").strip()
    inp = str(row.get("input") or "").strip()
    if not inp and not instruction:
        raise ValueError("row has neither input nor instruction")
    if not instruction or inp.startswith(instruction):
        return inp
    if not inp:
        return instruction
    return f"{instruction}\n\n{inp}"


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
    """The think block for a row without ``cot``: a plan, no facts (deterministic)."""
    task = _row_task(row)
    name = TASK_NAMES[task]
    n = _n_variants(row)
    head = (f"{_NUMBER_WORDS.get(n, str(n))} weak versions of one {name}." if n and n > 1
            else f"Several weak versions of one {name}.")
    return (f"{head} I keep the facts they share, repair typos and gaps, drop repetition and sentences from "
            f"unrelated topics, and write one complete {name} in the requested format.")


def _prompt_messages(row: Mapping[str, Any], system_prompt: str) -> list[dict]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_turn(row)}]


def build_sft_dataset(rows: Iterable[Mapping[str, Any]], system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """MIXTURE rows → TRL conversational prompt–completion records
    (``prompt``, ``completion``, ``task``).  Rows with an empty ``output`` raise."""
    out = []
    for row in rows:
        task = _row_task(row)
        output = str(row.get("output") or "").strip()
        if not output:
            raise ValueError(f"row without output: {dict(row)!r:.200}")
        cot = str(row.get("cot") or "").strip() or default_think(row)
        out.append({
            "prompt": _prompt_messages(row, system_prompt),
            "completion": [{"role": "assistant", "content": format_response(cot, output)}],
            "task": task,
        })
    return out


def build_grpo_dataset(rows: Iterable[Mapping[str, Any]], system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """MIXTURE rows → GRPO records: ``prompt`` (conversational), ``task``, ``reference``."""
    out = []
    for row in rows:
        task = _row_task(row)
        reference = str(row.get("output") or "").strip()
        if not reference:
            raise ValueError(f"row without output (the alignment reference): {dict(row)!r:.200}")
        out.append({"prompt": _prompt_messages(row, system_prompt), "task": task, "reference": reference})
    return out


def _drop_long(records: list[dict], tokenizer, max_tokens: int, sft: bool) -> tuple[list[dict], int]:
    """Keep records whose rendered chat (SFT: prompt + completion; GRPO: the prompt with
    the generation header) is at most ``max_tokens`` tokens."""
    if not records:
        return [], 0
    texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"] if sft else r["prompt"], tokenize=False,
                                           add_generation_prompt=not sft) for r in records]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    kept = [r for r, n in zip(records, lengths) if n <= max_tokens]
    return kept, len(records) - len(kept)


# --------------------------------------------------------------------------- #
# Shared plumbing
# --------------------------------------------------------------------------- #
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` folder in ``output_dir`` that holds a trainer state
    (a save interrupted half-way is skipped)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name)) and (p / "trainer_state.json").exists()]
    return str(max(found)[1]) if found else None


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
        output_dir=str(output_dir), learning_rate=s.learning_rate, num_train_epochs=s.num_train_epochs,
        max_steps=s.max_steps, warmup_steps=s.warmup_ratio, weight_decay=s.weight_decay,
        lr_scheduler_type=s.lr_scheduler_type, per_device_train_batch_size=s.per_device_train_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps, seed=s.seed, logging_steps=s.logging_steps,
        logging_first_step=True, save_strategy="steps", save_steps=s.save_steps, save_total_limit=s.save_total_limit,
        bf16=bf16, fp16=False, use_cpu=use_cpu, gradient_checkpointing=gc, report_to="none",
        disable_tqdm=s.disable_tqdm, dataloader_num_workers=0,
    )


def _history(log_history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(h["step"]), float(h[key])) for h in log_history
            if key in h and h[key] is not None and "step" in h and not math.isnan(float(h[key]))]


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
def run_sft(model_path: str, rows: Sequence[Mapping[str, Any]], output_dir: str | Path,
            settings: SFTSettings | Mapping | None = None, on_log: OnLog | None = None) -> TrainResult:
    """Cold-start SFT of ``model_path`` (an HF folder or id) on MIXTURE ``rows``.

    Full fine-tune with TRL's ``SFTTrainer``, loss on the assistant turn only.
    Resumes from the newest checkpoint in ``output_dir`` (``settings.resume``);
    saves model + tokenizer to ``output_dir/final``."""
    s = _settings_from(SFTSettings, settings)
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _load_tokenizer(model_path, padding_side="right")
    records = build_sft_dataset(rows)
    dropped = 0
    if s.drop_too_long:
        records, dropped = _drop_long(records, tok, s.max_length, sft=True)
    if not records:
        raise ValueError(f"no SFT examples left ({dropped} longer than max_length={s.max_length} tokens)")
    args = SFTConfig(**_common_args(s, out), max_length=s.max_length, completion_only_loss=True,
                     assistant_only_loss=False, packing=False, include_num_input_tokens_seen="non_padding",
                     **s.extra_args)
    trainer = SFTTrainer(model=_load_model(model_path), args=args, train_dataset=Dataset.from_list(records),
                         processing_class=tok, callbacks=[_log_callback(on_log)])
    _quiet(trainer, on_log)
    resume = latest_checkpoint(out) if s.resume else None
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - t0
    final = _finish(trainer, tok, out)
    logs = list(trainer.state.log_history)
    tokens = int(trainer.state.num_input_tokens_seen or 0) or None
    return TrainResult(checkpoint=final, output_dir=str(out), steps=int(trainer.state.global_step),
                       loss_history=_history(logs, "loss"), tokens_seen=tokens, wall_seconds=wall,
                       resumed_from=resume, n_examples=len(records), n_dropped_too_long=dropped,
                       device=str(trainer.args.device), log_history=logs)


# --------------------------------------------------------------------------- #
# GRPO
# --------------------------------------------------------------------------- #
def _reward_names(reward_funcs: Sequence[Callable]) -> list[str]:
    from trl.trainer.utils import get_callable_name

    return [get_callable_name(f) for f in reward_funcs]


def run_grpo(model_path: str, rows: Sequence[Mapping[str, Any]], reward_funcs: Sequence[Callable],
             output_dir: str | Path, settings: GRPOSettings | Mapping | None = None,
             on_log: OnLog | None = None) -> TrainResult:
    """GRPO of ``model_path`` (normally the SFT checkpoint) on MIXTURE ``rows``.

    ``reward_funcs``: TRL reward functions (``rewards.make_trl_reward_funcs``); their
    dataset columns are ``task`` and ``reference``.  ``reward_history`` maps each
    function's name (and ``"reward"``, the weighted total) to its logged mean per step."""
    s = _settings_from(GRPOSettings, settings)
    s.validate()
    reward_funcs = list(reward_funcs)
    if not reward_funcs:
        raise ValueError("run_grpo needs at least one reward function")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _load_tokenizer(model_path, padding_side="left")
    records = build_grpo_dataset(rows)
    dropped = 0
    if s.drop_too_long:
        records, dropped = _drop_long(records, tok, s.max_prompt_length, sft=False)
    if not records:
        raise ValueError(f"no GRPO prompts left ({dropped} longer than max_prompt_length={s.max_prompt_length})")
    common = _common_args(s, out)
    if s.use_vllm is None:
        use_vllm = cuda_available() and not common["use_cpu"] and vllm_available()
    else:
        use_vllm = bool(s.use_vllm)
    vllm_args = dict(vllm_mode=s.vllm_mode, vllm_gpu_memory_utilization=s.vllm_gpu_memory_utilization,
                     vllm_max_model_length=s.max_prompt_length + s.max_completion_length) if use_vllm else {}
    args = GRPOConfig(**common, num_generations=s.num_generations, temperature=s.temperature, beta=s.beta,
                      max_completion_length=s.max_completion_length, steps_per_generation=s.steps_per_generation,
                      loss_type=s.loss_type, scale_rewards=s.scale_rewards, use_vllm=use_vllm,
                      reward_weights=[1.0] * len(reward_funcs), log_completions=False, **vllm_args, **s.extra_args)
    trainer = GRPOTrainer(model=_load_model(model_path), reward_funcs=reward_funcs, args=args,
                          train_dataset=Dataset.from_list(records), processing_class=tok,
                          callbacks=[_log_callback(on_log)])
    _quiet(trainer, on_log)
    resume = latest_checkpoint(out) if s.resume else None
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - t0
    final = _finish(trainer, tok, out)
    logs = list(trainer.state.log_history)
    rewards = {name: _history(logs, f"rewards/{name}/mean") for name in _reward_names(reward_funcs)}
    rewards["reward"] = _history(logs, "reward")
    tokens = int(trainer.state.num_input_tokens_seen or 0) or None
    return TrainResult(checkpoint=final, output_dir=str(out), steps=int(trainer.state.global_step),
                       loss_history=_history(logs, "loss"), tokens_seen=tokens, wall_seconds=wall,
                       resumed_from=resume, reward_history=rewards, n_examples=len(records),
                       n_dropped_too_long=dropped, device=str(trainer.args.device), use_vllm=use_vllm,
                       log_history=logs)
