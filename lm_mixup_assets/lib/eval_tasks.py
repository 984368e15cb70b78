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
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import yaml

if TYPE_CHECKING:
    import pandas as pd

SMOKE_LABEL = "smoke-level (items from the lm-eval package's few-shot exemplars; not comparable to published scores)"
SMOKE_TASKS = ("smoke_mmlu", "smoke_bbh", "smoke_gsm8k")
# The paper's suite (METHOD.md §6): lm-eval's own tasks (name -> shots), downloaded from the hub.
PAPER_TASKS = {"mmlu": 0, "gsm8k_cot": 8, "bbh_cot_fewshot": 3, "truthfulqa_mc2": 0, "tydiqa_goldp_en": 1}

_MMLU_ITEM = re.compile(r"^(?P<q>.*?)\n\(A\) (?P<a>.*?) \(B\) (?P<b>.*?) \(C\) (?P<c>.*?) \(D\) (?P<d>.*?)\n"
                        r"A: .*?The answer is \((?P<ans>[ABCD])\)", re.DOTALL)
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
            items.append({"subject": subject, "question": m.group("q").strip(),
                          "choices": [m.group(x).strip() for x in "abcd"], "answer": "ABCD".index(m.group("ans"))})
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
            items.append({"subtask": path.stem, "input": str(sample["input"]).strip(), "target": str(sample["target"]).strip()})
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
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}},
            "test_split": "test", "metadata": {"version": 1.0, "label": SMOKE_LABEL}, **body}


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
        "filter_list": [{"name": "strip", "filter": [{"function": "regex", "regex_pattern": r"^\s*(.*?)\s*$"},
                                                     {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": True}],
    },
    "smoke_gsm8k": {
        "output_type": "generate_until",
        "doc_to_text": "Q: {{question}}\nA: Let's think step by step.",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["Q:", "\n\n", "</s>", "<|im_end|>"], "do_sample": False, "max_gen_toks": 128},
        "filter_list": [{"name": "last-number", "filter": [
            {"function": "regex", "regex_pattern": r"(-?[0-9][0-9,]*(?:\.[0-9]+)?)(?!.*[0-9])", "group_select": 0},
            {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_punctuation": False, "regexes_to_ignore": [",", r"\.0+$"]}],
    },
}


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
        data.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8")
        (out / f"{name}.yaml").write_text(yaml.safe_dump(_task_yaml(name, data, _TASK_BODIES[name]), sort_keys=False))
        built.items[name] = len(items)
        if skipped:
            built.skipped[name] = skipped
    return built


# --------------------------------------------------------------------------- running lm-eval


@dataclass
class EvalRun:
    scores: list[dict]  # one per (task, metric): task, metric, filter, value, stderr, n_samples
    task_versions: dict[str, str]
    lm_eval_version: str
    seconds: float
    config: dict


def evaluate_model(model_path: str, tasks: dict[str, int | None], include_path: str | Path | None = None,
                   limit: int | None = None, batch_size: int = 8, seed: int = 1234, device: str = "auto",
                   backend: str = "hf") -> EvalRun:
    """``lm_eval.simple_evaluate`` on a local HF folder; ``tasks`` maps name -> num_fewshot (None: the task's own).

    ``backend`` ``hf`` (transformers, CPU or GPU) or ``vllm`` (GPU, the ``gpu`` extra).
    """
    import time
    from importlib.metadata import version

    import lm_eval
    from lm_eval.tasks import TaskManager

    from .models import pick_device

    device = pick_device(device)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    model_args = {"pretrained": model_path, "dtype": dtype}
    if backend == "hf":
        model_args["device"] = device
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    started = time.perf_counter()
    scores: list[dict] = []
    versions: dict[str, str] = {}
    # One call per few-shot setting: simple_evaluate takes one num_fewshot for all its tasks.
    by_shots: dict[int | None, list[str]] = {}
    for name, shots in tasks.items():
        by_shots.setdefault(shots, []).append(name)
    for shots, names in by_shots.items():
        out = lm_eval.simple_evaluate(model=backend, model_args=model_args, tasks=names, num_fewshot=shots,
                                      batch_size=batch_size, limit=limit, task_manager=manager, random_seed=seed,
                                      numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                      log_samples=False, bootstrap_iters=1000)
        versions.update({k: str(v) for k, v in out.get("versions", {}).items()})
        for task, metrics in out["results"].items():
            n = out.get("n-samples", {}).get(task, {}).get("effective")
            for key, value in metrics.items():
                if key == "alias" or "_stderr," in key or not isinstance(value, (int, float)):
                    continue
                metric, _, filt = key.partition(",")
                stderr = metrics.get(f"{metric}_stderr,{filt}")
                scores.append({"task": task, "metric": metric, "filter": filt, "value": float(value),
                               "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                               "n_samples": int(n) if n is not None else None, "num_fewshot": shots})
    return EvalRun(scores=scores, task_versions=versions, lm_eval_version=version("lm_eval"),
                   seconds=time.perf_counter() - started,
                   config={"backend": backend, "dtype": dtype, "device": device, "limit": limit, "seed": seed,
                           "batch_size": batch_size})


# --------------------------------------------------------------------------- the report

# Which (metric, filter) stands for a task in the report, in order of preference.
_PRIMARY = [("acc", "none"), ("exact_match", "strip"), ("exact_match", "last-number"), ("exact_match", "strict-match"),
            ("exact_match", "get-answer"), ("exact_match", "flexible-extract"), ("f1", "none"), ("exact_match", "none")]


def primary_scores(scores: "pd.DataFrame") -> "pd.DataFrame":
    """One row per (arm, task): the task's headline metric. ``scores`` has arm, task, metric, filter, value."""
    import pandas as pd

    rank = {mf: i for i, mf in enumerate(_PRIMARY)}
    df = scores.assign(_rank=[rank.get((m, f), len(rank)) for m, f in zip(scores["metric"], scores["filter"])])
    df = df[df["_rank"] < len(rank)].sort_values(["arm", "task", "_rank"])
    return pd.DataFrame(df.groupby(["arm", "task"], as_index=False).first()).drop(columns="_rank")


def benchmark_table(scores: "pd.DataFrame", baselines: Sequence[str] = ("full_low", "random")) -> "pd.DataFrame":
    """Arms x tasks (headline metric), the mean over tasks, and the mean's delta to each baseline arm present."""
    primary = primary_scores(scores)
    table = primary.pivot(index="arm", columns="task", values="value")
    table["average"] = table.mean(axis=1)
    for base in baselines:
        if base in table.index:
            table[f"delta_vs_{base}"] = table["average"] - table.loc[base, "average"]
    return table.reset_index()
