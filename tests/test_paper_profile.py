"""The paper profile resolves every setting of docs/method.md to the reference's value.

Each row: (what, resolved value, reference value, reference file in yuu250/LM-mixup).
Settings resolve when a run starts, not at import, so the paper profile is resolved here in
process, with every ``LM_MIXUP_*`` variable of the test environment removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lm_mixup_assets.config import resolved_settings
from lm_mixup_assets.lib.settings import clusters, distill, evaluation, mixture, selection, training
from lm_mixup_assets.sql_assets import SQL_STEPS, step_settings
from resources import build_resources

ROOT = Path(__file__).resolve().parents[1]

MODELS = {
    "ClusteringConfig": clusters.ClusteringSettings,
    "ClusterInputsConfig": clusters.ClusterInputsSettings,
    "MixtureConfig": mixture.MixtureSettings,
    "TargetsConfig": mixture.TargetsSettings,
    "RatingLibraryConfig": mixture.RatingLibrarySettings,
    "BasePolicyConfig": training.BasePolicySettings,
    "SftConfig": training.SFTSettings,
    "GrpoConfig": training.GRPOSettings,
    "DistillConfig": distill.DistillSettings,
    "LongTailConfig": selection.LongTailSettings,
    "TrainingSetConfig": selection.TrainingSetSettings,
    "DownstreamConfig": evaluation.LoraSFTSettings,
    "EvalSettings": evaluation.LmEvalSettings,
}


@pytest.fixture(scope="module")
def paper():
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("LM_MIXUP_")}
    try:
        out = {name: resolved_settings(model, "paper")[0].values() for name, model in MODELS.items()}
        for key, resource in build_resources("paper").items():
            if key != "warehouse":
                out[key] = {k: v for k, v in resource.__dict__.items() if isinstance(v, (str, int, float, bool))}
        split = next(s for s in SQL_STEPS if s.name == "quality_split")
        out["threshold"] = resolved_settings(step_settings(split), "paper")[0].quality_threshold
    finally:
        os.environ.update(saved)
    return out


def _rows(c):
    sft, grpo, distill, down, ev = (
        c["SftConfig"],
        c["GrpoConfig"],
        c["DistillConfig"],
        c["DownstreamConfig"],
        c["EvalSettings"],
    )
    return [
        # 1. rate the pool
        ("judge model", c["judge"]["model"], "gpt-4o-mini", "DS2/LLM_scoring/scoring_api.py"),
        ("pool rubric", c["judge"]["rubric_version"], "ds2", "DS2/LLM_scoring/scoring_api.py"),
        (
            "re-rating rubric of distilled pairs",
            c["judge"]["distilled_rubric_version"],
            "per_task_qa_pair",
            "data_process/gpt_rating.py",
        ),
        ("rubric of MIXTURE samples", c["judge"]["target_rubric_version"], "per_task", "data_process/gpt_rating.py"),
        ("judge temperature (API default)", c["judge"]["temperature"], 1.0, "DS2/LLM_scoring/scoring_api.py"),
        ("judge max tokens", c["judge"]["max_tokens"], 128, "DS2/LLM_scoring/scoring_api.py"),
        ("re-asks without JSON", c["judge"]["max_parse_retries"], 3, "DS2/LLM_scoring/scoring_api.py"),
        ("high quality: compressed Overall >=", c["threshold"], 4, "data_process/filter_high.py"),
        # 2. cluster
        ("embedder", c["embedder"]["model"], "BAAI/bge-m3", "data_process/cluster.py"),
        ("cluster min size", c["ClusteringConfig"]["min_size"], 2, "data_process/cluster.py"),
        ("cluster max size", c["ClusteringConfig"]["max_size"], 5, "data_process/cluster.py"),
        ("capacity mean", c["ClusteringConfig"]["mean_cap"], 3.0, "data_process/cluster.py"),
        ("capacity std", c["ClusteringConfig"]["std_cap"], 1.0, "data_process/cluster.py"),
        ("clustering seed", c["ClusteringConfig"]["seed"], 42, "data_process/cluster.py"),
        (
            "clustering algorithm (MiniBatchKMeans + greedy)",
            c["ClusteringConfig"]["algorithm"],
            "reference",
            "data_process/cluster.py",
        ),
        ("cluster input layout", c["ClusterInputsConfig"]["input_style"], "reference", "data_process/cluster2input.py"),
        # 3. MIXTURE
        (
            "MIXTURE writer",
            (c["mixture_writer"]["backend"], c["mixture_writer"]["model"]),
            ("openai", "gpt-4o-mini"),
            "paper, section 3",
        ),
        ("variants per example, at most", c["MixtureConfig"]["max_variants"], 20, "paper, section 3"),
        ("variants per example, at least", c["MixtureConfig"]["min_variants"], 2, "paper, section 3"),
        ("targets kept at compressed Overall >=", c["TargetsConfig"]["min_quality"], 4, "paper, section 3"),
        ("rating library k_t", c["RatingLibraryConfig"]["k_t"], 3, "knn/build.py"),
        ("rating library smoothing", c["RatingLibraryConfig"]["smoothing"], 0.01, "knn/build.py"),
        ("released MIXTURE", c["MixtureConfig"]["released_path"], "hf:dokiik/MIXTURE", "README (data)"),
        # 4. SFT
        ("distiller base", c["BasePolicyConfig"]["model"], "Qwen/Qwen2.5-1.5B-Instruct", "sft/i_t_resume.py"),
        ("SFT lr", sft["learning_rate"], 2e-5, "sft/i_t_resume.py"),
        ("SFT epochs", sft["num_train_epochs"], 3.0, "sft/i_t_resume.py"),
        ("SFT max length", sft["max_length"], 2400, "sft/i_t_resume.py"),
        ("SFT warm-up", sft["warmup_ratio"], 0.05, "sft/i_t_resume.py"),
        ("SFT weight decay", sft["weight_decay"], 0.01, "sft/i_t_resume.py"),
        (
            "SFT batch x accumulation",
            sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"],
            1,
            "sft/i_t_resume.py",
        ),
        ("SFT target layout", sft["target_layout"], "reference", "sft/i_t_resume.py"),
        ("SFT empty cot", sft["cot_mode"], "omit_empty", "sft/i_t_resume.py"),
        # 4. GRPO
        ("GRPO rollouts", grpo["num_generations"], 4, "examples/config_mixup_bayes.yaml"),
        ("GRPO temperature", grpo["temperature"], 1.0, "examples/config_mixup_bayes.yaml"),
        ("KL coefficient", grpo["beta"], 0.01, "examples/config_mixup_bayes.yaml"),
        ("GRPO lr", grpo["learning_rate"], 1e-6, "examples/config_mixup_bayes.yaml"),
        ("GRPO weight decay", grpo["weight_decay"], 0.01, "examples/config_mixup_bayes.yaml"),
        ("clip low", grpo["epsilon"], 0.2, "EasyR1 actor config"),
        ("clip high", grpo["epsilon_high"], 0.3, "EasyR1 actor config"),
        ("dual clip", grpo["delta"], 3.0, "EasyR1 actor config"),
        ("GRPO prompt layout", grpo["prompt_layout"], "reference", "examples/format_prompt/mixup.jinja"),
        (
            "GRPO max prompt / response",
            (grpo["max_prompt_length"], grpo["max_completion_length"]),
            (2400, 2400),
            "examples/config_mixup_bayes.yaml",
        ),
        (
            "reward weights",
            (grpo["weight_quality"], grpo["weight_alignment"], grpo["weight_format"]),
            (0.5, 0.4, 0.1),
            "examples/config_mixup_bayes.yaml",
        ),
        ("per-task overrides", json.loads(grpo["reward_weight_overrides"]), {}, "examples/config_mixup_bayes.yaml"),
        ("reward rules", grpo["reward_rules"], "reference", "examples/reward_function/llm_mixup_bayes.py"),
        ("quality band", grpo["reward_quality_band"], "reference", "examples/reward_function/llm_mixup_bayes.py"),
        # 5. distil, select
        ("distill prompt layout", distill["prompt_layout"], "reference", "data_process/inference.py"),
        ("distill repetition penalty", distill["repetition_penalty"], 1.05, "data_process/inference.py"),
        (
            "distill max input / new tokens",
            (distill["max_input_tokens"], distill["max_new_tokens"]),
            (2400, 2400),
            "data_process/inference.py",
        ),
        ("long-tail k", c["LongTailConfig"]["k"], 15, "data_process/long_tail_rating.py"),
        (
            "long-tail text",
            (c["LongTailConfig"]["prompt_prefix"], c["LongTailConfig"]["answer_prefix"]),
            ("Instruction: ", "Answer: "),
            "data_process/long_tail_rating.py",
        ),
        ("training-set size", c["TrainingSetConfig"]["size"], 10_000, "data_process/merged.py"),
        (
            "original rows ranked",
            c["TrainingSetConfig"]["original_rank"],
            "quality_then_long_tail",
            "data_process/long_tail_rating.py",
        ),
        (
            "row order and seed",
            (c["TrainingSetConfig"]["row_order"], c["TrainingSetConfig"]["shuffle_seed"]),
            ("reference", 42),
            "data_process/merged.py",
        ),
        # 6. downstream and benchmarks
        ("downstream base", down["base_model"], "meta-llama/Llama-3.1-8B", "DS2/model_finetune/train_eval.sh"),
        (
            "LoRA r / alpha / dropout",
            (down["lora_r"], down["lora_alpha"], down["lora_dropout"]),
            (64, 16, 0.1),
            "DS2/model_finetune/train_eval.sh",
        ),
        (
            "downstream lr / epochs",
            (down["learning_rate"], down["num_train_epochs"]),
            (1e-4, 5.0),
            "DS2/model_finetune/train_eval.sh",
        ),
        (
            "downstream max length / warm-up",
            (down["max_length"], down["warmup_ratio"]),
            (2048, 0.03),
            "DS2/model_finetune/train_eval.sh",
        ),
        (
            "downstream effective batch (1 GPU)",
            down["per_device_train_batch_size"] * down["gradient_accumulation_steps"],
            128,
            "DS2/model_finetune/train_eval.sh",
        ),
        ("downstream gradient clipping (0 = none)", down["max_grad_norm"], 0.0, "DS2/model_finetune/finetune.py"),
        ("downstream text format", down["chat_template"], "none", "DS2/model_finetune/finetune.py"),
        ("evaluation text format", ev["chat_template"], "none", "DS2/model_finetune/run_eval.sh"),
        (
            "benchmark subsets / decoding",
            (ev["task_subsets"], ev["generation"]),
            ("ds2", "ds2"),
            "DS2/model_finetune/run_eval.sh",
        ),
    ]


def test_paper_profile_resolves_to_the_reference(paper):
    wrong = [
        f"{what}: {ours!r} != {ref!r} ({where})"
        for what, ours, ref, where in _rows(paper)
        if (tuple(ours) if isinstance(ours, list) else ours) != ref
    ]
    assert not wrong, "\n".join(wrong)


def test_every_row_is_in_the_method_doc(paper):
    """docs/method.md names every reference file the table relies on."""
    doc = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    files = {where for *_, where in _rows(paper) if "/" in where and not where.startswith("EasyR1")}
    missing = sorted(f for f in files if f not in doc)
    assert not missing, f"docs/method.md does not name {missing}"


def test_the_paper_benchmarks_are_ds2s():
    """Shots and per-task item caps of DS2's run_eval.sh (and its eval/*/run_eval.py)."""
    from lm_mixup_assets.lib.eval_tasks import PAPER_BENCHMARKS

    got = {b.name.lower(): (b.num_fewshot, b.limit_per_task) for b in PAPER_BENCHMARKS}
    assert got == {"mmlu": (0, None), "gsm8k": (8, 200), "bbh": (3, 40), "truthfulqa": (0, None), "tydiqa": (1, 100)}
    tydiqa = next(b for b in PAPER_BENCHMARKS if b.name.lower() == "tydiqa")
    assert len(tydiqa.tasks) == 9  # every GoldP language, not English only


def test_reward_weights_from_config_and_overrides():
    import dagster as dg

    from lm_mixup_assets.lib.rewards import resolve_weights
    from lm_mixup_assets.lib.settings.training import GRPOSettings as GrpoConfig
    from lm_mixup_assets.training import reward_weights

    weights = reward_weights(GrpoConfig(reward_weight_overrides="{}"))
    for task in ("qa", "mcq", "tfq", "cs", "paragraph"):
        assert resolve_weights(task, weights) == {"quality": 0.5, "alignment": 0.4, "format": 0.1}
    weights = reward_weights(GrpoConfig(reward_weight_overrides='{"mcq": {"alignment": 0.0, "quality": 0.8}}'))
    assert resolve_weights("mcq", weights) == {"quality": 0.8, "alignment": 0.0, "format": 0.1}
    assert resolve_weights("qa", weights) == {"quality": 0.5, "alignment": 0.4, "format": 0.1}
    for bad, why in (
        ("{mcq", "not JSON"),
        ('{"essay": {"format": 1}}', "unknown keys"),
        ('{"default": {}}', "JSON object of tasks"),
        ('{"qa": {"quality": -1}}', "negative"),
    ):
        with pytest.raises(dg.Failure, match=why):
            reward_weights(GrpoConfig(reward_weight_overrides=bad))
