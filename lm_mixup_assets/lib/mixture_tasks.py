"""MIXTURE task types (docs/method.md, MIXTURE): formats, validators and the extractive writer.

Pure Python + numpy; no Dagster, no model calls.

Five task types, each a plain-text sample:

============  ===============================================================
``qa``        ``Q: <question>\\nA: <answer>``
``mcq``       ``Q: <question>`` + ``A) .. B) .. C) .. D) ..`` + ``Answer: <A-D>``
``tfq``       ``Q: <statement>`` + ``Answer: True|False``
``cs``        ``C: <category>\\nS: <statement>``
``paragraph`` free prose, at least one sentence, no Q:/A: scaffolding
============  ===============================================================

What lives here
---------------
* ``TASK_TYPES``, ``FORMAT_SPECS`` and ``DISTILL_INSTRUCTIONS`` (our words): the
  distiller gets a cluster of low-quality variants and writes ONE good sample.
* ``validate_target`` (strict format check with reasons) and
  ``answer_pattern_ok`` (the lenient pattern half of the GRPO format reward, §4).
* The ``extractive`` writer, ``write_extractive_target``: well-formed targets
  built only from a paragraph's own sentences (no LLM), e.g. a cloze MCQ whose
  distractors are other salient tokens of the same kind.
* Elsewhere: the noise operators and ``make_variants`` (``mixture_noise.py``); the
  LLM prompt templates, ``draw_cluster_size`` and the chain of thought
  (``mixture_llm.py``).  Everything random takes a ``numpy.random.Generator`` (or a
  seed), so a seed fixes the output.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "TASK_TYPES",
    "TASK_NAMES",
    "FORMAT_SPECS",
    "DISTILL_INSTRUCTIONS",
    "distill_user_turn",
    "validate_target",
    "answer_pattern_ok",
    "split_sentences",
    "salient_tokens",
    "SalientToken",
    "falsify_sentence",
    "write_extractive_target",
]

TASK_TYPES: tuple[str, ...] = ("qa", "mcq", "tfq", "cs", "paragraph")

TASK_NAMES = {
    "qa": "question-answer pair",
    "mcq": "multiple-choice question",
    "tfq": "true/false question",
    "cs": "category-statement pair",
    "paragraph": "paragraph",
}

FORMAT_SPECS = {
    "qa": "Q: <question>\nA: <answer>",
    "mcq": "Q: <question>\nA) <option>\nB) <option>\nC) <option>\nD) <option>\nAnswer: <one letter, A-D>",
    "tfq": "Q: <statement to judge>\nAnswer: <True or False>",
    "cs": "C: <category>\nS: <statement>",
    "paragraph": "<one paragraph of plain prose, no labels or lists>",
}

_TASK_GUIDANCE = {
    "qa": "The question must be answerable from the facts, and the answer must state them fully and precisely.",
    "mcq": "Give exactly four options, one of them correct and three plausible but wrong ones of the same kind, "
    "and name the correct letter.",
    "tfq": "The statement must be clearly true or clearly false given the facts, and the answer must say which.",
    "cs": "The category names the topic in a few words; the statement is one clear, self-contained fact about it.",
    "paragraph": "Write coherent, well-ordered prose that covers every essential fact once.",
}

DISTILL_INSTRUCTIONS = {
    task: (
        f"The samples below are weak versions of the same {TASK_NAMES[task]}: some are incomplete, "
        "redundant, shuffled, misspelt, or mixed with sentences from an unrelated topic. Write ONE "
        f"high-quality {TASK_NAMES[task]} that keeps all of their essential, on-topic information, "
        "corrects errors, leaves out the unrelated material and adds nothing unsupported. "
        f"{_TASK_GUIDANCE[task]} Use exactly this format:\n{FORMAT_SPECS[task]}"
    )
    for task in TASK_TYPES
}


def _check_task(task: str) -> None:
    if task not in TASK_TYPES:
        raise ValueError(f"unknown task type {task!r}; expected one of {TASK_TYPES}")


def distill_user_turn(task: str, variants: Sequence[str]) -> str:
    """The distiller's user turn for a MIXTURE cluster: instruction, then the variants
    separated by blank lines (the same layout as the pool's ``merge_members``)."""
    _check_task(task)
    return DISTILL_INSTRUCTIONS[task] + "\n\n" + "\n\n".join(v.strip() for v in variants)


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


# --------------------------------------------------------------------------- #
# Validators
# --------------------------------------------------------------------------- #
_TAG_RE = re.compile(r"</?(?:think|answer)>", re.IGNORECASE)
_QA_RE = re.compile(r"\s*Q:[ \t]*(.*?)\s*\n\s*A:[ \t]*(.*?)\s*", re.DOTALL)
_CS_RE = re.compile(r"\s*C:[ \t]*([^\n]*?)[ \t]*\n\s*S:[ \t]*(.*?)\s*", re.DOTALL)
_OPTION_RE = re.compile(r"^\s*([A-Z])\)\s*(.*?)\s*$")
_ANSWER_LINE_RE = re.compile(r"^\s*Answer\s*:\s*(.*?)\s*$", re.IGNORECASE)
_SCAFFOLD_RE = re.compile(r"(?m)^\s*(?:Q|A|C|S|Answer)\s*:")
_OPTION_LINE_RE = re.compile(r"(?m)^\s*[A-D]\)\s")
_SENTENCE_LIKE_RE = re.compile(r"[^\W\d_]{2,}.*?[.!?]", re.DOTALL)


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.strip().splitlines() if ln.strip()]


def _strip_q(s: str) -> str:
    return re.sub(r"^\s*Q\s*:\s*", "", s).strip()


def _validate_qa(text: str) -> list[str]:
    reasons = []
    m = _QA_RE.fullmatch(text)
    if not text.lstrip().startswith("Q:"):
        reasons.append("must start with 'Q:'")
    if not re.search(r"(?m)^\s*A:", text):
        reasons.append("missing an 'A:' line after the question")
    if reasons:
        return reasons
    if len(re.findall(r"(?m)^\s*Q:", text)) > 1 or len(re.findall(r"(?m)^\s*A:", text)) > 1:
        reasons.append("more than one Q:/A: pair (write one sample)")
    if m is None:
        reasons.append("expected 'Q: <question>' followed by 'A: <answer>'")
        return reasons
    if not m.group(1).strip():
        reasons.append("empty question")
    if not m.group(2).strip():
        reasons.append("empty answer")
    return reasons


def _parse_mcq(text: str) -> tuple[str, list[tuple[str, str]], str | None, list[str]]:
    """(question, [(letter, option)], answer value or None, lines after the options before Answer)."""
    lines = _lines(text)
    first_opt = next((i for i, ln in enumerate(lines) if _OPTION_RE.match(ln)), len(lines))
    question = _strip_q(" ".join(lines[:first_opt]))
    options, i = [], first_opt
    while i < len(lines) and (m := _OPTION_RE.match(lines[i])):
        options.append((m.group(1), m.group(2)))
        i += 1
    answer = None
    rest = lines[i:]
    if rest and (m := _ANSWER_LINE_RE.match(rest[-1])):
        answer = m.group(1)
        rest = rest[:-1]
    return question, options, answer, rest


def _validate_mcq(text: str) -> list[str]:
    reasons = []
    question, options, answer, between = _parse_mcq(text)
    if not question:
        reasons.append("missing question before the options")
    letters = [letter for letter, _ in options]
    if letters != ["A", "B", "C", "D"]:
        reasons.append(f"expected four options A) B) C) D) in order, found {letters or 'none'}")
    for letter, opt in options:
        if not opt:
            reasons.append(f"option {letter} is empty")
    texts = [o.lower() for _, o in options if o]
    if len(set(texts)) < len(texts):
        reasons.append("options are not distinct")
    if between:
        reasons.append("unexpected text between the options and the answer line")
    if answer is None:
        reasons.append("missing final 'Answer: <A-D>' line")
    else:
        m = re.match(r"^\(?([A-Za-z])\)?(?:$|[\s.:)])", answer)
        if not m or m.group(1).upper() not in "ABCD":
            reasons.append(f"answer must be one of A-D, got {answer!r}")
    return reasons


def _validate_tfq(text: str) -> list[str]:
    reasons = []
    lines = _lines(text)
    m = _ANSWER_LINE_RE.match(lines[-1]) if lines else None
    if m is None:
        reasons.append("missing final 'Answer: True|False' line")
        statement_lines = lines
    else:
        statement_lines = lines[:-1]
        if not re.fullmatch(r"(?i)(true|false)\.?", m.group(1)):
            reasons.append(f"answer must be True or False, got {m.group(1)!r}")
    if not _strip_q(" ".join(statement_lines)):
        reasons.append("missing statement before the answer")
    if any(_ANSWER_LINE_RE.match(ln) for ln in statement_lines):
        reasons.append("more than one 'Answer:' line")
    return reasons


def _validate_cs(text: str) -> list[str]:
    reasons = []
    if not text.lstrip().startswith("C:"):
        reasons.append("must start with 'C: <category>'")
    if not re.search(r"(?m)^\s*S:", text):
        reasons.append("missing an 'S: <statement>' line")
    if reasons:
        return reasons
    m = _CS_RE.fullmatch(text)
    if m is None:
        return ["expected 'C: <category>' on one line followed by 'S: <statement>'"]
    if not m.group(1).strip():
        reasons.append("empty category")
    if not m.group(2).strip():
        reasons.append("empty statement")
    if re.search(r"(?m)^\s*[CS]:", m.group(2)):
        reasons.append("more than one C:/S: pair (write one sample)")
    return reasons


def _validate_paragraph(text: str) -> list[str]:
    reasons = []
    if not text.strip():
        return ["empty paragraph"]
    if not _SENTENCE_LIKE_RE.search(text):
        reasons.append("no complete sentence")
    if _SCAFFOLD_RE.search(text):
        reasons.append("contains Q:/A:/C:/S:/Answer: scaffolding; a paragraph is plain prose")
    if _OPTION_LINE_RE.search(text):
        reasons.append("contains multiple-choice option lines")
    return reasons


_VALIDATORS: dict[str, Callable[[str], list[str]]] = {
    "qa": _validate_qa,
    "mcq": _validate_mcq,
    "tfq": _validate_tfq,
    "cs": _validate_cs,
    "paragraph": _validate_paragraph,
}


def validate_target(task: str, text: str) -> list[str]:
    """Reasons why ``text`` is not a well-formed ``task`` sample; empty list = valid.

    ``text`` is the sample itself (the content of ``<answer>``), not a whole response.
    """
    _check_task(task)
    if text is None or not str(text).strip():
        return ["empty sample"]
    text = str(text)
    reasons = []
    if _TAG_RE.search(text):
        reasons.append("contains <think>/<answer> tags; pass the sample body only")
    return reasons + _VALIDATORS[task](text)


# The reward's lenient patterns (docs/method.md, rewards): presence and order of the markers only.
# (The released code's MCQ pattern also wants a leading 'Q:'; our writers always emit one.)
_ANSWER_PATTERNS = {
    "qa": re.compile(r"Q:.*?A:", re.DOTALL | re.IGNORECASE),
    "mcq": re.compile(r"A\).*?B\).*?C\).*?D\).*?Answer:", re.DOTALL | re.IGNORECASE),
    "cs": re.compile(r"C:.*?S:", re.DOTALL | re.IGNORECASE),
    "tfq": re.compile(r"Answer:", re.IGNORECASE),
}


def answer_pattern_ok(task: str, text: str) -> bool:
    """Pattern half of the GRPO format reward: does the answer carry the task's markers?

    QA ``Q:…A:``, MCQ ``A) B) C) D)`` then ``Answer:``, CS ``C:…S:``, TFQ ``Answer:``;
    paragraph is free-form (always True).
    """
    _check_task(task)
    if task == "paragraph":
        return True
    return bool(_ANSWER_PATTERNS[task].search(text or ""))


# --------------------------------------------------------------------------- #
# Sentences and salient tokens
# --------------------------------------------------------------------------- #
_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof st jr sr vs etc e.g i.e inc ltd co corp no nos vol vols pp p c ca cf approx fig
    gen gov col lt sgt capt rev hon mt ft u.s u.k a.d b.c al jan feb mar apr jun jul aug sep sept oct nov
    dec est op ed eds trans ch sec dept univ assn bros messrs mme mlle brig adm maj cmdr sen rep pres fr
    supt esq ave blvd rd mts nr jnr snr""".split()
)
_BOUNDARY_RE = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9\u00c0-\u00de])")


def split_sentences(text: str) -> list[str]:
    """Sentences of encyclopedic prose.

    A boundary is sentence punctuation (plus closing quotes/brackets), whitespace and
    an upper-case letter or digit; boundaries after known abbreviations ("Dr.",
    "U.S.", "c."), single initials ("George C. Marshall") and dotted acronyms are skipped.
    """
    text = re.sub(r"\s+", " ", text or "").strip()
    if not text:
        return []
    out, start = [], 0
    for m in _BOUNDARY_RE.finditer(text):
        if text[m.start()] == ".":
            before = text[start : m.start()]
            tok = before.rsplit(" ", 1)[-1].lstrip("\"'(\u201c[").lower()
            if tok in _ABBREVIATIONS or len(tok) == 1 or re.fullmatch(r"(?:[a-z]\.)+[a-z]", tok):
                continue
        out.append(text[start : m.end()].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_UP = "A-Z\u00c0-\u00d6\u00d8-\u00de"
_CAPWORD = rf"[{_UP}][\w'\u2019\-]*\w|[{_UP}]"
_CONNECTOR = r"(?:of|de|del|della|di|da|du|des|von|van|der|den|la|le|y|al|bin|ibn|upon|on)"
_PROPER_RE = re.compile(rf"(?<![\w\-])(?:{_CAPWORD})(?:\s+(?:{_CONNECTOR}\s+(?:the\s+)?)?(?:{_CAPWORD}))*(?![\w\-])")
_YEAR_RE = re.compile(r"(?<![\w.,/\-\u2013])(1[0-9]{3}|20[0-2][0-9])(?![\w/\-]|[.,]\d)")
_NUMBER_RE = re.compile(r"(?<![\w.,/\-\u2013])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d{2,})(?![\w/\-]|[.,]\d)")
# Capitalised only because they open a sentence (or are function words); never answers.
_STOP_CAPS = frozenset(
    """the a an in on at this these those that it its he she they we i you his her their our my there here
    however although after before during since while when where whereas many some most other others several
    as by for from with also both each such despite according following under between among unlike like
    because if once today later early thus then still yet but and or nor so not no all any few one two
    three first second third what which who whom whose why how another further furthermore moreover
    meanwhile instead indeed overall following initially eventually finally subsequently""".split()
)


@dataclass(frozen=True)
class SalientToken:
    text: str
    kind: str  # "year" | "number" | "month" | "proper"
    start: int  # offset in the sentence
    end: int


def salient_tokens(sentence: str) -> list[SalientToken]:
    """Years, numbers, month names and proper-noun phrases of one sentence (no overlaps)."""
    found: list[SalientToken] = []
    for m in _YEAR_RE.finditer(sentence):
        found.append(SalientToken(m.group(1), "year", m.start(1), m.end(1)))
    for m in _NUMBER_RE.finditer(sentence):
        if any(t.start <= m.start(1) < t.end for t in found):
            continue
        found.append(SalientToken(m.group(1), "number", m.start(1), m.end(1)))
    for m in _PROPER_RE.finditer(sentence):
        start, words = m.start(), m.group(0).split()
        # drop capitalised function words at the front ("The", "In", "However")
        while words and words[0].lower() in _STOP_CAPS:
            start = sentence.index(words[0], start) + len(words[0])
            start += len(sentence[start:]) - len(sentence[start:].lstrip())
            words = words[1:]
        if not words:
            continue
        text = " ".join(words)
        text = re.sub(r"['\u2019]s$", "", text)
        # trailing connectors cannot end a name
        while text.split() and text.split()[-1] in ("of", "the", "de", "von", "van"):
            text = text.rsplit(" ", 1)[0]
        if len(text) < 2 or text.lower() in _STOP_CAPS or text.isdigit() or text in ("I", "II"):
            continue
        if len(words) == 1 and re.search(r"-[a-z]", text):
            continue  # "Armenian-occupied", "French-speaking": adjectives, not names
        # a capitalised word opening the sentence is a name only when more than one word
        # or when it also occurs capitalised later in the sentence
        if start == 0 and len(text.split()) == 1 and sentence.count(text) < 2:
            continue
        kind = "month" if text in _MONTHS else "proper"
        idx = sentence.find(text, start)
        if idx < 0 or any(not (idx + len(text) <= t.start or idx >= t.end) for t in found):
            continue
        found.append(SalientToken(text, kind, idx, idx + len(text)))
    return sorted(found, key=lambda t: t.start)


@functools.lru_cache(maxsize=256)
def _text_pool(text: str) -> dict[str, tuple[str, ...]]:
    # Cached: every paragraph of an article passes the same ``context`` string.
    pool: dict[str, list[str]] = {}
    for sent in split_sentences(text):
        for tok in salient_tokens(sent):
            lst = pool.setdefault(tok.kind, [])
            if tok.text not in lst:
                lst.append(tok.text)
    return {k: tuple(v) for k, v in pool.items()}


def _kind_pool(texts: Iterable[str]) -> dict[str, list[str]]:
    """Distinct salient tokens per kind over several texts, in order of appearance."""
    pool: dict[str, list[str]] = {}
    for text in texts:
        if not text:
            continue
        for kind, toks in _text_pool(text).items():
            lst = pool.setdefault(kind, [])
            lst.extend(t for t in toks if t not in lst)
    return pool


def _overlaps(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a in b or b in a


def _synthetic_numbers(tok: str, kind: str, rng: np.random.Generator, n: int) -> list[str]:
    """Plausible wrong values of the same shape: nearby years, scaled numbers."""
    out: list[str] = []
    if kind == "year":
        year = int(tok)
        offsets = rng.permutation(np.r_[-25:0, 1:26])
        for off in offsets:
            y = year + int(off)
            if y > 2025:
                y = year - int(off)
            if str(y) != tok and str(y) not in out and 1000 <= y:
                out.append(str(y))
            if len(out) >= n:
                break
        return out
    if kind == "number":
        plain = tok.replace(",", "")
        decimals = len(plain.split(".")[1]) if "." in plain else 0
        value = float(plain)
        for f in rng.permutation([0.5, 0.6, 0.75, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 0.4]):
            v = value * float(f)
            if decimals == 0:
                v = int(round(v))
                if v < 2:
                    continue
                s = f"{v:,}" if "," in tok else str(v)
            else:
                s = f"{v:,.{decimals}f}" if "," in tok else f"{v:.{decimals}f}"
            if s != tok and s not in out:
                out.append(s)
            if len(out) >= n:
                break
        return out
    if kind == "month":
        months = [m for m in _MONTHS if m != tok]
        return [months[i] for i in rng.permutation(len(months))[:n]]
    return out


# --------------------------------------------------------------------------- #
# Falsifying a sentence (TFQ)
# --------------------------------------------------------------------------- #
_AUX = r"is|was|are|were|can|could|will|would|should|may|might|must|does|did|do"
_AUX_RE = re.compile(rf"\b({_AUX})\b(?!\s+not\b|n't)")
_PERFECT_RE = re.compile(r"\b(has|have|had)\b(?=\s+(?:been|[a-z]+(?:ed|en|wn|un|ught)\b))")
_NEGATION_RE = re.compile(rf"\b(?:({_AUX}|has|have|had)\s+not|cannot)\b")
# what may stand between two names of a plain list ("A, B", "A and B", "A, and the B")
_SYMMETRIC_GAP_RE = re.compile(
    r"\s*(?:[,;/&]|\band\b|\bor\b|\bnor\b|\bas well as\b)?\s*(?:,\s*)?(?:\band\b|\bor\b)?\s*(?:the\s+)?"
)


def falsify_sentence(
    sentence: str,
    rng: np.random.Generator | int | None = None,
    entity_pool: Sequence[str] = (),
) -> tuple[str, str] | None:
    """A false copy of a (true) sentence and the method used, or None.

    Methods, chosen at random among those the sentence supports: ``number`` (a year
    or number replaced by a nearby wrong value), ``negation`` (an auxiliary verb
    negated, or an existing negation removed), ``entity_swap`` (two names swapped,
    unless they only stand in a list such as "A and B", where a swap changes
    nothing), ``entity_replace`` (a name replaced by another name from
    ``entity_pool``, e.g. other names of the same article).
    """
    rng = _as_rng(rng)
    toks = salient_tokens(sentence)
    numeric = [t for t in toks if t.kind in ("year", "number")]
    names = [t for t in toks if t.kind == "proper"]

    def by_number() -> str | None:
        t = numeric[int(rng.integers(len(numeric)))]
        wrong = _synthetic_numbers(t.text, t.kind, rng, 1)
        return sentence[: t.start] + wrong[0] + sentence[t.end :] if wrong else None

    def by_negation() -> str | None:
        m = _NEGATION_RE.search(sentence)
        if m:  # remove an existing negation: "was not" -> "was", "cannot" -> "can"
            repl = "can" if m.group(0) == "cannot" else m.group(1)
            return sentence[: m.start()] + repl + sentence[m.end() :]
        m = _AUX_RE.search(sentence) or _PERFECT_RE.search(sentence)
        if not m:
            return None
        return sentence[: m.end()] + " not" + sentence[m.end() :]

    def by_swap() -> str | None:
        # neighbouring names only: in "New York, Chicago, and Los Angeles" any swap is harmless,
        # and a list is recognised by the gap between neighbours
        pairs = [
            (a, b)
            for a, b in zip(names, names[1:])
            if not _overlaps(a.text, b.text) and not _SYMMETRIC_GAP_RE.fullmatch(sentence[a.end : b.start])
        ]
        if not pairs:
            return None
        a, b = pairs[int(rng.integers(len(pairs)))]
        return sentence[: a.start] + b.text + sentence[a.end : b.start] + a.text + sentence[b.end :]

    def by_replace() -> str | None:
        t = names[int(rng.integers(len(names)))]
        cands = [e for e in entity_pool if not _overlaps(e, t.text) and e.lower() not in sentence.lower()]
        if not cands:
            return None
        same_len = [e for e in cands if abs(len(e.split()) - len(t.text.split())) <= 1] or cands
        other = same_len[int(rng.integers(len(same_len)))]
        return sentence[: t.start] + other + sentence[t.end :]

    named = []
    if numeric:
        named.append(("number", by_number))
    if _NEGATION_RE.search(sentence) or _AUX_RE.search(sentence) or _PERFECT_RE.search(sentence):
        named.append(("negation", by_negation))
    if len(names) >= 2:
        named.append(("entity_swap", by_swap))
    if names and entity_pool:
        named.append(("entity_replace", by_replace))
    order = rng.permutation(len(named)) if named else []
    for i in order:
        method, fn = named[int(i)]
        out = fn()
        if out is not None and out != sentence:
            return out, method
    return None


# --------------------------------------------------------------------------- #
# The extractive writer
# --------------------------------------------------------------------------- #
_COMMON_HEADINGS = frozenset(
    """history etymology overview background description biography career legacy geography economy culture
    demographics politics religion education definition terminology classification characteristics
    structure function uses use applications production distribution ecology behaviour behavior reception
    influence development origins origin early later personal life death works theory practice society
    government military climate transport transportation sports sport media science research philosophy
    language languages literature arts music health treatment diagnosis causes symptoms prognosis
    epidemiology management prevention mechanism properties chemistry physics biology evolution taxonomy
    anatomy physiology criticism criticisms controversy controversies design variants types forms
    principles methods techniques concepts elements components features modern contemporary ancient
    medieval""".split()
)
_PRONOUN_START_RE = re.compile(r"^(?:He|She|It|They|This|These|Those|His|Her|Its|Their|Such)\b")
_DEFINITIONAL_RE = re.compile(r"\b(?:is|was|are|were)\b")


def _section_phrase(section: str, title: str, text: str) -> str:
    """Section name as it reads inside a question: lower-case the first word unless it is
    a name ("Early life" -> "early life", "Birth" -> "birth", "Alabama" stays).

    A word counts as a name when it appears capitalised in the title or in the middle
    of a sentence of the paragraph, and is not a common heading word."""
    words = section.split()
    if not words:
        return section
    first = words[0]
    if not (first[:1].isupper() and first[1:] == first[1:].lower()):
        return section  # acronyms, CamelCase, digits: leave alone
    lower = first.lower()
    is_name = lower not in _COMMON_HEADINGS and (
        first in title.split() or re.search(rf"[^.!?\s]\s+{re.escape(first)}\b", text) is not None
    )
    return section if is_name else " ".join([lower] + words[1:])


def _lead(sentences: list[str], min_chars: int = 60) -> str:
    """The first sentence, joined with the next when it is too short to stand alone."""
    out = sentences[0]
    i = 1
    while len(out) < min_chars and i < len(sentences):
        out += " " + sentences[i]
        i += 1
    return out


def _write_qa(title: str, section: str, sents: list[str], rng: np.random.Generator) -> str | None:
    intro = section.strip().lower() in ("introduction", "")
    first = sents[0]
    if intro and _DEFINITIONAL_RE.search(first[:160]) and title.split()[0].lower() in first.lower():
        question = f"What is {title}?"
    elif intro:
        templates = [
            "What are some key facts about {t}?",
            "Could you give some background on {t}?",
            "What should one know about {t}?",
        ]
        question = templates[int(rng.integers(len(templates)))].format(t=title)
    else:
        sec = _section_phrase(section, title, " ".join(sents))
        templates = [
            "What does the article on {t} say about {s}?",
            "Regarding {t}, what can you tell me about {s}?",
            "In the context of {t}, what is known about {s}?",
        ]
        question = templates[int(rng.integers(len(templates)))].format(t=title, s=sec)
    k = min(len(sents), int(rng.integers(2, 4)))
    answer = " ".join(sents[:k])
    return f"Q: {question}\nA: {answer}"


def _write_mcq(title: str, sents: list[str], context: str, rng: np.random.Generator) -> str | None:
    pool = _kind_pool([" ".join(sents), context])
    candidates = []
    for si, sent in enumerate(sents):
        if not (40 <= len(sent) <= 400):
            continue
        for tok in salient_tokens(sent):
            if tok.kind == "proper" and (_overlaps(tok.text, title) or len(tok.text) < 3):
                continue
            candidates.append((si, tok))
    order = rng.permutation(len(candidates)) if candidates else []
    for ci in order:
        si, tok = candidates[int(ci)]
        sent = sents[si]
        distractors = [
            d
            for d in pool.get(tok.kind, [])
            if not _overlaps(d, tok.text) and d.lower() not in sent.lower() and not _overlaps(d, title)
        ]
        if tok.kind == "proper":
            same = [d for d in distractors if abs(len(d.split()) - len(tok.text.split())) <= 1]
            distractors = same if len(same) >= 3 else distractors
            if len(distractors) < 3:
                continue
            picked = [distractors[int(i)] for i in rng.permutation(len(distractors))[:3]]
        else:
            real = [distractors[int(i)] for i in rng.permutation(len(distractors))] if distractors else []
            # a real value of the same kind first (harder), synthetic ones to fill up
            picked = real[:1] + [
                s
                for s in _synthetic_numbers(tok.text, tok.kind, rng, 6)
                if s not in real[:1] and s.lower() not in sent.lower()
            ]
            picked = picked[:3]
            if len(picked) < 3:
                continue
        options = [tok.text] + picked
        if len({o.lower() for o in options}) < 4:
            continue
        perm = rng.permutation(4)
        options = [options[int(i)] for i in perm]
        answer = "ABCD"[int(np.flatnonzero(perm == 0)[0])]
        cloze = re.sub(rf"(?<![\w\-]){re.escape(tok.text)}(?![\w\-])", "____", sent)
        if "____" not in cloze:
            continue
        lines = [f'Q: In the article on {title}, which option fills the blank? "{cloze}"']
        lines += [f"{letter}) {opt}" for letter, opt in zip("ABCD", options)]
        lines.append(f"Answer: {answer}")
        return "\n".join(lines)
    return None


def _write_tfq(
    title: str, sents: list[str], context: str, rng: np.random.Generator, truth: bool | None = None
) -> str | None:
    usable = [s for s in sents if 50 <= len(s) <= 320 and s[-1:] in ".!?\"'\u201d)"]
    if not usable:
        return None
    preferred = [s for s in usable if not _PRONOUN_START_RE.match(s)] or usable
    sentence = preferred[int(rng.integers(len(preferred)))]
    if truth is None:
        truth = bool(rng.random() < 0.5)
    statement = sentence
    if not truth:
        entity_pool = _kind_pool([" ".join(sents), context]).get("proper", [])
        falsified = falsify_sentence(sentence, rng, [e for e in entity_pool if not _overlaps(e, title)])
        if falsified is None:
            truth = True  # nothing to falsify: a true statement is still a valid sample
        else:
            statement = falsified[0]
    about = "" if title.lower() in statement.lower() else f" (about {title})"
    return f"Q: True or false{about}: {statement}\nAnswer: {'True' if truth else 'False'}"


def _write_cs(title: str, section: str, sents: list[str]) -> str | None:
    intro = section.strip().lower() in ("introduction", "")
    category = title if intro else f"{title}: {section}"
    return f"C: {category}\nS: {_lead(sents)}"


def _write_paragraph(sents: list[str], max_chars: int = 1200) -> str | None:
    out = sents[0]
    for s in sents[1:]:
        if len(out) + 1 + len(s) > max_chars:
            break
        out += " " + s
    return out


def write_extractive_target(
    task: str,
    paragraph: dict,
    rng: np.random.Generator | int | None = None,
    *,
    truth: bool | None = None,
) -> str | None:
    """A well-formed ``task`` sample built only from ``paragraph``'s own sentences, or None.

    ``paragraph``: ``title``, ``section`` and ``text``; optional ``context`` (more text of the
    same article) widens the pool of MCQ distractors and TFQ replacement names.
    ``truth`` forces the TFQ label (default: a fair coin from ``rng``; when no
    falsification applies the sample is a true one).

    * qa: a question from title/section, answered by the 2-3 lead sentences;
    * mcq: a cloze on one sentence (a year, number, month or name blanked), three
      distractors of the same kind (names from the paragraph/context, nearby values
      for numbers), seeded shuffle, ``Answer: X``;
    * tfq: a sentence as is (True) or falsified (False), see ``falsify_sentence``;
    * cs: ``C:`` the title (lead section) or "title: section", ``S:`` the lead sentence;
    * paragraph: the paragraph, cut after whole sentences at 1,200 characters.

    Returns None when the paragraph cannot support the task (e.g. no token with three
    distractors for MCQ).  Every returned sample passes ``validate_target``.
    """
    _check_task(task)
    rng = _as_rng(rng)
    title = str(paragraph.get("title") or "").strip()
    section = str(paragraph.get("section") or "").strip()
    context = str(paragraph.get("context") or "")
    sents = split_sentences(str(paragraph.get("text") or ""))
    if not sents or not title:
        return None
    if task == "qa":
        out = _write_qa(title, section, sents, rng)
    elif task == "mcq":
        out = _write_mcq(title, sents, context, rng)
    elif task == "tfq":
        out = _write_tfq(title, sents, context, rng, truth)
    elif task == "cs":
        out = _write_cs(title, section, sents)
    else:
        out = _write_paragraph(sents)
    if out is None or validate_target(task, out):
        return None
    return out
