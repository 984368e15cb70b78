"""A held-out instruction task for lm-eval: how likely a model finds good answers it never trained on.

Given held-out (prompt, completion) pairs — the caller guarantees no training set holds them —
``build_heldout_task`` writes an lm-eval custom task (JSONL + task YAML + a small
``heldout_utils.py``) into a folder passed to ``TaskManager(include_path=...)``, next to the
smoke tasks if you like.

**What it scores.** ``output_type: loglikelihood``: lm-eval returns the summed log-likelihood
``ll`` of the completion given the prompt, as one request per item (0-shot). The text is the
downstream training layout (``chat_template="none"``, ``downstream.join_prompt_completion``):
context = the prompt, continuation = the rest of ``prompt + " " + completion`` (the space only
when neither side has whitespace there). The training row's trailing EOS is not scored: the
metric is about the answer's content, not where the model stops. Written for plain text
(``chat_template="none"``, the paper's); evaluated with ``"apply"``, lm-eval wraps the prompt in
the chat template and the stored token counts are only approximate.

**Per-item metrics** (``process_results``; lm-eval hands it only ``(ll, is_greedy)``, so the
lengths are stored in each JSONL row at build time):

* ``ll_per_token`` (headline) = ``ll / n_tokens``: the mean per-token log-likelihood, i.e.
  minus the held-out SFT loss on the completion. ``n_tokens`` is counted exactly as lm-eval's
  causal backends split the pair (trailing whitespace of the prompt moves to the continuation;
  the continuation's tokens are those of the whole text after the prompt's), with the tokenizer
  given to the builder. Compare models that share it — every arm fine-tuned from one base does.
* ``ll_per_byte`` = ``ll / n_bytes`` (UTF-8 bytes of the continuation), in nats: tokenizer-free,
  for models with different tokenizers (``-ll_per_byte / ln 2`` is lm-eval's bits per byte).

Both are <= 0; higher is better. Aggregation is the mean over items (lm-eval reports its
stderr); ``evaluate_model(..., per_item=True)`` returns the per-item values for bootstrap
intervals and paired comparisons (``eval_tasks.bootstrap_mean_ci``, ``paired_bootstrap_diff``).

**Which rows.** ``draw_heldout`` reserves them from the high-quality pool (the
``heldout_instructions`` asset): a seeded uniform draw, at most a share of each source's high
rows, optionally only rows up to a length. ``training_sets`` leaves those rows out (by id and by
content), so the score measures generalisation to answers of the kind the arms were selected
for, never memorisation.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .downstream import join_prompt_completion
from .eval_tasks import Benchmark, write_task_file

HELDOUT_TASK = "heldout_instruct"
HELDOUT_METRICS = ("ll_per_token", "ll_per_byte")
HELDOUT_LABEL = (
    "held-out instruction answers: mean per-token log-likelihood of the completion given the prompt "
    "(higher is better; comparable only between models sharing a tokenizer)"
)
_UTILS_MODULE = "heldout_utils"


def draw_heldout(
    high: pd.DataFrame, size: int, seed: int = 0, max_source_fraction: float = 0.3, max_chars: int = 0
) -> pd.DataFrame:
    """``size`` rows of ``high`` (source, sample_id, prompt, completion, ...) drawn uniformly with
    ``numpy.random.default_rng(seed)`` over the rows sorted by (source, sample_id), taking at most
    ``floor(max_source_fraction * high rows of the source)`` per source and, when ``max_chars`` > 0,
    only rows whose prompt + completion are at most that many characters. Fewer when too few qualify;
    the rows come back in draw order."""
    import numpy as np

    if size < 0 or not 0 < max_source_fraction <= 1 or max_chars < 0:
        raise ValueError(f"size={size} (>= 0), max_source_fraction={max_source_fraction} (0, 1], max_chars={max_chars}")
    frame = high.sort_values(["source", "sample_id"], kind="stable").reset_index(drop=True)
    if size == 0 or frame.empty:
        return frame.iloc[:0]
    caps = {src: int(max_source_fraction * n) for src, n in frame["source"].value_counts().items()}
    length = frame["prompt"].fillna("").str.len() + frame["completion"].fillna("").str.len()
    eligible = (length <= max_chars) if max_chars else pd.Series(True, index=frame.index)
    taken: list[int] = []
    per_source: dict[str, int] = {}
    for i in np.random.default_rng(seed).permutation(len(frame)):
        if len(taken) == size:
            break
        src = frame.at[i, "source"]
        if eligible.iat[i] and per_source.get(src, 0) < caps[src]:
            per_source[src] = per_source.get(src, 0) + 1
            taken.append(int(i))
    return frame.iloc[taken].reset_index(drop=True)


def process_results(doc: dict, results: list) -> dict:
    """lm-eval's per-item hook: the completion's log-likelihood per token and per byte."""
    ll, _is_greedy = results[0]
    return {"ll_per_token": ll / doc["n_tokens"], "ll_per_byte": ll / doc["n_bytes"]}


@dataclass
class BuiltHeldout:
    folder: Path
    task: str
    items: int
    skipped: list[str] = field(default_factory=list)  # rows left out, each with its sample_id and why


def split_for_lm_eval(prompt: str, completion: str) -> tuple[str, str]:
    """(context, continuation) as lm-eval's causal backends score them: the training text cut after the
    prompt, with the prompt's trailing whitespace moved to the continuation (lm-eval does the same)."""
    text = join_prompt_completion(prompt, completion)
    context = prompt.rstrip()
    return context, text[len(context) :]


def continuation_tokens(tokenizer, context: str, continuation: str) -> int:
    """How many tokens lm-eval scores for the continuation: those of the whole text after the context's."""
    whole = tokenizer.encode(context + continuation)
    return len(whole) - len(tokenizer.encode(context))


def heldout_docs(
    rows: Sequence[Mapping[str, Any]], tokenizer, max_tokens: int | None = None
) -> tuple[list[dict], list[str]]:
    """The task's JSONL rows (sample_id, context, continuation, n_tokens, n_bytes) and the rows skipped.

    ``rows``: sample_id, prompt, completion. An empty prompt or completion, or a repeated sample_id,
    is an error; a row longer than ``max_tokens`` (the model's context; lm-eval would cut its
    left end) is skipped and named."""
    docs, skipped, seen = [], [], set()
    for i, row in enumerate(rows):
        sid = str(row.get("sample_id") or "")
        prompt, completion = str(row.get("prompt") or ""), str(row.get("completion") or "")
        if not sid:
            raise ValueError(f"held-out row {i} has no sample_id")
        if not prompt.strip() or not completion.strip():
            raise ValueError(f"held-out row {sid} has an empty {'prompt' if not prompt.strip() else 'completion'}")
        if sid in seen:
            raise ValueError(f"held-out sample_id {sid} appears twice")
        seen.add(sid)
        context, continuation = split_for_lm_eval(prompt, completion)
        n_tokens = continuation_tokens(tokenizer, context, continuation)
        total = len(tokenizer.encode(context + continuation))
        if max_tokens is not None and total > max_tokens:
            skipped.append(f"{sid}: {total} tokens, over max_tokens={max_tokens}")
            continue
        if n_tokens <= 0:  # the tokenizer merged the whole completion into the prompt's last token
            skipped.append(f"{sid}: the completion adds no token after the prompt's")
            continue
        docs.append(
            {
                "sample_id": sid,
                "context": context,
                "continuation": continuation,
                "n_tokens": n_tokens,
                "n_bytes": len(continuation.encode("utf-8")),
            }
        )
    return docs, skipped


def _load_tokenizer(tokenizer):
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer))
    return tokenizer


def build_heldout_task(
    folder: str | Path,
    rows: Sequence[Mapping[str, Any]],
    tokenizer,
    name: str = HELDOUT_TASK,
    max_tokens: int | None = None,
) -> BuiltHeldout:
    """Write ``<name>.jsonl``, ``<name>.yaml`` and ``heldout_utils.py`` into ``folder``.

    ``tokenizer``: the evaluated models' tokenizer (an object or a folder), for the exact token counts."""
    tok = _load_tokenizer(tokenizer)
    docs, skipped = heldout_docs(rows, tok, max_tokens)
    if not docs:
        raise ValueError(f"held-out task {name}: no rows left to score ({len(rows)} given, {len(skipped)} skipped)")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.jsonl"
    write_task_file(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    # The YAML names its per-item hook by file, so the folder carries a copy of this module's function.
    write_task_file(out / f"{_UTILS_MODULE}.py", inspect.getsource(process_results))
    spec = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "loglikelihood",
        # Field names, not templates: lm-eval returns them verbatim, keeping the continuation's leading space.
        "doc_to_text": "context",
        "doc_to_target": "continuation",
        "target_delimiter": "",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in HELDOUT_METRICS],
        "metadata": {"version": 1.0, "label": HELDOUT_LABEL, "n_skipped": len(skipped)},
    }
    text = yaml.safe_dump(spec, sort_keys=False) + f"process_results: !function {_UTILS_MODULE}.process_results\n"
    write_task_file(out / f"{name}.yaml", text)
    return BuiltHeldout(folder=out, task=name, items=len(docs), skipped=skipped)


def heldout_benchmark(name: str = HELDOUT_TASK) -> Benchmark:
    """The held-out task as a benchmark for ``evaluate_model``: 0-shot, every item, headline ``ll_per_token``."""
    return Benchmark(name, (name,), 0, name, ("ll_per_token", "none"))
