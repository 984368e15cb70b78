"""The training group through Dagster on a tiny random model and a small MIXTURE."""

import dagster as dg

import definitions
from tests.helpers import checks_by_name  # noqa: F401


def group(name):
    return [a for a in definitions.defs.assets if set(a.group_names_by_key.values()) == {name}]


def test_training_group_materialises_with_a_tiny_model(resources, query, tiny_causal_lm):
    mixture_config = {"ops": {"wiki_paragraphs": {"config": {"max_paragraphs": 10}},
                              "mixture_variants": {"config": {"variants_per_target": 3}},
                              "mixture": {"config": {"max_variants": 3, "test_fraction": 0.3}}}}
    assert dg.materialize(group("mixture"), resources=resources, run_config=mixture_config).success
    config = {"ops": {
        "base_policy": {"config": {"model": tiny_causal_lm}},
        "sft_checkpoint": {"config": {"max_steps": 2, "gradient_accumulation_steps": 1, "max_length": 768}},
        "grpo_checkpoint": {"config": {"max_steps": 1, "max_completion_length": 8, "max_prompt_length": 768}},
        "mixture_eval": {"config": {"max_examples": 2, "max_new_tokens": 8}},
    }}
    result = dg.materialize(group("training"), resources=resources, run_config=config)
    assert result.success
    sft = result.asset_materializations_for_node("sft_checkpoint")[0].metadata
    assert sft["steps"].value == 2 and sft["loss_curve"].value.startswith("![")
    grpo = result.asset_materializations_for_node("grpo_checkpoint")[0].metadata
    assert set(grpo["final_rewards"].value) >= {"reward_quality", "reward_alignment", "reward_format"}
    ckpts = query("select asset, path from training_checkpoints order by asset")
    assert ckpts["asset"].tolist() == ["base_policy", "grpo_checkpoint", "sft_checkpoint"]
    evals = query("select * from mixture_eval order by model")
    assert evals["model"].tolist() == ["base", "grpo", "sft"]
    assert evals["format_compliance"].between(0, 1).all() and (evals["examples"] == 2).all()
    assert len(query("select * from mixture_eval_responses")) == 6
    # the GRPO config's optimiser fields reach TRL (weight_decay is not a reward weight)
    import os

    import torch

    from lm_mixup_assets.lib.training import latest_checkpoint

    grpo_dir = os.path.dirname(ckpts.loc[ckpts["asset"] == "grpo_checkpoint", "path"].iat[0])
    args = torch.load(os.path.join(latest_checkpoint(grpo_dir), "training_args.bin"), weights_only=False)
    assert (args.weight_decay, args.epsilon, args.epsilon_high, args.delta) == (0.01, 0.2, 0.3, 3.0)


def test_paper_profile_resolves_the_reference_formats():
    from resources.profiles import PROFILES

    training, distill, clusters = (PROFILES["paper"][k] for k in ("training", "distill", "clusters"))
    assert (training["sft_target_layout"], training["sft_cot_mode"], training["grpo_prompt_layout"]) == \
        ("reference", "omit_empty", "reference")
    assert training["sft_grad_accum"] == 1 and training["eval_repetition_penalty"] == 1.3
    assert (distill["prompt_layout"], distill["repetition_penalty"], distill["max_new_tokens"]) == ("reference", 1.05, 2400)
    assert clusters["input_style"] == "reference"
    # each profile distils with the layout its distiller is trained in
    for profile in PROFILES.values():
        assert profile["distill"]["prompt_layout"] == profile["training"]["sft_target_layout"]
