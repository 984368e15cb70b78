"""The downstream fine-tune (docs/method.md §6): TRL SFT with a LoRA adapter (peft) on one training set.

Paper defaults follow DS2's ``finetune.py`` as the LM-mixup authors run it: Llama-3.1-8B,
rank 64, alpha 16, dropout 0.1 on q/k/v/o/gate/up/down, lr 1e-4 linear with 3 % warm-up,
5 epochs, max length 2048, effective batch 128, no gradient clipping.

**Text layout.** One setting, ``chat_template``, decides the format of training *and*
evaluation (``lm_mixup_assets.lib.eval_tasks.evaluate_model`` takes the same value):

* ``none`` (paper, DS2): plain text ``prompt + " " + completion + eos`` (no space added when
  the prompt already ends, or the completion already starts, with whitespace), tokenised
  with the tokenizer's own special tokens (its BOS, if it adds one). Loss on the completion
  only: the first ``len(tokenize(prompt))`` tokens are masked, as DS2 does. Works with a base
  tokenizer that has no chat template.
* ``apply``: the tokenizer's chat template renders a user turn (prompt) and an assistant turn
  (completion); the loss covers what follows the rendered user turn and generation header.
  A tokenizer without a chat template is an error, not a silent fallback.

Rows longer than ``max_length`` tokens are truncated (``overlong_rows="truncate"``, DS2) or
dropped (``"drop"``); a row whose completion is cut away entirely is dropped and counted.
Saves the adapter (with the tokenizer) as an HF folder; a merged copy of the model only when
asked (``merge=True``, or later :func:`merge_adapter`, e.g. for vLLM). For lm-eval's hf backend
:func:`adapter_model_folder` links base and adapter into one loadable folder instead, so no
second copy of the base weights is written. A plain function: a Kubernetes step or
``accelerate launch`` can run it outside Dagster.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .disk import plan_model_copy, require_space
from .settings.evaluation import DS2_TARGET_MODULES, ChatTemplate, LoraSFTSettings, OverlongRows
from .training import (
    OnLog,
    TrainResult,
    _close_run,
    _load_model,
    _log_callback,
    _settings_from,
    _sft_config,
    _train,
    _train_result,
    finished_run,
    free_memory,
)

CHAT_TEMPLATE_MODES = tuple(m.value for m in ChatTemplate)
OVERLONG_MODES = tuple(m.value for m in OverlongRows)
__all__ = [
    "DS2_TARGET_MODULES",
    "LoraSFTSettings",
    "CHAT_TEMPLATE_MODES",
    "OVERLONG_MODES",
    "run_lora_sft",
    "build_training_records",
    "encode_pair",
    "join_prompt_completion",
    "check_chat_template_mode",
    "require_chat_template",
    "load_downstream_tokenizer",
    "merge_adapter",
    "adapter_base",
    "adapter_model_folder",
]


def check_chat_template_mode(mode: str) -> str:
    if mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(f"chat_template={mode!r}: choose one of {CHAT_TEMPLATE_MODES}")
    return mode


def require_chat_template(tokenizer, where: str) -> None:
    """``chat_template="apply"`` needs a tokenizer that has one; say so instead of falling back to plain text."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{where}: chat_template='apply' but the tokenizer has no chat template; use "
            "chat_template='none' (plain prompt + completion, as DS2) or a tokenizer that has one"
        )


def load_downstream_tokenizer(model_path: str, chat_template: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    check_chat_template_mode(chat_template)
    tok = AutoTokenizer.from_pretrained(model_path)
    if chat_template == "apply":
        require_chat_template(tok, model_path)
    elif not tok.eos_token:
        raise ValueError(f"{model_path}: the tokenizer has no eos token, which ends every plain-text training row")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # pads are masked from loss and attention, so any id will do
    tok.padding_side = padding_side
    return tok


def join_prompt_completion(prompt: str, completion: str) -> str:
    """DS2's plain layout: one space between prompt and completion unless either side already has whitespace."""
    if prompt.endswith((" ", "\n", "\t")) or completion.startswith((" ", "\n", "\t")):
        return prompt + completion
    return prompt + " " + completion


def training_texts(prompt: str, completion: str, tokenizer, chat_template: str) -> tuple[str, str, bool]:
    """(full text, prompt part, whether to let the tokenizer add its special tokens) for one row."""
    if check_chat_template_mode(chat_template) == "none":
        return join_prompt_completion(prompt, completion) + tokenizer.eos_token, prompt, True
    user = [{"role": "user", "content": prompt}]
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": completion}], tokenize=False)
    head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    return full, head, False  # the template writes its own BOS


def encode_pair(
    prompt: str,
    completion: str,
    tokenizer,
    max_length: int,
    chat_template: str = "none",
    overlong_rows: str = "truncate",
) -> dict | None:
    """``{"input_ids", "labels"}`` for one row (-100 on the prompt), or None when the row is dropped."""
    if overlong_rows not in OVERLONG_MODES:
        raise ValueError(f"overlong_rows={overlong_rows!r}: choose one of {OVERLONG_MODES}")
    full, head, special = training_texts(prompt, completion, tokenizer, chat_template)
    ids = tokenizer(full, add_special_tokens=special)["input_ids"]
    n_prompt = len(tokenizer(head, add_special_tokens=special)["input_ids"])
    if len(ids) > max_length:
        if overlong_rows == "drop":
            return None
        ids = ids[:max_length]
    labels = [-100] * min(n_prompt, len(ids)) + ids[n_prompt:]
    if all(x == -100 for x in labels):
        return None  # nothing left to learn from (DS2 filters these rows too)
    return {"input_ids": list(ids), "labels": labels}


def build_training_records(
    pairs: Sequence[Mapping[str, Any]],
    tokenizer,
    max_length: int,
    chat_template: str = "none",
    overlong_rows: str = "truncate",
) -> tuple[list[dict], int]:
    """Tokenised training rows and how many were dropped (too long, or nothing left after truncation).

    Prompt and completion are used as stored (DS2 does not strip them); an empty one is an error naming the row."""
    records, dropped = [], 0
    for i, row in enumerate(pairs):
        prompt, completion = str(row.get("prompt") or ""), str(row.get("completion") or "")
        if not prompt.strip() or not completion.strip():
            raise ValueError(f"training row {i} has an empty {'prompt' if not prompt.strip() else 'completion'}")
        encoded = encode_pair(prompt, completion, tokenizer, max_length, chat_template, overlong_rows)
        if encoded is None:
            dropped += 1
        else:
            records.append(encoded)
    return records, dropped


MERGED_FOLDER = "merged"  # an adapter's merged copy, next to it (benchmark_scores deletes it once scored)


def run_lora_sft(
    model_path: str,
    pairs: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    settings: LoraSFTSettings | Mapping | None = None,
    on_log: OnLog | None = None,
    reuse_key: str | None = None,
    merge: bool = False,
) -> TrainResult:
    """LoRA SFT of ``model_path`` on ``pairs``; the adapter and the tokenizer in ``output_dir/adapter``
    (returned as ``checkpoint``). ``merge``: also save the merged model to ``output_dir/merged`` and return
    that. ``reuse_key``: a finished run with the same key in ``output_dir`` is returned as it is
    (``lib/training.py``, "Reuse")."""
    s = _settings_from(LoraSFTSettings, settings)
    if reuse_key and (done := finished_run(output_dir, reuse_key)) is not None:
        return done
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_downstream_tokenizer(model_path, s.chat_template)
    records, dropped = build_training_records(pairs, tok, s.max_length, s.chat_template, s.overlong_rows)
    if not records:
        raise ValueError(
            f"no training rows left ({dropped} dropped: longer than max_length={s.max_length} tokens "
            f"with overlong_rows={s.overlong_rows!r}, or no completion token left)"
        )
    peft_config = LoraConfig(
        r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=s.lora_dropout,
        target_modules=("all-linear" if s.target_modules == ["all-linear"] else s.target_modules),
        task_type="CAUSAL_LM",
    )
    # Rows arrive tokenised with their labels, so TRL neither re-renders nor re-masks them.
    args = _sft_config(s, out, max_grad_norm=s.max_grad_norm)
    trainer = SFTTrainer(
        model=_load_model(model_path),
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[_log_callback(on_log)],
    )
    resume, wall, disk = _train(trainer, out, s, on_log, "LoRA SFT")
    adapter = out / "adapter"
    trainer.save_model(str(adapter))  # the LoRA weights and adapter_config.json
    tok.save_pretrained(str(adapter))
    checkpoint = str(adapter)
    if merge:
        checkpoint = _save_merged(trainer.accelerator.unwrap_model(trainer.model), tok, out / MERGED_FOLDER)
    result = _train_result(
        trainer,
        checkpoint=checkpoint,
        out=out,
        wall=wall,
        resume=resume,
        n_examples=len(records),
        n_dropped=dropped,
        disk=disk,
    )
    del trainer
    return _close_run(result, s.keep_checkpoints, reuse_key)


def _save_merged(peft_model, tokenizer, target: Path) -> str:
    # A merged 8B model is ~16 GB in bf16: fail before writing any of it when the disk cannot hold it.
    bytes_per_parameter = next(peft_model.parameters()).element_size()
    require_space(
        plan_model_copy(peft_model, target, f"merged model {target}", bytes_per_parameter),
        "Free space or point LM_MIXUP_HOME at a larger disk; merged copies of other arms can be deleted "
        "(they are rebuilt from their adapters when needed).",
    )
    merged_model = peft_model.merge_and_unload()
    merged_model.config.use_cache = True
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged_model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # a crash never leaves half a model under the final name
    return str(target)


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model an adapter folder was trained on (``adapter_config.json``'s ``base_model_name_or_path``)."""
    config = Path(adapter_dir) / "adapter_config.json"
    if not config.is_file():
        raise ValueError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)")
    return str(json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"])


def merge_adapter(adapter_dir: str | Path, target: str | Path, dtype: str = "float32") -> str:
    """Base + adapter merged into one ordinary HF folder at ``target`` (what vLLM loads); kept when it is
    already there. Returns ``target``."""
    target = Path(target)
    if (target / "config.json").is_file():
        return str(target)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(adapter_base(adapter_dir), dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    path = _save_merged(model, AutoTokenizer.from_pretrained(str(adapter_dir)), target)
    del model, base
    free_memory()
    return path


_BASE_FILES = (".safetensors", ".bin", ".json")


def adapter_model_folder(adapter_dir: str | Path, target: str | Path) -> str:
    """One folder that transformers (so lm-eval's hf backend) loads as base + adapter, with no copy of
    either: links to the base folder's config and weight files and to the adapter folder's files (its
    tokenizer included); transformers attaches the adapter it finds next to the weights. The base must
    be a local folder; vLLM ignores the adapter, so give it :func:`merge_adapter`'s folder instead."""
    adapter_dir, target = Path(adapter_dir), Path(target)
    base = Path(adapter_base(adapter_dir))
    if not base.is_dir():
        raise ValueError(f"the adapter's base {base} is not a local folder: merge the adapter instead")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in base.iterdir():
        # weights, their index and the model config; the tokenizer comes from the adapter folder
        if (
            f.is_file()
            and f.suffix in _BASE_FILES
            and (f.name.startswith(("model", "pytorch_model")) or f.name in ("config.json", "generation_config.json"))
        ):
            os.symlink(f.resolve(), tmp / f.name)
    for f in adapter_dir.iterdir():
        if f.is_file():
            os.symlink(f.resolve(), tmp / f.name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return str(target)
