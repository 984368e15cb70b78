"""Downstream training and evaluation in one text format; the paper benchmarks as DS2's run_eval.sh runs them."""

import random
import shutil

import pytest
import yaml

from lm_mixup_assets.lib.downstream import (
    LoraSFTSettings,
    build_training_records,
    encode_pair,
    join_prompt_completion,
    load_downstream_tokenizer,
    run_lora_sft,
    training_texts,
)
from lm_mixup_assets.lib.eval_tasks import (
    PAPER_BENCHMARKS,
    PAPER_TASKS,
    Benchmark,
    build_smoke_tasks,
    evaluate_model,
    headline_metrics,
    paper_benchmarks,
    subset_indices,
)


@pytest.fixture(scope="module")
def plain_lm(tiny_causal_lm, tmp_path_factory):
    """The tiny random Llama with a base tokenizer: no chat template at all."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("plain-lm")
    shutil.copytree(tiny_causal_lm, folder, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    tok.chat_template = None
    tok.save_pretrained(str(folder))
    for extra in folder.glob("chat_template.*"):
        extra.unlink()
    assert not AutoTokenizer.from_pretrained(str(folder)).chat_template
    return str(folder)


def test_ds2_plain_layout_joins_with_one_space_only_when_needed():
    assert join_prompt_completion("What is 2 plus 2?", "4.") == "What is 2 plus 2? 4."
    assert join_prompt_completion("Q: 2+2?\n", "4") == "Q: 2+2?\n4"
    assert join_prompt_completion("Q: 2+2?", " 4") == "Q: 2+2? 4"
    assert join_prompt_completion("Q: 2+2?\t", "4") == "Q: 2+2?\t4"


def test_plain_training_text_and_labels_on_a_tokenizer_without_chat_template(plain_lm):
    tok = load_downstream_tokenizer(plain_lm, "none")
    eos = tok.eos_token
    full, head, special = training_texts("What is 2 plus 2?", "4.", tok, "none")
    assert (full, head, special) == ("What is 2 plus 2? 4." + eos, "What is 2 plus 2?", True)
    row = encode_pair("What is 2 plus 2?", "4.", tok, max_length=64)
    n_prompt = len(tok("What is 2 plus 2?")["input_ids"])
    assert row["input_ids"] == tok("What is 2 plus 2? 4." + eos)["input_ids"]
    assert row["labels"][:n_prompt] == [-100] * n_prompt and -100 not in row["labels"][n_prompt:]
    assert tok.decode(row["input_ids"][:n_prompt]) == "What is 2 plus 2?"
    assert tok.decode([t for t in row["labels"] if t != -100]) == " 4." + eos  # loss on the completion and eos only
    assert row["labels"][-1] == tok.eos_token_id
    # Too long: DS2 cuts to max_length; "drop" drops; a row with no completion token left is dropped either way.
    cut = encode_pair("What is 2 plus 2?", "4.", tok, max_length=n_prompt + 1)
    assert cut["input_ids"] == row["input_ids"][: n_prompt + 1] and cut["labels"][-1] == row["input_ids"][n_prompt]
    assert encode_pair("What is 2 plus 2?", "4.", tok, max_length=n_prompt + 1, overlong_rows="drop") is None
    assert encode_pair("What is 2 plus 2?", "4.", tok, max_length=n_prompt) is None
    records, dropped = build_training_records(
        [{"prompt": "What is 2 plus 2?", "completion": "4."}, {"prompt": "x " * 80, "completion": "y"}],
        tok,
        max_length=64,
    )
    assert records == [row] and dropped == 1
    with pytest.raises(ValueError, match="training row 1 has an empty completion"):
        build_training_records([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "  "}], tok, 64)


def test_apply_mode_needs_a_chat_template_on_both_sides(plain_lm, tmp_path):
    with pytest.raises(ValueError, match="no chat template"):
        load_downstream_tokenizer(plain_lm, "apply")
    with pytest.raises(ValueError, match="no chat template"):
        evaluate_model(plain_lm, {"smoke_gsm8k": 0}, tmp_path, limit=1, device="cpu", chat_template="apply")
    with pytest.raises(ValueError, match="chat_template='chatml'"):
        load_downstream_tokenizer(plain_lm, "chatml")


def test_apply_mode_renders_the_template_and_masks_the_user_turn(tiny_causal_lm):
    tok = load_downstream_tokenizer(tiny_causal_lm, "apply")
    full, head, special = training_texts("What is 2 plus 2?", "4.", tok, "apply")
    assert not special and full.startswith(head) and "What is 2 plus 2?" in head and "4." not in head
    row = encode_pair("What is 2 plus 2?", "4.", tok, max_length=256, chat_template="apply")
    learned = tok.decode([t for t in row["labels"] if t != -100])
    assert learned == full[len(head) :] and learned.startswith("4.")


def test_lora_sft_trains_plain_text_with_a_base_tokenizer(plain_lm, tmp_path):
    from transformers import AutoTokenizer

    pairs = [{"prompt": f"What is {i} plus {i}?", "completion": f"{2 * i}."} for i in range(3)]
    tok = load_downstream_tokenizer(plain_lm, "none")
    records, _ = build_training_records(pairs, tok, 64)
    result = run_lora_sft(
        plain_lm,
        pairs,
        tmp_path / "run",
        LoraSFTSettings(
            num_train_epochs=1,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=1,
            lora_r=4,
            lora_alpha=8,
            max_length=64,
            logging_steps=1,
            save_steps=100,
            use_cpu=True,
        ),
    )
    assert result.steps == 3 and result.n_examples == 3 and result.n_dropped_too_long == 0
    assert result.tokens_seen == sum(len(r["input_ids"]) for r in records)  # the trainer saw our rows as encoded
    assert not AutoTokenizer.from_pretrained(result.checkpoint).chat_template


def test_evaluation_applies_the_chat_template_when_asked(tiny_causal_lm, tmp_path):
    from transformers import AutoTokenizer

    built = build_smoke_tasks(tmp_path / "tasks")
    one = [
        Benchmark(
            "smoke_gsm8k",
            ("smoke_gsm8k",),
            0,
            "smoke_gsm8k",
            ("exact_match", "last-number"),
            gen_kwargs={"max_gen_toks": 4},
        )
    ]
    chat = evaluate_model(tiny_causal_lm, one, built.folder, limit=1, batch_size=1, device="cpu", chat_template="apply")
    assert chat.config["lm_eval_chat_template"] == AutoTokenizer.from_pretrained(tiny_causal_lm).chat_template


def test_plain_evaluation_with_per_task_limits_random_subsets_and_a_mean_over_languages(plain_lm, tmp_path):
    built = build_smoke_tasks(tmp_path / "tasks")
    # A second copy of smoke_mmlu stands in for a second language of a multi-task benchmark.
    spec = yaml.safe_load((built.folder / "smoke_mmlu.yaml").read_text())
    (built.folder / "smoke_mmlu_copy.yaml").write_text(yaml.safe_dump({**spec, "task": "smoke_mmlu_copy"}))
    benchmarks = [
        Benchmark(
            "gsm",
            ("smoke_gsm8k",),
            0,
            "smoke_gsm8k",
            ("exact_match", "last-number"),
            limit_per_task=3,
            subset="random",
            gen_kwargs={"max_gen_toks": 4},
        ),
        Benchmark(
            "pair",
            ("smoke_mmlu", "smoke_mmlu_copy"),
            0,
            "pair_mean",
            ("acc", "none"),
            limit_per_task=2,
            subset="first",
            aggregate=True,
        ),
    ]
    run = evaluate_model(plain_lm, benchmarks, built.folder, batch_size=2, device="cpu")  # chat_template="none"
    assert run.config["chat_template"] == "none" and run.config["lm_eval_chat_template"] is None  # what lm-eval did
    assert run.items == {
        "smoke_gsm8k": random.Random(42).sample(range(8), 3),
        "smoke_mmlu": [0, 1],
        "smoke_mmlu_copy": [0, 1],
    }
    rows = {(s["task"], s["metric"]): s for s in run.scores}
    assert rows[("smoke_gsm8k", "exact_match")]["n_samples"] == 3
    assert rows[("smoke_gsm8k", "exact_match")]["task_limit"] == 3
    assert rows[("smoke_gsm8k", "exact_match")]["subset"] == "random(seed 42)"
    first, copy, mean = rows[("smoke_mmlu", "acc")], rows[("smoke_mmlu_copy", "acc")], rows[("pair_mean", "acc")]
    assert first["value"] == copy["value"]  # same items, same model
    assert mean["value"] == pytest.approx((first["value"] + copy["value"]) / 2) and mean["n_samples"] == 4
    assert mean["benchmark"] == "pair" and mean["subset"] == "first"


def test_random_subsets_pick_the_items_ds2_picks():
    # DS2 GSM8K: random.seed(42); random.sample(test_data, 200) over the 1,319 test items.
    random.seed(42)
    ds2 = random.sample([{"i": i} for i in range(1319)], 200)
    assert subset_indices({"gsm8k_cot": 1319}, 200, "random")["gsm8k_cot"] == [x["i"] for x in ds2]
    # DS2 TyDiQA: one generator, languages in sorted order, only languages with more than 100 items are sampled.
    sizes = {"arabic": 921, "bengali": 113, "english": 440, "finnish": 782, "swahili": 99}
    random.seed(42)
    ds2_tydi = {lang: random.sample(range(n), 100) for lang, n in sorted(sizes.items()) if n > 100}
    ours = subset_indices({f"tydiqa_goldp_{lang[:2]}": n for lang, n in sizes.items()}, 100, "random")
    assert ours == {f"tydiqa_goldp_{lang[:2]}": idx for lang, idx in ds2_tydi.items()}  # "sw" (99 items): all
    assert subset_indices({"a": 5, "b": 2}, 3, "first") == {"a": [0, 1, 2]}
    assert subset_indices({"a": 5}, None) == {}
    with pytest.raises(ValueError, match="no items"):
        subset_indices({"a": 0}, 3)


def test_paper_task_set_resolves_to_ds2_run_eval():
    """DS2 model_finetune/run_eval.sh: shots, per-task limits, languages, TruthfulQA variant, decoding."""
    from lm_eval.tasks import TaskManager

    table = {
        b.name: (b.tasks, b.num_fewshot, b.limit_per_task, b.subset if b.limit_per_task else "all")
        for b in PAPER_BENCHMARKS
    }
    assert table == {
        "mmlu": (("mmlu",), 0, None, "all"),
        "gsm8k": (("gsm8k_cot",), 8, 200, "random"),
        "bbh": (("bbh_cot_fewshot",), 3, 40, "random"),
        "truthfulqa": (("truthfulqa_mc1", "truthfulqa_mc2"), 0, None, "all"),
        "tydiqa": (
            tuple(f"tydiqa_goldp_{x}" for x in ("ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te")),
            1,
            100,
            "random",
        ),
    }
    assert all(b.subset_seed == 42 for b in PAPER_BENCHMARKS)
    assert headline_metrics(PAPER_BENCHMARKS) == {
        "mmlu": ("acc", "none"),
        "gsm8k_cot": ("exact_match", "flexible-extract"),
        "bbh_cot_fewshot": ("exact_match", "get-answer"),
        "truthfulqa_mc2": ("acc", "none"),
        "tydiqa_goldp": ("f1", "none"),
    }
    gen = {b.name: b.gen_kwargs for b in PAPER_BENCHMARKS}
    assert gen["gsm8k"] == {"until": ["\n"], "max_gen_toks": 512, "do_sample": False}
    assert gen["bbh"] == {"until": ["\n\n"], "max_gen_toks": 512, "do_sample": True, "temperature": 0.8}
    assert gen["tydiqa"] == {"until": ["\n"], "max_gen_toks": 50, "do_sample": False}
    assert gen["mmlu"] is None and gen["truthfulqa"] is None
    assert [b for b in PAPER_BENCHMARKS if b.aggregate] == [PAPER_BENCHMARKS[-1]]
    assert all(b.reference and b.deviation for b in PAPER_BENCHMARKS)
    assert PAPER_TASKS["gsm8k_cot"] == 8 and PAPER_TASKS["tydiqa_goldp_te"] == 1 and len(PAPER_TASKS) == 14
    assert all(b.limit_per_task is None for b in paper_benchmarks(task_subsets="all"))
    assert all(b.gen_kwargs is None for b in paper_benchmarks(generation="task"))
    known = set(TaskManager().all_tasks)  # indexes the installed lm-eval's task files; downloads nothing
    assert set(PAPER_TASKS) <= known
