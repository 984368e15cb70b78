"""The training group through Dagster on a tiny random model and a small MIXTURE."""

import dagster as dg

import definitions
from lm_mixup_assets.lib.checkpoints import ModelCheckpoint
from tests.helpers import checks_by_name  # noqa: F401


def group(name):
    return [a for a in definitions.defs.assets if set(a.group_names_by_key.values()) == {name}]


def test_training_group_materialises_with_a_tiny_model(resources, query, home, tiny_causal_lm):
    mixture_config = {
        "ops": {
            "wiki_paragraphs": {"config": {"max_paragraphs": 10}},
            "mixture_variants": {"config": {"variants_per_target": 3}},
            "mixture": {"config": {"max_variants": 3, "test_fraction": 0.3}},
        }
    }
    assert dg.materialize(group("mixture"), resources=resources, run_config=mixture_config).success
    config = {
        "ops": {
            "base_policy": {"config": {"model": tiny_causal_lm}},
            "sft_checkpoint": {"config": {"max_steps": 2, "gradient_accumulation_steps": 1, "max_length": 768}},
            "grpo_checkpoint": {"config": {"max_steps": 1, "max_completion_length": 8, "max_prompt_length": 768}},
            "mixture_eval": {"config": {"max_examples": 2, "max_new_tokens": 8}},
        }
    }
    result = dg.materialize(group("training"), resources=resources, run_config=config)
    assert result.success
    sft = result.asset_materializations_for_node("sft_checkpoint")[0].metadata
    assert sft["steps"].value == 2 and sft["loss_curve"].value.startswith("![")
    # checked before training: what its checkpoints write, against the free disk
    assert 0 < sft["disk_checkpoint_gb"].value <= sft["disk_needed_gb"].value < sft["disk_free_gb"].value
    grpo = result.asset_materializations_for_node("grpo_checkpoint")[0].metadata
    assert set(grpo["final_rewards"].value) >= {"reward_quality", "reward_alignment", "reward_format"}
    # Each checkpoint is its asset's value: stored by the IO manager, handed on as the next asset's input.
    values = {name: result.output_for_node(name) for name in ("base_policy", "sft_checkpoint", "grpo_checkpoint")}
    assert values["grpo_checkpoint"].started_from == values["sft_checkpoint"]
    assert values["sft_checkpoint"].started_from == values["base_policy"]
    assert values["base_policy"].path == tiny_causal_lm and values["base_policy"].steps == 0
    assert (values["sft_checkpoint"].steps, values["grpo_checkpoint"].steps) == (2, 1)
    for name, value in values.items():
        materialization = result.asset_materializations_for_node(name)[0]
        assert value.asset == name and value.folder_exists()
        assert materialization.tags["dagster/data_version"] == value.fingerprint
        stored = home / "artifacts" / "asset_values" / name / "__unpartitioned__.json"
        assert ModelCheckpoint.from_json(stored.read_text()) == value
    assert values["sft_checkpoint"].data_version == values["grpo_checkpoint"].data_version == sft["data_version"].value
    evals = query("select * from mixture_eval order by model")
    assert evals["model"].tolist() == ["base", "grpo", "sft"]
    assert evals["format_compliance"].between(0, 1).all() and (evals["examples"] == 2).all()
    assert len(query("select * from mixture_eval_responses")) == 6
    # the GRPO config's optimiser fields reach TRL (weight_decay is not a reward weight)
    import os

    import torch

    from lm_mixup_assets.lib.training import latest_checkpoint

    grpo_dir = os.path.dirname(values["grpo_checkpoint"].path)
    args = torch.load(os.path.join(latest_checkpoint(grpo_dir), "training_args.bin"), weights_only=False)
    assert (args.weight_decay, args.epsilon, args.epsilon_high, args.delta) == (0.01, 0.2, 0.3, 3.0)
    # The demo keeps the finished run's record, not a second copy of its weights (final/ has them).
    assert latest_checkpoint(grpo_dir, resumable=True) is None and args.save_only_model
    # Unchanged inputs: the second materialisation reuses both finished runs (same folders, same fingerprints).
    chain = ["base_policy", "sft_checkpoint", "grpo_checkpoint"]
    again = dg.materialize(
        group("training"),
        resources=resources,
        selection=chain,
        run_config={"ops": {op: c for op, c in config["ops"].items() if op in chain}},
    )
    assert again.success
    for name in ("sft_checkpoint", "grpo_checkpoint"):
        assert again.asset_materializations_for_node(name)[0].metadata["reused"].value is True
        assert again.output_for_node(name).fingerprint == values[name].fingerprint


def test_paper_profile_resolves_the_reference_formats():
    from lm_mixup_assets.config import resolved_settings
    from lm_mixup_assets.lib.settings import clusters, distill, training

    def paper(model):
        return resolved_settings(model, "paper")[0]

    sft, grpo, evaluation = (
        paper(training.SFTSettings),
        paper(training.GRPOSettings),
        paper(training.MixtureEvalSettings),
    )
    assert (sft.target_layout, sft.cot_mode, grpo.prompt_layout) == ("reference", "omit_empty", "reference")
    assert sft.gradient_accumulation_steps == 1 and evaluation.repetition_penalty == 1.3
    distiller = paper(distill.DistillSettings)
    assert (distiller.prompt_layout, distiller.repetition_penalty, distiller.max_new_tokens) == (
        "reference",
        1.05,
        2400,
    )
    assert paper(clusters.ClusterInputsSettings).input_style == "reference"
    # each profile distils, and evaluates, with the layout its distiller is trained in
    for profile in ("demo", "paper"):
        layout = resolved_settings(training.SFTSettings, profile)[0].target_layout
        assert resolved_settings(distill.DistillSettings, profile)[0].prompt_layout == layout
        assert resolved_settings(training.MixtureEvalSettings, profile)[0].prompt_layout == layout
