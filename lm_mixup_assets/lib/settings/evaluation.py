"""Settings of the evaluation stage: the downstream LoRA fine-tune per arm and the lm-eval protocol.

Defaults are the paper's (DS2's finetune.py and evaluation settings; docs/method.md): Llama-3.1-8B,
LoRA r 64 / alpha 16 / dropout 0.1 on every projection, lr 1e-4, 5 epochs, length 2048,
effective batch 128; the paper's task set with DS2's limits and decoding.
"""

from __future__ import annotations

from pydantic import Field

from .base import Choice, StageSettings, internal
from .training import TrainerSettings

# DS2 finetune.py's LoRA targets: every attention and MLP projection of a Llama block.
DS2_TARGET_MODULES = ["q_proj", "o_proj", "v_proj", "k_proj", "gate_proj", "up_proj", "down_proj"]


class ChatTemplate(Choice):
    none = "none"
    apply = "apply"


class OverlongRows(Choice):
    truncate = "truncate"
    drop = "drop"


class TaskSet(Choice):
    smoke = "smoke"
    paper = "paper"


class EvalBackend(Choice):
    hf = "hf"
    vllm = "vllm"


class TaskSubsets(Choice):
    ds2 = "ds2"
    all = "all"


class Generation(Choice):
    ds2 = "ds2"
    task = "task"


CHAT_TEMPLATE_HELP = (
    "Text format of training AND evaluation (one value, both sides): 'none' = plain prompt + ' ' + "
    "completion + eos, plain prompts in lm-eval (DS2, paper); 'apply' = the tokenizer's chat "
    "template in both (an error if the tokenizer has none)."
)


class LoraSFTSettings(TrainerSettings):
    """The downstream model of one arm: TRL SFT with a LoRA adapter (peft) on the arm's training set."""

    preset = "downstream"
    base_model: str = Field(
        "meta-llama/Llama-3.1-8B",
        min_length=1,
        description=(
            "The downstream base model: 'smollm2' (packaged, offline) or any Hugging Face id or local folder."
        ),
    )
    learning_rate: float = Field(1e-4, gt=0, description="Learning rate (DS2 1e-4).")
    num_train_epochs: float = Field(5.0, gt=0, description="Epochs over the arm's training set (DS2 5).")
    max_length: int = Field(2048, ge=16, description="Longest example in tokens (DS2 2048); see overlong_rows.")
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="Share of steps warming up the learning rate (0.03).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (DS2 0).")
    lr_scheduler_type: str = Field("linear", description="transformers scheduler name (DS2: linear).")
    per_device_train_batch_size: int = Field(4, ge=1, description="Examples per device per micro-batch.")
    gradient_accumulation_steps: int = Field(
        32,
        ge=1,
        description=("Micro-batches per optimizer step (4 x 32 = the paper's effective batch of 128 on one device)."),
    )
    max_grad_norm: float = Field(0.0, ge=0, description="Gradient-norm clip; 0 = none (DS2: --clip_grad_norm -1).")
    lora_r: int = Field(64, ge=1, description="LoRA rank (DS2 64).")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (DS2 16).")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="LoRA dropout (DS2 0.1).")
    target_modules: list[str] = Field(
        list(DS2_TARGET_MODULES),
        min_length=1,
        description=(
            "Module names that get adapters (DS2: every attention and MLP projection); ['all-linear'] = peft's shortcut."
        ),
    )
    chat_template: ChatTemplate = Field(ChatTemplate.none, description=CHAT_TEMPLATE_HELP)
    overlong_rows: OverlongRows = Field(
        OverlongRows.truncate,
        description=(
            "Rows longer than max_length tokens: 'truncate' (DS2: cut to max_length, drop a row with no completion "
            "token left) or 'drop'."
        ),
    )
    keep_checkpoints: bool = internal(
        False,
        (
            "When a run finishes, keep its checkpoint-N folders whole (adapter and optimizer state: 2 GB each for "
            "the paper's rank-64 adapter of an 8B model); false keeps only their trainer state and training "
            "arguments, adapter/ holding the weights. A crashed run resumes from its checkpoints either way."
        ),
    )


class LmEvalSettings(StageSettings):
    """One lm-eval protocol for every arm and the base model (the check ``same_eval_settings`` holds them to it)."""

    preset = "lm_eval"
    base_model: str = Field(
        "meta-llama/Llama-3.1-8B",
        min_length=1,
        description=(
            "The untuned model base_model_scores scores; benchmark_scores warns when an arm was trained from another."
        ),
    )
    tasks: TaskSet = Field(
        TaskSet.paper,
        description=(
            "'smoke': small offline tasks built from the lm-eval package (bbh, gsm8k, mmlu items); 'paper': the "
            "paper's MMLU, TruthfulQA, GSM8K, BBH and TyDiQA."
        ),
    )
    limit: int = Field(0, ge=0, description="Items per task (smoke tasks); 0 = all.")
    batch_size: int = Field(16, ge=1, description="lm-eval batch size.")
    backend: EvalBackend = Field(EvalBackend.vllm, description="'hf' (transformers, any device) or 'vllm' (GPU).")
    seed: int = Field(1234, description="lm-eval's seeds (random, numpy, torch, fewshot).")
    chat_template: ChatTemplate = Field(
        ChatTemplate.none,
        description=(
            CHAT_TEMPLATE_HELP
            + " Must equal the downstream model's training setting (benchmark_scores fails otherwise)."
        ),
    )
    task_subsets: TaskSubsets = Field(
        TaskSubsets.ds2,
        description=(
            "Paper task set only: 'ds2' = DS2's per-task limits (GSM8K 200, BBH 40 per subtask, TyDiQA 100 per "
            "language, random with seed 42; MMLU and TruthfulQA whole) or 'all' = every item."
        ),
    )
    generation: Generation = Field(
        Generation.ds2,
        description=(
            "Paper task set only: 'ds2' = DS2's decoding (GSM8K greedy 512 tokens stop at newline; BBH sampled at "
            "temperature 0.8, 512 tokens; TyDiQA greedy 50 tokens) or 'task' = lm-eval's task defaults."
        ),
    )

    smoke_tasks: str = Field(
        "smoke_mmlu,smoke_bbh,smoke_gsm8k",
        description=(
            "Smoke task set only: the comma-separated smoke tasks to score (smoke_mmlu, smoke_bbh, smoke_gsm8k); "
            "empty = none, only the held-out task."
        ),
    )
    uncapped: str = Field(
        "",
        description=(
            "Smoke task set only: comma-separated smoke tasks scored on every item whatever limit says (smoke_mmlu "
            "has 273 items: enough to resolve differences between arms that 8 items cannot)."
        ),
    )
    heldout: bool = Field(
        True,
        description=(
            "Also score the held-out instruction task (mean per-token log-likelihood of the heldout_instructions "
            "answers, which no training set contains) when that asset holds rows."
        ),
    )
    confidence: float = Field(
        0.95, gt=0, lt=1, description="Confidence of the bootstrap intervals on every score and paired difference."
    )
    bootstrap_resamples: int = Field(
        2000,
        ge=100,
        description="Bootstrap resamples of the items for each interval (seeded: same items, same interval).",
    )
    keep_merged: bool = Field(
        False,
        description=(
            "Keep the merged model an adapter is evaluated through (vLLM, or a hub base) after its scores are "
            "stored. Off: it is deleted then (an 8B model is ~16 GB per arm in bf16) and merged again only if "
            "the arm is evaluated again. Not part of the protocol."
        ),
    )

    def smoke_task_list(self) -> list[str]:
        return [t.strip() for t in self.smoke_tasks.split(",") if t.strip()]

    def uncapped_list(self) -> list[str]:
        return [t.strip() for t in self.uncapped.split(",") if t.strip()]

    def protocol(self) -> dict:
        """The fields that must be equal across arms and the base model."""
        return {k: v for k, v in self.values().items() if k not in ("base_model", "keep_merged")}
