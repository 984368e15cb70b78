"""Offline lm-eval tasks built from the items shipped inside the installed ``lm-eval`` package.

The demo profile cannot download MMLU, BBH or GSM8K, but ``lm-eval`` carries a
few of their items as few-shot exemplars (OFFLINE.md). We turn them into three
small custom tasks — JSONL data plus a task YAML each, in a folder passed to
lm-eval's ``TaskManager(include_path=...)``:

=====================  ==================  ===============================================
task                   items               scoring
=====================  ==================  ===============================================
``smoke_mmlu``         MMLU CoT dev items  multiple choice over A-D (log-likelihood), acc
``smoke_bbh``          BBH few-shot items  generate until a blank line, exact match
``smoke_gsm8k``        GSM8K CoT items     generate, "The answer is N" / last number, exact match
=====================  ==================  ===============================================

They are **smoke-level**: a few hundred items at most, which other evaluations use
as few-shot exemplars. They show the pipeline works end to end and move with
training; they are not leaderboard numbers, and every output says so.
``smoke_mmlu`` run uncapped (all 273 items, ``smoke_benchmarks(uncapped=...)``) and the
held-out log-likelihood task (``heldout.py``) are the ones with enough items to tell arms
apart: ``evaluate_model(per_item=True)`` returns every item's score, and the bootstrap helpers
at the end (``bootstrap_mean_ci``, ``paired_bootstrap_diff``, ``compare_stored_scores``) put 95 % intervals on means and on paired differences between arms.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    import pandas as pd

SMOKE_LABEL = "smoke-level (items from the lm-eval package's few-shot exemplars; not comparable to published scores)"
SMOKE_TASKS = ("smoke_mmlu", "smoke_bbh", "smoke_gsm8k")


# --------------------------------------------------------------------------- benchmark protocols


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of a task set: which lm-eval tasks, how many shots and items, which score stands for it.

    ``limit_per_task`` caps every *leaf* task (each BBH subtask, each TyDiQA language); ``subset``
    says which items: ``random`` draws them with ``random.Random(subset_seed)`` over the leaves in
    sorted order, one generator per benchmark, as DS2's ``random.seed(42); random.sample(...)`` does;
    ``first`` takes the first N (lm-eval's own ``limit``). ``gen_kwargs`` override the task's
    generation settings with DS2's. ``aggregate``: the headline is the mean of the leaves' headline
    metric, written as an extra row named ``headline_task`` (TyDiQA: the mean over languages, as DS2).
    """

    name: str
    tasks: tuple[str, ...]
    num_fewshot: int | None
    headline_task: str
    headline: tuple[str, str]  # (metric, filter)
    limit_per_task: int | None = None
    subset: str = "first"
    subset_seed: int = 42
    gen_kwargs: dict | None = None
    aggregate: bool = False
    reference: str = ""  # what DS2's run_eval.sh does
    deviation: str = ""  # what lm-eval forces us to do differently ("" = matches)


TYDIQA_LANGUAGES = ("ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te")  # all nine Gold Passage languages, as DS2

# The paper's suite (docs/method.md §6) as DS2's ``model_finetune/run_eval.sh`` runs it, mapped to
# lm-eval's own tasks (downloaded from the hub).
PAPER_BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "mmlu",
        ("mmlu",),
        0,
        "mmlu",
        ("acc", "none"),
        reference="eval.mmlu --ntrain 0: all 57 subjects, every test item; prompt 'The following are multiple choice "
        "questions (with answers) about <subject>.' + question + A-D + 'Answer:'; argmax over the next-token "
        "probabilities of ' A'..' D'; micro-average over all questions",
        deviation="matches (lm-eval's default MMLU prompt and log-likelihood of ' A'..' D'; group acc weighted by size)",
    ),
    Benchmark(
        "gsm8k",
        ("gsm8k_cot",),
        8,
        "gsm8k_cot",
        ("exact_match", "flexible-extract"),
        limit_per_task=200,
        subset="random",
        gen_kwargs={"until": ["\n"], "max_gen_toks": 512, "do_sample": False},
        reference="eval.gsm --n_shot 8 --max_num_examples 200: 200 test items drawn with random.seed(42), the 8 CoT "
        "exemplars of Wei et al., greedy, at most 512 tokens, stop at the first newline; score = exact match of the "
        "last number in the output",
        deviation="prompt layout: lm-eval's gsm8k_cot writes 'Q: .. A: ..' where DS2 writes 'Answer the following "
        "questions.' + 'Question: .. Answer: ..'; the same exemplars, subset, decoding and last-number scoring",
    ),
    Benchmark(
        "bbh",
        ("bbh_cot_fewshot",),
        3,
        "bbh_cot_fewshot",
        ("exact_match", "get-answer"),
        limit_per_task=40,
        subset="random",
        gen_kwargs={"until": ["\n\n"], "max_gen_toks": 512, "do_sample": True, "temperature": 0.8},
        reference="eval.bbh --max_num_examples_per_task 40: 40 items per subtask drawn with random.seed(42) (subtasks "
        "in glob order), the 3 CoT exemplars of Suzgun et al., vLLM sampling at temperature 0.8, at most 512 tokens, "
        "stop at a blank line; answer = text after 'the answer is' up to the next period, exact match ignoring case "
        "and punctuation; mean over subtasks",
        deviation="subset: DS2 draws subtasks in filesystem glob order, which no one can reproduce; we draw in sorted "
        "order. Prompt: lm-eval's query ends 'A: Let's think step by step.' where DS2's ends 'A:'. Scoring: lm-eval's get-answer regex and case-sensitive exact match vs DS2's case- and "
        "punctuation-insensitive match",
    ),
    Benchmark(
        "truthfulqa",
        ("truthfulqa_mc1", "truthfulqa_mc2"),
        0,
        "truthfulqa_mc2",
        ("acc", "none"),
        reference="eval.truthfulqa --metrics truth info mc --preset qa: all 817 questions; reported score is "
        "'truth-info acc' of greedy 50-token answers judged by allenai/truthfulqa-{truth,info}-judge-llama2-7B "
        "(read_results.py; MC2 is the commented-out alternative); MC1/MC2 with the 6-shot 'qa' primer",
        deviation="forced: lm-eval has no judge-scored TruthfulQA (truthfulqa_gen scores BLEU/ROUGE), so the "
        "headline is MC2 (same 'qa' primer, all 817 questions), which DS2 also computes; MC1 is kept alongside",
    ),
    Benchmark(
        "tydiqa",
        tuple(f"tydiqa_goldp_{lang}" for lang in TYDIQA_LANGUAGES),
        1,
        "tydiqa_goldp",
        ("f1", "none"),
        limit_per_task=100,
        subset="random",
        gen_kwargs={"until": ["\n"], "max_gen_toks": 50, "do_sample": False},
        aggregate=True,
        reference="eval.tydiqa --n_shot 1 --max_num_examples_per_lang 100 --max_context_length 512: Gold Passage "
        "dev, all 9 languages, 100 items per language drawn with random.seed(42) in sorted language order, one "
        "exemplar per language from train, passages cut to 512 tokens, at most 50 new tokens, stop at a newline; "
        "score = mean over languages of SQuAD F1",
        deviation="prompt: lm-eval's 'Context/Question/Answer' in each language vs DS2's translated instruction + "
        "'Passage/Question/Answer'; lm-eval does not cut passages to 512 tokens; its 1-shot exemplar is drawn by "
        "lm-eval's sampler; F1 uses lm-eval's language-aware normalisation (DS2: SQuAD's English one), on a 0-1 "
        "scale (DS2 reports 0-100)",
    ),
)
PAPER_TASKS = {task: b.num_fewshot for b in PAPER_BENCHMARKS for task in b.tasks}  # name -> shots

_MMLU_ITEM = re.compile(
    r"^(?P<q>.*?)\n\(A\) (?P<a>.*?) \(B\) (?P<b>.*?) \(C\) (?P<c>.*?) \(D\) (?P<d>.*?)\n"
    r"A: .*?The answer is \((?P<ans>[ABCD])\)",
    re.DOTALL,
)
_GSM_ANSWER = re.compile(r"The answer is (-?[0-9][0-9.,]*)")


@dataclass
class BuiltTasks:
    folder: Path
    items: dict[str, int]
    skipped: dict[str, list[str]] = field(default_factory=dict)  # task -> reasons, for exemplars we could not use


def lm_eval_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).resolve().parent


def mmlu_items(lm_eval_root: Path) -> tuple[list[dict], list[str]]:
    prompts = json.loads((lm_eval_root / "tasks/mmlu/flan_cot_fewshot/_cot_prompts.json").read_text())
    items, skipped = [], []
    for subject, text in sorted(prompts.items()):
        for n, block in enumerate(text.split("\n\nQ: ")[1:]):
            m = _MMLU_ITEM.search(block)
            if m is None:
                skipped.append(f"mmlu {subject} #{n}: options not in the '(A) .. (B) .. (C) .. (D) ..' layout")
                continue
            items.append(
                {
                    "subject": subject,
                    "question": m.group("q").strip(),
                    "choices": [m.group(x).strip() for x in "abcd"],
                    "answer": "ABCD".index(m.group("ans")),
                }
            )
    return items, skipped


def bbh_items(lm_eval_root: Path) -> tuple[list[dict], list[str]]:
    items, skipped = [], []
    for path in sorted((lm_eval_root / "tasks/bbh/fewshot").glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        spec = yaml.safe_load(path.read_text())
        for n, sample in enumerate(spec.get("fewshot_config", {}).get("samples", [])):
            if not str(sample.get("target", "")).strip():
                skipped.append(f"bbh {path.stem} #{n}: empty target")
                continue
            items.append(
                {"subtask": path.stem, "input": str(sample["input"]).strip(), "target": str(sample["target"]).strip()}
            )
    return items, skipped


def gsm8k_items(lm_eval_root: Path) -> tuple[list[dict], list[str]]:
    spec = yaml.safe_load((lm_eval_root / "tasks/gsm8k/gsm8k-cot.yaml").read_text())
    items, skipped = [], []
    for n, sample in enumerate(spec["fewshot_config"]["samples"]):
        m = _GSM_ANSWER.search(sample["target"])
        if m is None:
            skipped.append(f"gsm8k #{n}: no 'The answer is N' in the worked solution")
            continue
        items.append({"question": sample["question"].strip(), "answer": m.group(1).rstrip(".").replace(",", "")})
    return items, skipped


def _task_yaml(name: str, data_file: Path, body: dict) -> dict:
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "metadata": {"version": 1.0, "label": SMOKE_LABEL},
        **body,
    }


_TASK_BODIES = {
    "smoke_mmlu": {
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    },
    "smoke_bbh": {
        "output_type": "generate_until",
        "doc_to_text": "Q: {{input}}\nA:",
        "doc_to_target": "{{target}}",
        "generation_kwargs": {"until": ["\n\n", "Q:", "</s>", "<|im_end|>"], "do_sample": False, "max_gen_toks": 32},
        "filter_list": [
            {
                "name": "strip",
                "filter": [{"function": "regex", "regex_pattern": r"^\s*(.*?)\s*$"}, {"function": "take_first"}],
            }
        ],
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": True,
            }
        ],
    },
    "smoke_gsm8k": {
        "output_type": "generate_until",
        "doc_to_text": "Q: {{question}}\nA: Let's think step by step.",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["Q:", "\n\n", "</s>", "<|im_end|>"], "do_sample": False, "max_gen_toks": 128},
        "filter_list": [
            {
                "name": "last-number",
                "filter": [
                    {
                        "function": "regex",
                        "regex_pattern": r"(-?[0-9][0-9,]*(?:\.[0-9]+)?)(?!.*[0-9])",
                        "group_select": 0,
                    },
                    {"function": "take_first"},
                ],
            }
        ],
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_punctuation": False,
                "regexes_to_ignore": [",", r"\.0+$"],
            }
        ],
    },
}


def write_task_file(path: Path, text: str) -> None:
    """Replace ``path`` whole: written beside its folder, then renamed, so an evaluation reading the folder
    at the same time sees the old file or the new one, never half of one (nor the temporary file)."""
    tmp = path.parent.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_smoke_tasks(folder: str | Path, lm_eval_root: Path | None = None) -> BuiltTasks:
    """Write ``<task>.jsonl`` and ``<task>.yaml`` for the three smoke tasks into ``folder``."""
    root = lm_eval_root or lm_eval_dir()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sources = {"smoke_mmlu": mmlu_items, "smoke_bbh": bbh_items, "smoke_gsm8k": gsm8k_items}
    built = BuiltTasks(folder=out, items={})
    for name, read in sources.items():
        items, skipped = read(root)
        if not items:
            raise ValueError(f"{name}: no items found under {root} (is lm-eval {root} the expected version?)")
        data = out / f"{name}.jsonl"
        write_task_file(data, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items))
        write_task_file(
            out / f"{name}.yaml", yaml.safe_dump(_task_yaml(name, data, _TASK_BODIES[name]), sort_keys=False)
        )
        built.items[name] = len(items)
        if skipped:
            built.skipped[name] = skipped
    return built


# --------------------------------------------------------------------------- running lm-eval


def smoke_benchmarks(
    limit: int | None = None, uncapped: Sequence[str] = (), tasks: Sequence[str] = SMOKE_TASKS
) -> tuple[Benchmark, ...]:
    """The demo's smoke tasks as benchmarks: 0-shot, the first ``limit`` items each (None: all).

    ``uncapped``: tasks scored on every item whatever ``limit`` says. ``smoke_mmlu`` has 273
    items (all MMLU CoT dev items lm-eval ships): enough to resolve differences between arms
    that the 8-item cap cannot. Pass the cap here, not as ``evaluate_model(limit=...)``,
    which caps every benchmark. ``tasks``: which smoke tasks (in ``SMOKE_TASKS`` order; none: ())."""
    unknown = (set(uncapped) | set(tasks)) - set(SMOKE_TASKS)
    if unknown:
        raise ValueError(f"{sorted(unknown)}: not smoke tasks (choose from {SMOKE_TASKS})")
    headline = {
        "smoke_mmlu": ("acc", "none"),
        "smoke_bbh": ("exact_match", "strip"),
        "smoke_gsm8k": ("exact_match", "last-number"),
    }
    return tuple(
        Benchmark(t, (t,), 0, t, headline[t], limit_per_task=None if t in uncapped else limit, subset="first")
        for t in SMOKE_TASKS
        if t in tasks
    )


def paper_benchmarks(task_subsets: str = "ds2", generation: str = "ds2") -> tuple[Benchmark, ...]:
    """``PAPER_BENCHMARKS``, or with every item (``task_subsets="all"``) / the tasks' own decoding (``generation="task"``)."""
    import dataclasses

    if task_subsets not in ("ds2", "all") or generation not in ("ds2", "task"):
        raise ValueError(f"task_subsets={task_subsets!r} (choose ds2|all), generation={generation!r} (choose ds2|task)")
    out = []
    for b in PAPER_BENCHMARKS:
        if task_subsets == "all":
            b = dataclasses.replace(b, limit_per_task=None)
        if generation == "task":
            b = dataclasses.replace(b, gen_kwargs=None)
        out.append(b)
    return tuple(out)


def headline_metrics(benchmarks: Sequence[Benchmark]) -> dict[str, tuple[str, str]]:
    """Report column -> (metric, filter): the one score per benchmark that the report shows."""
    return {b.headline_task: b.headline for b in benchmarks}


def subset_indices(sizes: dict[str, int], k: int | None, subset: str = "first", seed: int = 42) -> dict[str, list[int]]:
    """Which items of each leaf task to score: at most ``k`` per task (None: all, no entry).

    ``random``: one ``random.Random(seed)`` for the whole benchmark, leaves in sorted order,
    ``rng.sample(range(n), k)`` for each leaf with more than ``k`` items: the positions
    DS2's ``random.seed(42)`` + ``random.sample(items, k)`` picks, when the item order is the same.
    ``first``: the first ``k`` items (lm-eval's ``limit``)."""
    import random

    if subset not in ("first", "random"):
        raise ValueError(f"subset={subset!r}: choose 'first' or 'random'")
    if k is None:
        return {}
    if k <= 0:
        raise ValueError(f"a per-task limit must be positive, got {k}")
    rng = random.Random(seed)
    picked = {}
    for name in sorted(sizes):
        n = sizes[name]
        if n == 0:
            raise ValueError(f"task {name!r} has no items to evaluate")
        if n > k:
            picked[name] = rng.sample(range(n), k) if subset == "random" else list(range(k))
    return picked


@dataclass
class EvalRun:
    scores: list[dict]  # one per (task, metric): task, metric, filter, value, stderr, n_samples, num_fewshot, ...
    task_versions: dict[str, str]
    lm_eval_version: str
    seconds: float
    config: dict
    items: dict[str, list[int] | None] = field(default_factory=dict)  # leaf task -> item positions scored (None: all)
    # per_item=True: one row per (task, metric, filter, item): task, metric, filter, doc_id, sample_id, value
    item_scores: list[dict] = field(default_factory=list)


def _task_manager(include_path: str | Path | None, names: Sequence[str]):
    """lm-eval's task index; only ``include_path`` when it holds every task named."""
    from lm_eval.tasks import TaskManager

    if include_path:
        own = TaskManager(include_path=str(include_path), include_defaults=False)
        if set(names) <= set(own.all_tasks):
            return own  # indexing lm-eval's thousands of built-in task files takes seconds per call
    return TaskManager(include_path=str(include_path) if include_path else None)


def _leaf_sizes(manager, names: Sequence[str]) -> dict[str, int]:
    loaded = manager.load(list(names))
    return {name: len(task.eval_docs) for name, task in loaded["tasks"].items()}


def _cap(benchmark: Benchmark, limit: int | None) -> tuple[int | None, str]:
    """The per-leaf cap and subset mode once a global ``limit`` (a smoke / debug cap) is applied."""
    caps = [x for x in (benchmark.limit_per_task, limit) if x]
    if not caps:
        return None, benchmark.subset
    if limit and (benchmark.limit_per_task is None or limit < benchmark.limit_per_task):
        return min(caps), "first"
    return min(caps), benchmark.subset


def evaluate_model(
    model_path: str,
    tasks: dict[str, int | None] | Sequence[Benchmark],
    include_path: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 1234,
    device: str = "auto",
    backend: str = "hf",
    chat_template: str = "none",
    per_item: bool = False,
) -> EvalRun:
    """``lm_eval.simple_evaluate`` on a local HF folder.

    ``tasks``: benchmarks (shots, per-task limits and subsets, DS2 generation settings), or a
    plain ``name -> num_fewshot`` map (None: the task's own). ``limit``: an extra cap on every
    leaf task (first N). ``chat_template``: ``none`` scores plain prompts, ``apply`` renders them
    with the tokenizer's chat template (few-shot as turns); it must be what the model was trained
    with (lm_mixup_assets.lib.downstream). ``backend``: ``hf`` (transformers, CPU or GPU) or
    ``vllm`` (GPU, the ``gpu`` extra). ``per_item``: also return every item's score
    (``EvalRun.item_scores``, from lm-eval's logged samples) for confidence intervals and paired
    comparisons (``bootstrap_mean_ci``, ``paired_bootstrap_diff``, ``compare_stored_scores``).
    One lm-eval model (one vLLM engine) serves every call and is released before this returns.
    """
    import time

    from .downstream import check_chat_template_mode, require_chat_template
    from .models import pick_device

    apply = check_chat_template_mode(chat_template) == "apply"
    if apply:
        from transformers import AutoTokenizer

        require_chat_template(AutoTokenizer.from_pretrained(model_path), model_path)
    benchmarks = (
        tuple(tasks)
        if not isinstance(tasks, Mapping)
        else tuple(Benchmark(n, (n,), shots, n, ("", "")) for n, shots in tasks.items())
    )
    device = pick_device(device)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    model_args = {"pretrained": model_path, "dtype": dtype}
    if backend == "hf":
        model_args["device"] = device
    manager = _task_manager(include_path, [t for b in benchmarks for t in b.tasks])
    started = time.perf_counter()  # the model's load counts, as it did inside simple_evaluate
    lm = _load_lm(backend, model_args, batch_size)
    try:
        return _evaluate_loaded(
            lm,
            benchmarks,
            manager,
            limit,
            batch_size,
            seed,
            apply,
            per_item,
            backend,
            dtype,
            device,
            chat_template,
            started,
        )
    finally:
        _release_lm(lm)
        del lm
        from .training import free_memory

        free_memory()


def _load_lm(backend: str, model_args: dict, batch_size: int):
    """The one lm-eval model of an ``evaluate_model`` call, built as ``simple_evaluate`` builds it from a name.

    Built once and handed to every ``simple_evaluate`` call, so a vLLM engine starts once per
    model rather than once per (shots, generation settings) group.
    """
    from lm_eval.api.registry import get_model

    if backend == "vllm":
        import torch

        from .generation import fit_gpu_memory_utilization

        # 0.9 of the device (lm-eval passes it on to vLLM's LLM, whose default is 0.92), capped to what is free:
        # a model left on the device must not fail the start.
        model_args = {
            **model_args,
            "gpu_memory_utilization": fit_gpu_memory_utilization(0.9, *torch.cuda.mem_get_info()),
        }
    return get_model(backend).create_from_arg_obj(model_args, {"batch_size": batch_size})


def _release_lm(lm) -> None:
    """Shut a vLLM-backed lm-eval model's engine down and drop the weights it holds."""
    from .generation import shutdown_vllm

    engine = getattr(lm, "model", None)
    if engine is not None and type(engine).__module__.startswith("vllm"):
        shutdown_vllm(engine)
    del engine
    for attr in ("model", "_model"):
        if attr in vars(lm):
            setattr(lm, attr, None)


def _evaluate_loaded(
    lm,
    benchmarks: tuple[Benchmark, ...],
    manager,
    limit: int | None,
    batch_size: int,
    seed: int,
    apply: bool,
    per_item: bool,
    backend: str,
    dtype: str,
    device: str,
    chat_template: str,
    started: float,
) -> EvalRun:
    import json as _json
    import math
    import time
    from importlib.metadata import version

    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    scores: list[dict] = []
    versions: dict[str, str] = {}
    items: dict[str, list[int] | None] = {}
    item_scores: list[dict] = []
    applied_template: list = []
    # One call per (shots, generation settings): simple_evaluate takes one of each for all its tasks.
    calls: dict[tuple, list[Benchmark]] = {}
    for b in benchmarks:
        calls.setdefault((b.num_fewshot, _json.dumps(b.gen_kwargs, sort_keys=True)), []).append(b)
    for (shots, _), group in calls.items():
        names = [t for b in group for t in b.tasks]
        samples: dict[str, list[int]] = {}
        caps = {b.name: _cap(b, limit) for b in group}
        for b in group:
            k, subset = caps[b.name]
            sizes = _leaf_sizes(manager, b.tasks) if k else {}
            picked = subset_indices(sizes, k, subset, b.subset_seed)
            samples.update(picked)
            items.update({leaf: picked.get(leaf) for leaf in sizes})
        tracker = EvaluationTracker()  # no output path: only to read back the chat template lm-eval applied
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=shots,
            batch_size=batch_size,
            samples=samples or None,
            task_manager=manager,
            gen_kwargs=group[0].gen_kwargs,
            apply_chat_template=apply,
            fewshot_as_multiturn=apply,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            log_samples=per_item,
            bootstrap_iters=1000,
            evaluation_tracker=tracker,
        )
        applied_template.append(tracker.general_config_tracker.chat_template)
        versions.update({k: str(v) for k, v in out.get("versions", {}).items()})
        if per_item:
            item_scores += _item_rows(out.get("samples") or {}, names)
        for b in group:
            k, subset = caps[b.name]
            common = {
                "num_fewshot": shots,
                "benchmark": b.name,
                "task_limit": k or 0,
                "subset": "all" if not k else (f"random(seed {b.subset_seed})" if subset == "random" else "first"),
            }
            leaf_rows = []
            for task in b.tasks:
                metrics = out["results"].get(task)
                if metrics is None:
                    raise ValueError(f"lm-eval returned no results for task {task!r} of benchmark {b.name!r}")
                n = out.get("n-samples", {}).get(task, {}).get("effective")
                for key, value in metrics.items():
                    if key == "alias" or "_stderr," in key or not isinstance(value, (int, float)):
                        continue
                    metric, _, filt = key.partition(",")
                    stderr = metrics.get(f"{metric}_stderr,{filt}")
                    row = {
                        "task": task,
                        "metric": metric,
                        "filter": filt,
                        "value": float(value),
                        "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                        "n_samples": int(n) if n is not None else None,
                        **common,
                    }
                    scores.append(row)
                    if (metric, filt) == b.headline:
                        leaf_rows.append(row)
            if b.aggregate:
                if len(leaf_rows) != len(b.tasks):
                    raise ValueError(f"{b.name}: {len(leaf_rows)} of {len(b.tasks)} tasks report {b.headline}")
                errors = [r["stderr"] for r in leaf_rows]
                scores.append(
                    {
                        "task": b.headline_task,
                        "metric": b.headline[0],
                        "filter": b.headline[1],
                        "value": sum(r["value"] for r in leaf_rows) / len(leaf_rows),  # macro mean, as DS2
                        "stderr": (
                            math.sqrt(sum(e * e for e in errors)) / len(errors)
                            if all(e is not None for e in errors)
                            else None
                        ),
                        "n_samples": sum(r["n_samples"] or 0 for r in leaf_rows),
                        **common,
                    }
                )
    return EvalRun(
        scores=scores,
        task_versions=versions,
        lm_eval_version=version("lm_eval"),
        seconds=time.perf_counter() - started,
        config={
            "backend": backend,
            "dtype": dtype,
            "device": device,
            "limit": limit,
            "seed": seed,
            "batch_size": batch_size,
            "chat_template": chat_template,
            "lm_eval_chat_template": applied_template[0] if applied_template else None,
        },
        items=items,
        item_scores=item_scores,
    )


def _item_rows(samples: Mapping[str, list[dict]], tasks: Sequence[str]) -> list[dict]:
    """Per-item scores out of lm-eval's logged samples: the numeric metric values of each (item, filter)."""
    rows = []
    for task in tasks:
        for s in samples.get(task, []):
            doc = s.get("doc") or {}
            for metric in s.get("metrics", []):
                value = s.get(metric)
                # Some metrics log a tuple per item (e.g. perplexities, corpus-level F1): not a per-item score.
                if isinstance(value, (bool, int, float)):
                    rows.append(
                        {
                            "task": task,
                            "metric": metric,
                            "filter": s.get("filter", "none"),
                            "doc_id": int(s["doc_id"]),
                            "sample_id": doc.get("sample_id"),
                            "value": float(value),
                        }
                    )
    return rows


# --------------------------------------------------------------------------- the report

# Which (metric, filter) stands for a task in the report, in order of preference.
_PRIMARY = [
    ("acc", "none"),
    ("exact_match", "strip"),
    ("exact_match", "last-number"),
    ("exact_match", "strict-match"),
    ("exact_match", "get-answer"),
    ("exact_match", "flexible-extract"),
    ("f1", "none"),
    ("exact_match", "none"),
]


def primary_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, task): the task's headline metric. ``scores`` has arm, task, metric, filter, value."""
    import pandas as pd

    rank = {mf: i for i, mf in enumerate(_PRIMARY)}
    df = scores.assign(_rank=[rank.get((m, f), len(rank)) for m, f in zip(scores["metric"], scores["filter"])])
    df = df[df["_rank"] < len(rank)].sort_values(["arm", "task", "_rank"])
    return pd.DataFrame(df.groupby(["arm", "task"], as_index=False).first()).drop(columns="_rank")


def benchmark_table(
    scores: pd.DataFrame,
    baselines: Sequence[str] = ("full_low", "random"),
    headline: Mapping[str, tuple[str, str]] | None = None,
    average_over: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Arms x tasks (headline metric), the mean over tasks, and the mean's delta to each baseline arm present.

    ``headline``: task -> (metric, filter), one column per benchmark in that order (``headline_metrics``);
    without it every task gets its preferred metric (``_PRIMARY``). ``average_over``: the tasks the
    average covers (None: all) — scores on one scale only (accuracies, not log-likelihoods)."""
    if headline:
        keys = list(zip(scores["task"], scores["metric"], scores["filter"]))
        primary = scores[[headline.get(t) == (m, f) for t, m, f in keys]]
    else:
        primary = primary_scores(scores)
    table = primary.pivot_table(index="arm", columns="task", values="value", aggfunc="first")
    if headline:
        table = table[[t for t in headline if t in table.columns]]
    table.columns.name = None
    averaged = list(table.columns) if average_over is None else [t for t in table.columns if t in average_over]
    table["average"] = table[averaged].mean(axis=1) if averaged else float("nan")
    for base in baselines:
        if base in table.index:
            table[f"delta_vs_{base}"] = table["average"] - table.loc[base, "average"]
    return table.reset_index()


# --------------------------------------------------------------------------- confidence intervals


@dataclass(frozen=True)
class MeanCI:
    """A mean over items with a percentile-bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class PairedDiff:
    """``mean(a - b)`` over the same items, with a paired-bootstrap confidence interval."""

    mean_diff: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies wholly on one side of 0: the two are told apart at this confidence."""
        return self.low > 0 or self.high < 0

    @property
    def width(self) -> float:
        return self.high - self.low


def _as_scores(values, what: str):
    import numpy as np

    x = np.asarray(list(values), dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{what}: need a non-empty list of per-item scores")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: {int((~np.isfinite(x)).sum())} of {x.size} scores are not finite")
    return x


def _bootstrap_interval(x, n_resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    import numpy as np

    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"n_resamples={n_resamples} (>= 1), confidence={confidence} (between 0 and 1)")
    rng = np.random.default_rng(seed)
    n = x.size
    means = np.empty(n_resamples)
    # Draw in chunks to bound memory; the stream is row-major, so chunking gives the same resamples.
    step = max(1, 4_000_000 // n)
    for start in range(0, n_resamples, step):
        k = min(step, n_resamples - start)
        means[start : start + k] = x[rng.integers(0, n, size=(k, n))].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_mean_ci(
    values: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> MeanCI:
    """The mean of per-item scores with a percentile-bootstrap interval (``n_resamples`` resamples of the
    items with replacement, ``numpy.random.default_rng(seed)``: the same inputs give the same interval)."""
    x = _as_scores(values, "bootstrap_mean_ci")
    low, high = _bootstrap_interval(x, n_resamples, confidence, seed)
    return MeanCI(float(x.mean()), low, high, int(x.size), confidence)


def paired_bootstrap_diff(
    a: Sequence[float] | Mapping,
    b: Sequence[float] | Mapping,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDiff:
    """``a - b`` for two models scored on the same items: the mean difference and a paired-bootstrap interval
    (items resampled together, so item difficulty cancels). ``a`` and ``b`` are aligned lists, or
    ``item -> score`` mappings with the same keys."""
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
            raise TypeError("paired_bootstrap_diff: give two lists or two item -> score mappings, not one of each")
        if set(a) != set(b):
            raise ValueError(
                f"paired_bootstrap_diff: the two are not scored on the same items "
                f"({len(set(a) - set(b))} only in a, {len(set(b) - set(a))} only in b)"
            )
        keys = sorted(a)
        a, b = [a[k] for k in keys], [b[k] for k in keys]
    x, y = _as_scores(a, "paired_bootstrap_diff a"), _as_scores(b, "paired_bootstrap_diff b")
    if x.size != y.size:
        raise ValueError(f"paired_bootstrap_diff: {x.size} scores in a, {y.size} in b; pairs need the same items")
    d = x - y
    low, high = _bootstrap_interval(d, n_resamples, confidence, seed)
    return PairedDiff(float(d.mean()), low, high, int(d.size), confidence)


COMPARISON_COLUMNS = ["arm", "baseline", "task", "metric", "n", "mean_diff", "diff_low", "diff_high", "differs"]


def compare_stored_scores(
    primary: pd.DataFrame,
    baselines: Sequence[str] = ("base", "full_low"),
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Each arm against each baseline present, per task, from stored score rows (one per arm and task:
    arm, task, metric, item_ids, item_values): the paired-bootstrap difference (arm - baseline) and
    ``differs``, True when its interval excludes 0. A pair whose items differ (other task files) is left out;
    the untuned model (arm ``base``) is only ever a baseline, never the arm compared."""
    import pandas as pd

    rows = []
    by_key = {(r.arm, r.task): r for r in primary.itertuples()}
    for base in baselines:
        for (arm, task), r in sorted(by_key.items()):
            b = by_key.get((base, task))
            if arm in (base, "base") or b is None or r.item_ids is None or b.item_ids is None or not len(r.item_ids):
                continue
            a_items, b_items = dict(zip(r.item_ids, r.item_values)), dict(zip(b.item_ids, b.item_values))
            if set(a_items) != set(b_items):
                continue
            diff = paired_bootstrap_diff(a_items, b_items, n_resamples, confidence, seed)
            rows.append(
                {
                    "arm": arm,
                    "baseline": base,
                    "task": task,
                    "metric": r.metric,
                    "n": diff.n,
                    "mean_diff": diff.mean_diff,
                    "diff_low": diff.low,
                    "diff_high": diff.high,
                    "differs": diff.excludes_zero,
                }
            )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
