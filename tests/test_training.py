"""Distiller training (docs/method.md, "Training"): SFT and GRPO on a tiny random model, on CPU."""

import json
import os
import shutil
import zlib

import numpy as np
import pytest

from lm_mixup_assets.lib.knn_bayes import build_library
from lm_mixup_assets.lib.mixture_tasks import DISTILL_INSTRUCTIONS, distill_user_turn
from lm_mixup_assets.lib.prompts import (
    REFERENCE_GRPO_FORMAT_PROMPT,
    REFERENCE_SYSTEM_PROMPT,
)
from lm_mixup_assets.lib.rewards import (
    SYSTEM_PROMPT,
    format_reward,
    make_trl_reward_funcs,
    parse_response,
)
from lm_mixup_assets.lib.training import (
    GRPOSettings,
    SFTSettings,
    build_grpo_dataset,
    build_sft_dataset,
    default_think,
    distiller_chat,
    latest_checkpoint,
    run_grpo,
    run_sft,
    sft_response,
    tokenize_reference_sft,
    user_turn,
)


def _row(task, variants, output, cot=""):
    return {
        "task": task,
        "instruction": DISTILL_INSTRUCTIONS[task],
        "input": distill_user_turn(task, variants),
        "output": output,
        "cot": cot,
        "n_variants": len(variants),
    }


ROWS = [
    _row(
        "qa",
        ["Q: capital of France?\nA: Paris", "Q: France capital\nA: paris, a city"],
        "Q: What is the capital of France?\nA: Paris.",
    ),
    _row(
        "mcq",
        ["Q: 2+2?\nA) 3\nB) 4\nAnswer: B", "Q: two plus two\nA) 3\nB) 4\nC) 5\nD) 6"],
        "Q: What is 2+2?\nA) 3\nB) 4\nC) 5\nD) 6\nAnswer: B",
        cot="Both ask for 2+2; the answer is B.",
    ),
    _row("tfq", ["Q: The sun is a star.\nAnswer: True", "Q: sun = star"], "Q: The Sun is a star.\nAnswer: True"),
    _row("paragraph", ["Paris is in France.", "Paris, capital."], "Paris is the capital of France."),
]


def fake_embed(texts):
    out = np.zeros((len(texts), 32), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, zlib.crc32(w.encode()) % 32] += 1.0
        out[i, 0] += 1e-3
    return out


def _libraries():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((30, 32))
    return {t: build_library(emb, np.arange(30) % 6, name=t) for t in ("qa", "mcq", "tfq", "cs", "paragraph")}


def _reload_and_generate(folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    text = tok.apply_chat_template(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Q: hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    return tok.decode(out[0, ids["input_ids"].shape[1] :])


# --------------------------------------------------------------------------- #
# Datasets
# --------------------------------------------------------------------------- #
def test_build_sft_dataset_chat_layout():
    records = build_sft_dataset(ROWS, layout="chat", cot_mode="plan")
    assert len(records) == 4
    r = records[0]
    assert [m["role"] for m in r["prompt"]] == ["system", "user"]
    assert r["prompt"][0]["content"] == SYSTEM_PROMPT
    assert r["prompt"][1]["content"] == ROWS[0]["input"]  # the instruction is already in front of the variants
    assert [m["role"] for m in r["completion"]] == ["assistant"]
    think, answer = parse_response(r["completion"][0]["content"])
    assert answer == ROWS[0]["output"]
    assert think == default_think(ROWS[0]) and think.startswith("Two weak versions of one question-answer pair")
    assert parse_response(records[1]["completion"][0]["content"])[0] == "Both ask for 2+2; the answer is B."
    assert r["task"] == "qa"


def test_build_sft_dataset_reference_layout():
    """sft/i_t_resume.py: mix-up system prompt; think block only when cot is given; newline-padded tags."""
    records = build_sft_dataset(ROWS)  # the defaults are the reference's
    r = records[0]
    assert r["prompt"] == [
        {"role": "system", "content": REFERENCE_SYSTEM_PROMPT},
        {"role": "user", "content": ROWS[0]["input"]},
    ]
    assert r["completion"] == "<answer>\nQ: What is the capital of France?\nA: Paris.\n</answer>"  # no cot: no think
    assert records[1]["completion"] == (
        "<think>\nBoth ask for 2+2; the answer is B.\n</think>\n\n"
        "<answer>\nQ: What is 2+2?\nA) 3\nB) 4\nC) 5\nD) 6\nAnswer: B\n</answer>"
    )
    # the reference format reward's structure half accepts the newline-padded layout
    assert format_reward(records[1]["completion"], "mcq") == 1.0
    assert REFERENCE_SYSTEM_PROMPT.startswith("You are an expert in data mix-up.")
    assert REFERENCE_SYSTEM_PROMPT.endswith("<answer>\n[The final merged content]\n</answer>")


def test_sft_cot_modes():
    row = ROWS[0]  # cot ""
    assert (
        sft_response(row, "reference", "omit_empty")
        == "<answer>\nQ: What is the capital of France?\nA: Paris.\n</answer>"
    )
    assert sft_response(row, "reference", "empty_think").startswith("<think>\n\n</think>\n\n<answer>\n")
    assert sft_response(row, "reference", "plan").startswith(f"<think>\n{default_think(row)}\n</think>\n\n")
    assert sft_response(row, "chat", "omit_empty") == "<answer>Q: What is the capital of France?\nA: Paris.</answer>"
    assert sft_response({**row, "cot": float("nan")}, "reference", "omit_empty").startswith("<answer>")  # pandas NaN
    with pytest.raises(ValueError, match="cot_mode"):
        sft_response(row, "reference", "boilerplate")
    with pytest.raises(ValueError, match="target_layout"):
        SFTSettings(target_layout="alpaca").validate()


def test_reference_sft_tokens_mask_the_prompt_and_end_at_the_answer(tiny_causal_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    records = build_sft_dataset(ROWS[:2])
    examples = tokenize_reference_sft(records, tok)
    for rec, ex in zip(records, examples):
        prompt = tok.apply_chat_template(rec["prompt"], tokenize=False, add_generation_prompt=True)
        assert tok.decode(ex["input_ids"]) == prompt + rec["completion"]
        learned = [t for t, m in zip(ex["input_ids"], ex["completion_mask"]) if m]
        assert tok.decode(learned) == rec["completion"]  # exactly the response: no end-of-turn token after </answer>
        assert ex["completion_mask"][0] == 0 and len(ex["completion_mask"]) == len(ex["input_ids"])


def test_trl_keeps_the_reference_labels(tiny_causal_lm, tmp_path):
    """Pre-tokenised data: TRL builds labels from completion_mask and adds no EOS."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    data = [
        {k: v for k, v in ex.items() if k != "task"} for ex in tokenize_reference_sft(build_sft_dataset(ROWS[1:2]), tok)
    ]
    args = SFTConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", completion_only_loss=True, max_length=2400
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_causal_lm),
        args=args,
        train_dataset=Dataset.from_list(data),
        processing_class=tok,
    )
    ex = trainer.train_dataset[0]
    assert ex["input_ids"] == data[0]["input_ids"]
    text = tok.decode([t for t, label in zip(ex["input_ids"], ex["labels"]) if label != -100])
    assert text.startswith("<think>\nBoth ask") and text.endswith("Answer: B\n</answer>")


def test_user_turn_and_row_checks():
    assert user_turn({"instruction": "Merge.", "input": "Q: a\nA: b"}) == "Merge.\n\nQ: a\nA: b"  # alpaca style
    assert user_turn({"instruction": "Merge.", "input": "Q: a\nA: b"}, "reference") == "Merge.\nQ: a\nA: b"
    assert distiller_chat({"instruction": "Merge.", "input": "x"}, "reference")[0]["content"] == REFERENCE_SYSTEM_PROMPT
    assert user_turn({"instruction": "Merge.", "input": ""}) == "Merge."
    assert user_turn({"instruction": "", "input": "x"}) == "x"
    assert build_sft_dataset([{**ROWS[0], "task": None, "task_type": "qa"}])[0]["task"] == "qa"  # JSONL name
    with pytest.raises(ValueError, match="task"):
        build_sft_dataset([{**ROWS[0], "task": "essay"}])
    with pytest.raises(ValueError, match="output"):
        build_grpo_dataset([{**ROWS[0], "output": " "}])


def test_build_grpo_dataset():
    records = build_grpo_dataset(ROWS, layout="chat")
    assert set(records[0]) == {"prompt", "task", "reference"}
    assert records[2]["task"] == "tfq" and records[2]["reference"] == ROWS[2]["output"]
    assert records[2]["prompt"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": ROWS[2]["input"]},
    ]


def test_grpo_reference_prompt_is_the_jinja_rendering():
    """mixup.jinja is 511 characters: the format prompt, then '{{ content | trim }} ' (21 characters)."""
    assert len(REFERENCE_GRPO_FORMAT_PROMPT) == 511 - len("{{ content | trim }} ")
    assert REFERENCE_GRPO_FORMAT_PROMPT.count("\\n") == 13 and "\n" not in REFERENCE_GRPO_FORMAT_PROMPT  # literal
    records = build_grpo_dataset(ROWS)  # default: the reference layout, one user turn
    assert records[0]["prompt"] == [{"role": "user", "content": REFERENCE_GRPO_FORMAT_PROMPT + ROWS[0]["input"] + " "}]
    assert records[0]["prompt"][0]["content"].endswith("</answer>\\n" + ROWS[0]["input"] + " ")


def test_sft_loss_is_on_the_completion_only(tiny_causal_lm, tmp_path):
    """TRL 1.16 prompt-completion data: labels are -100 up to the assistant turn."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    args = SFTConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", completion_only_loss=True, max_length=2400
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_causal_lm),
        args=args,
        train_dataset=Dataset.from_list(build_sft_dataset(ROWS[:1], layout="chat", cot_mode="plan")),
        processing_class=tok,
    )
    ex = trainer.train_dataset[0]
    learned = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != -100]
    text = tok.decode(learned)
    assert text.startswith("<think>") and "</answer><|im_end|>" in text
    assert SYSTEM_PROMPT[:30] not in text and "weak versions of the same" not in text  # no prompt tokens


def test_grpo_settings_validate():
    GRPOSettings().validate()  # paper: 8 × 8 = 64 completions per step, 512 per generation round
    ref = GRPOSettings()
    assert (ref.epsilon, ref.epsilon_high, ref.delta, ref.weight_decay) == (0.2, 0.3, 3.0, 0.01)
    assert SFTSettings().gradient_accumulation_steps == 1 and SFTSettings().per_device_train_batch_size == 1
    with pytest.raises(ValueError, match="delta"):
        GRPOSettings(delta=1.2).validate()
    with pytest.raises(ValueError, match="prompt_layout"):
        GRPOSettings(prompt_layout="jinja").validate()
    with pytest.raises(ValueError, match="multiple of num_generations"):
        GRPOSettings(per_device_train_batch_size=3, gradient_accumulation_steps=1).validate()
    with pytest.raises(ValueError, match="lr\n.*Extra inputs are not permitted"):  # a typo is an error, not ignored
        run_grpo("x", ROWS, [], "/nonexistent", settings={"lr": 1.0})


# --------------------------------------------------------------------------- #
# SFT
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def sft_two_steps(tiny_causal_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    logs = []
    result = run_sft(
        tiny_causal_lm,
        ROWS,
        out,
        # keep_checkpoints: test_sft_resumes_from_latest_checkpoint trains on from the finished run's checkpoint
        SFTSettings(
            max_steps=2,
            gradient_accumulation_steps=1,
            logging_steps=1,
            save_steps=1,
            learning_rate=1e-3,
            keep_checkpoints=True,
        ),
        on_log=lambda step, d: logs.append((step, d)),
    )
    return result, logs


def test_sft_two_steps(sft_two_steps):
    result, logs = sft_two_steps
    assert result.steps == 2 and result.resumed_from is None
    assert result.checkpoint.endswith("final") and os.path.exists(os.path.join(result.checkpoint, "config.json"))
    assert [s for s, _ in result.loss_history] == [1, 2]
    assert all(np.isfinite(loss) for _, loss in result.loss_history)
    assert result.tokens_seen and result.tokens_seen > 0
    assert result.wall_seconds > 0 and result.n_examples == 4 and result.n_dropped_too_long == 0
    assert latest_checkpoint(result.output_dir).endswith("checkpoint-2")
    assert any("loss" in d for _, d in logs) and logs[-1][0] == 2
    with open(os.path.join(result.checkpoint, "config.json")) as fh:
        assert json.load(fh)["use_cache"] is True  # the Trainer turns it off for training; saved for generation
    _reload_and_generate(result.checkpoint)


def test_sft_resumes_from_latest_checkpoint(sft_two_steps, tmp_path):
    first, _ = sft_two_steps
    out = tmp_path / "sft"
    shutil.copytree(first.output_dir, out)
    result = run_sft(
        first.checkpoint,
        ROWS,
        out,
        SFTSettings(max_steps=3, gradient_accumulation_steps=1, logging_steps=1, save_steps=1),
    )
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-2")
    assert result.steps == 3  # the global step continues
    assert [s for s, _ in result.loss_history] == [1, 2, 3]  # history carried in the checkpoint
    assert latest_checkpoint(out).endswith("checkpoint-3")
    assert result.tokens_seen > first.tokens_seen


def test_sft_drops_too_long_examples(tiny_causal_lm, tmp_path):
    with pytest.raises(ValueError, match="no SFT examples left"):
        run_sft(tiny_causal_lm, ROWS, tmp_path, SFTSettings(max_steps=1, max_length=16))


# --------------------------------------------------------------------------- #
# GRPO
# --------------------------------------------------------------------------- #
def test_grpo_two_steps(sft_two_steps, tmp_path):
    sft, _ = sft_two_steps
    funcs = make_trl_reward_funcs(_libraries(), fake_embed)
    settings = GRPOSettings(
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        steps_per_generation=0,
        max_completion_length=12,
        max_steps=2,
        save_steps=1,
        learning_rate=1e-4,
    )
    logs = []
    result = run_grpo(sft.checkpoint, ROWS, funcs, tmp_path / "grpo", settings, on_log=lambda s, d: logs.append(d))
    assert result.steps == 2 and not result.use_vllm
    assert set(result.reward_history) == {"reward_quality", "reward_alignment", "reward_format", "reward"}
    for name in ("reward_quality", "reward_alignment", "reward_format"):
        assert [s for s, _ in result.reward_history[name]] == [1, 2]
        assert all(0.0 <= v <= 0.8 for _, v in result.reward_history[name])
    assert len(result.loss_history) == 2
    assert result.tokens_seen and result.tokens_seen > 0
    assert any("kl" in d for d in logs)  # beta 0.01: the reference model is in the loss
    assert latest_checkpoint(tmp_path / "grpo").endswith("checkpoint-2")
    _reload_and_generate(result.checkpoint)
    # the reference's optimisation settings reach TRL (EasyR1 clip 0.2/0.3, dual clip 3.0, weight decay 0.01)
    import torch

    args = torch.load(os.path.join(latest_checkpoint(tmp_path / "grpo"), "training_args.bin"), weights_only=False)
    assert (args.epsilon, args.epsilon_high, args.delta, args.weight_decay, args.beta) == (0.2, 0.3, 3.0, 0.01, 0.01)


# --------------------------------------------------------------------------- #
# The real policy model (slow)
# --------------------------------------------------------------------------- #
@pytest.mark.slow
def test_sft_smollm2(tmp_path_factory):
    from lm_mixup_assets.lib.models import convert_smollm2

    cache = os.environ.get("LM_MIXUP_TEST_MODEL_CACHE") or str(tmp_path_factory.mktemp("smollm2-cache"))
    model = convert_smollm2(cache)
    out = tmp_path_factory.mktemp("sft-smollm2")
    result = run_sft(
        model,
        ROWS,
        out,
        SFTSettings(max_steps=3, gradient_accumulation_steps=1, logging_steps=1, save_steps=100, learning_rate=1e-5),
    )
    assert result.steps == 3 and len(result.loss_history) == 3
    assert all(np.isfinite(loss) and loss < 10 for _, loss in result.loss_history)  # a trained model, not random
    text = _reload_and_generate(result.checkpoint)
    assert text.strip()
