"""Settings of the training stage: base policy, cold-start SFT, GRPO, the MIXTURE evaluation.

Defaults are the method's (the reference's ``sft/i_t_resume.py`` and
``examples/config_mixup_bayes.yaml`` on EasyR1's actor defaults; docs/method.md);
the demo profile's preset shrinks them to a few CPU steps.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import Choice, StageSettings, budget, internal


class TargetLayout(Choice):
    """How an SFT example (and a distiller prompt) is laid out."""

    reference = "reference"
    chat = "chat"


class CotMode(Choice):
    """What an SFT row with an empty ``cot`` is trained on."""

    omit_empty = "omit_empty"
    plan = "plan"
    empty_think = "empty_think"


class GrpoPromptLayout(Choice):
    reference = "reference"
    chat = "chat"


class RewardRules(Choice):
    reference = "reference"
    strict = "strict"


class QualityBand(Choice):
    reference = "reference"
    interval = "interval"


_LAYOUT_HELP = (
    "'reference': the reference's mix-up system prompt, instruction and input joined by a newline, target "
    "'<think>\\n{cot}\\n</think>\\n\\n<answer>\\n{output}\\n</answer>' with no end-of-turn token trained. 'chat': our "
    "system prompt and a chat-template assistant turn '<think>{cot}</think>\\n<answer>{output}</answer>' "
    "(end-of-turn trained)."
)


class BasePolicySettings(StageSettings):
    """The distiller's starting model."""

    preset = "base_policy"
    model: str = Field(
        "Qwen/Qwen2.5-1.5B-Instruct",
        min_length=1,
        description=(
            "'smollm2' (SmolLM2-135M-Instruct, packaged and offline) or any Hugging Face id or local model folder."
        ),
    )


class TrainerSettings(StageSettings):
    """Fields every TRL run here shares (distiller SFT and GRPO, the downstream LoRA fine-tune)."""

    seed: int = Field(42, description="Seed of the trainer (data order, initialisation of new weights).")
    logging_steps: int = Field(10, ge=1, description="Optimizer steps between two log lines (loss, rewards).")
    save_steps: int = Field(500, ge=1, description="Optimizer steps between two checkpoints (resume points).")
    save_total_limit: int = Field(2, ge=0, description="Checkpoints kept in the output folder; 0 = all.")
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; -1 = run the full epochs.")
    bf16: bool | None = internal(None, "bfloat16 training; null = on when CUDA supports it.")
    gradient_checkpointing: bool | None = internal(
        None, "Recompute activations; null = on with CUDA (memory), off on CPU (speed)."
    )
    use_cpu: bool | None = internal(None, "Train on the CPU; null = when CUDA is absent.")
    resume: bool = internal(True, "Resume from the latest checkpoint in the output folder after a crash.")
    keep_checkpoints: bool = internal(
        False,
        (
            "When a run finishes, keep its checkpoint-N folders whole (weights and optimizer state, to train on from "
            "them: 18.5 GB each for the paper's 1.5B distiller); false keeps only their trainer state and training "
            "arguments, final/ holding the weights. A crashed run resumes from its checkpoints either way."
        ),
    )
    check_disk_space: bool = internal(
        True,
        "Before the first step, estimate what the run's checkpoints and final model write (from the model's "
        "parameters, the optimizer and save_total_limit) and fail if the disk under its folder has less free.",
    )
    disable_tqdm: bool = internal(True, "No progress bars (the asset logs each logging step instead).")
    extra_args: dict = internal({}, "Passed through to TRL's trainer config as keyword arguments.")

    def validate(self) -> TrainerSettings:  # kept for callers that validated dataclasses explicitly
        return self

    def run_values(self) -> dict:
        """The values that decide a run (its folder's key): all but the disk check, which changes nothing
        the run writes (switching it off must not make a finished run train again)."""
        return {k: v for k, v in self.values().items() if k != "check_disk_space"}


class SFTSettings(TrainerSettings):
    """Cold-start SFT (TRL SFTTrainer): full fine-tune, lr 2e-5, 3 epochs, max length 2400, warmup 5%,
    weight decay 0.01, batch 1 with no accumulation, bf16 on GPU; ``max_steps > 0`` overrides the epochs."""

    preset = "sft"
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (reference 2e-5).")
    num_train_epochs: float = Field(3.0, gt=0, description="Epochs over the MIXTURE train split (reference 3).")
    max_length: int = Field(2400, ge=16, description="Longest example in tokens (reference 2400).")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="Share of steps warming up the learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (reference 0.01).")
    lr_scheduler_type: str = Field("linear", description="transformers scheduler name (not published; its default).")
    per_device_train_batch_size: int = Field(1, ge=1, description="Examples per device per micro-batch (reference 1).")
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description=(
            "Micro-batches per optimizer step; with per_device_train_batch_size 1 the effective batch (reference 1)."
        ),
    )
    target_layout: TargetLayout = Field(
        TargetLayout.reference,
        description=(_LAYOUT_HELP + " Distil with the same layout (distilled_pool's prompt_layout)."),
    )
    cot_mode: CotMode = Field(
        CotMode.omit_empty,
        description=(
            "A row with an empty cot: 'omit_empty' (reference) trains no think block; 'plan' a short fact-free plan "
            "built from the row; 'empty_think' an empty think block."
        ),
    )
    drop_too_long: bool = Field(
        True,
        description=(
            "Drop examples over max_length (counted in the metadata); false truncates them as the reference does."
        ),
    )


class GRPOSettings(TrainerSettings):
    """GRPO (TRL GRPOTrainer): 4 rollouts per prompt, temperature 1.0, KL 0.01 (k3), lr 1e-6, weight decay
    0.01, clip 0.2 low / 0.3 high, dual clip 3.0, 1 epoch, prompts and completions up to 2400 tokens; with one
    process 8 completions x 8 accumulation = 64 completions per optimizer step and 64 micro-batches (512
    completions, 128 prompts) per generation round. Rollouts with vLLM (colocated) when CUDA and vLLM are present."""

    preset = "grpo"
    save_steps: int = Field(50, ge=1, description="Optimizer steps between two checkpoints (resume points).")
    logging_steps: int = Field(1, ge=1, description="Optimizer steps between two log lines (loss, rewards).")
    num_generations: int = Field(4, ge=2, description="Rollouts per prompt; advantages are relative within them.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts (reference 1.0).")
    beta: float = Field(0.01, ge=0, description="KL coefficient (TRL's k3 estimator, EasyR1's low-var KL; 0.01).")
    learning_rate: float = Field(1e-6, gt=0, description="Learning rate (reference 1e-6).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (reference optim.weight_decay 1e-2).")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Lower clip of the policy ratio, 1 - epsilon (reference 0.2).")
    epsilon_high: float = Field(
        0.3, gt=0, description="Upper clip of the policy ratio, 1 + epsilon_high (reference 0.3)."
    )
    delta: float = Field(
        3.0,
        ge=0,
        description=(
            "Dual clip: for a negative advantage the ratio counts at most delta (EasyR1's clip_ratio_dual 3.0); must "
            "exceed 1 + epsilon_high; 0 = off."
        ),
    )
    prompt_layout: GrpoPromptLayout = Field(
        GrpoPromptLayout.reference,
        description=(
            "'reference': one user turn, the reference's format prompt (examples/format_prompt/mixup.jinja) then the "
            "user turn, no system turn; 'chat': our system prompt + user turn, as SFT's 'chat' layout."
        ),
    )
    max_prompt_length: int = Field(2400, ge=16, description="Longest prompt in tokens; longer prompts are dropped.")
    max_completion_length: int = Field(2400, ge=1, description="Longest rollout in tokens.")
    per_device_train_batch_size: int = Field(8, ge=1, description="Completions per device per micro-batch.")
    gradient_accumulation_steps: int = Field(8, ge=1, description="Micro-batches per optimizer step.")
    steps_per_generation: int = Field(
        64,
        ge=0,
        description=("Micro-batches generated per rollout round; 0 = TRL's default (gradient_accumulation_steps)."),
    )
    num_train_epochs: float = Field(1.0, gt=0, description="Epochs over the MIXTURE train prompts.")
    lr_scheduler_type: str = Field("constant", description="transformers scheduler name (not published; constant).")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="Share of steps warming up the learning rate.")
    loss_type: str = Field("dapo", description="TRL loss aggregation (TRL's default: token-level mean).")
    scale_rewards: str = Field("group", description="Advantage normalisation: GRPO's per-group std.")
    weight_quality: float = Field(0.5, ge=0, description="Weight of the kNN-Bayes quality reward, every task (0.5).")
    weight_alignment: float = Field(0.4, ge=0, description="Weight of the alignment reward, every task (0.4).")
    weight_format: float = Field(0.1, ge=0, description="Weight of the format reward, every task (0.1).")
    reward_weight_overrides: str = Field(
        "{}",
        description=(
            'Per-task weight overrides as JSON, component by component, e.g. {"mcq": {"alignment": 0.0}} (the '
            "reference's task_specific_config overrides nothing). Tasks: qa, mcq, tfq, cs, paragraph."
        ),
    )
    reward_rules: RewardRules = Field(
        RewardRules.reference,
        description=(
            "'reference': the format/answer rules of the method's reward code (case-insensitive layout check, first "
            "<answer> block or the whole response judged); 'strict': one think then one non-blank answer block, "
            "nothing else, and no answer block scores 0 on alignment and quality."
        ),
    )
    reward_quality_band: QualityBand = Field(
        QualityBand.reference,
        description=(
            "'reference': quality 1.0 if E >= 4, 0.3 only if E == 3 exactly, else 0; 'interval': 0.3 for 3 <= E < 4."
        ),
    )
    drop_too_long: bool = Field(True, description="Drop prompts over max_prompt_length (counted in the metadata).")
    use_vllm: bool | None = internal(None, "vLLM rollouts; null = when CUDA is present and vLLM imports.")
    vllm_mode: str = internal("colocate", "TRL's vLLM mode: 'colocate' (same process) or 'server'.")
    vllm_gpu_memory_utilization: float = internal(0.3, "GPU memory share of the colocated vLLM engine.", gt=0, le=1)

    @model_validator(mode="after")
    def _batches_fit(self) -> GRPOSettings:
        if self.delta and self.delta <= 1 + self.epsilon_high:
            raise ValueError(
                f"delta = {self.delta} must exceed 1 + epsilon_high = {1 + self.epsilon_high} "
                "(below it the dual clip would also cut ordinary positive-advantage updates)"
            )
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if per_step % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size x gradient_accumulation_steps = {per_step} must be a "
                f"multiple of num_generations = {self.num_generations}"
            )
        gen_batch = self.per_device_train_batch_size * (self.steps_per_generation or self.gradient_accumulation_steps)
        if gen_batch % self.num_generations:
            raise ValueError(
                f"generation batch {gen_batch} (per-device batch x steps_per_generation) must be a "
                f"multiple of num_generations = {self.num_generations}"
            )
        return self


class MixtureEvalSettings(StageSettings):
    """The in-domain evaluation of the base, SFT and GRPO models on the MIXTURE test split."""

    preset = "mixture_eval"
    max_examples: int = Field(0, ge=0, description="Test examples evaluated; 0 = the whole test split.")
    max_new_tokens: int = Field(2400, ge=1, description="Longest answer generated per example.")
    prompt_layout: TargetLayout = Field(
        TargetLayout.reference,
        description=(
            "The prompt the models are asked with; keep it equal to sft_checkpoint's target_layout (the reference's "
            "MIXTURE evaluation, sft/batch_infer_split.py, uses its SFT prompt)."
        ),
    )
    repetition_penalty: float = Field(
        1.3,
        gt=0,
        description=(
            "Greedy decoding's repetition penalty (1 = off); the reference's evaluation script default is 1.3."
        ),
    )
    reward_rules: RewardRules = Field(
        RewardRules.reference,
        description="The reward rules the answers are scored with (as grpo_checkpoint's reward_rules).",
    )
    reward_quality_band: QualityBand = Field(
        QualityBand.reference, description="The quality band of the reward (as grpo_checkpoint's reward_quality_band)."
    )
    max_failed_fraction: float = budget(
        0.05, "each model's generations, and apart from them of the judge's calls on its parsed answers"
    )
