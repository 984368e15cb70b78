"""The downstream fine-tune (METHOD.md §6): TRL SFT with a LoRA adapter (peft) on one training set.

Paper defaults: Llama-3.1-8B, rank 64, alpha 16, dropout 0.1, lr 1e-4, 5 epochs,
max length 2048, warmup 3 %, effective batch 128. Saves the adapter and the merged
model as HF folders (the merged one is what lm-eval loads). A plain function: a
Kubernetes step or ``accelerate launch`` can run it outside Dagster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .training import (OnLog, TrainResult, _common_args, _history, _load_model, _load_tokenizer, _log_callback,
                       _quiet, _settings_from, latest_checkpoint)


@dataclass
class LoraSFTSettings:
    learning_rate: float = 1e-4
    num_train_epochs: float = 5.0
    max_length: int = 2048
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lr_scheduler_type: str = "linear"
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 32  # 4 x 32 = the paper's effective batch of 128 on one device
    max_steps: int = -1
    seed: int = 42
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    target_modules: str | list[str] = "all-linear"
    bf16: bool | None = None
    gradient_checkpointing: bool | None = None
    use_cpu: bool | None = None
    resume: bool = True
    disable_tqdm: bool = True
    extra_args: dict = field(default_factory=dict)


def build_pair_dataset(pairs: Sequence[Mapping[str, Any]]) -> list[dict]:
    """(prompt, completion) rows -> conversational prompt-completion records (user turn, assistant turn)."""
    out = []
    for i, row in enumerate(pairs):
        prompt, completion = str(row.get("prompt") or "").strip(), str(row.get("completion") or "").strip()
        if not prompt or not completion:
            raise ValueError(f"training row {i} has an empty {'prompt' if not prompt else 'completion'}")
        out.append({"prompt": [{"role": "user", "content": prompt}],
                    "completion": [{"role": "assistant", "content": completion}]})
    return out


def run_lora_sft(model_path: str, pairs: Sequence[Mapping[str, Any]], output_dir: str | Path,
                 settings: LoraSFTSettings | Mapping | None = None, on_log: OnLog | None = None) -> TrainResult:
    """LoRA SFT of ``model_path`` on ``pairs``; adapter in ``output_dir/adapter``, merged model in
    ``output_dir/merged`` (returned as ``checkpoint``). Rows longer than ``max_length`` are dropped and counted."""
    s = _settings_from(LoraSFTSettings, settings)
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from .training import _drop_long

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _load_tokenizer(model_path, padding_side="right")
    records, dropped = _drop_long(build_pair_dataset(pairs), tok, s.max_length, sft=True)
    if not records:
        raise ValueError(f"no training rows left ({dropped} longer than max_length={s.max_length} tokens)")
    peft_config = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                             target_modules=s.target_modules, task_type="CAUSAL_LM")
    args = SFTConfig(**_common_args(s, out), max_length=s.max_length, completion_only_loss=True, packing=False,
                     include_num_input_tokens_seen="non_padding", **s.extra_args)
    trainer = SFTTrainer(model=_load_model(model_path), args=args, train_dataset=Dataset.from_list(records),
                         processing_class=tok, peft_config=peft_config, callbacks=[_log_callback(on_log)])
    _quiet(trainer, on_log)
    resume = latest_checkpoint(out) if s.resume else None
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - t0
    adapter = out / "adapter"
    trainer.save_model(str(adapter))  # the LoRA weights and adapter_config.json
    tok.save_pretrained(str(adapter))
    merged_model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    merged_model.config.use_cache = True
    merged = out / "merged"
    merged_model.save_pretrained(str(merged))
    tok.save_pretrained(str(merged))
    logs = list(trainer.state.log_history)
    return TrainResult(checkpoint=str(merged), output_dir=str(out), steps=int(trainer.state.global_step),
                       loss_history=_history(logs, "loss"), tokens_seen=int(trainer.state.num_input_tokens_seen or 0) or None,
                       wall_seconds=wall, resumed_from=resume, n_examples=len(records), n_dropped_too_long=dropped,
                       device=str(trainer.args.device), log_history=logs)
