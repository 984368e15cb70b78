"""Noise operators for MIXTURE (docs/method.md, MIXTURE): a good target -> low-quality variants.

Pure Python + numpy. Each operator is text -> text and deterministic given its
``numpy.random.Generator``; ``make_variants`` composes 1-3 of them per variant.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from .mixture_tasks import (
    _OPTION_RE,
    _STOP_CAPS,
    _as_rng,
    _check_task,
    salient_tokens,
    split_sentences,
)

__all__ = [
    "drop_sentences",
    "truncate",
    "redundant_restatement",
    "shuffle_fragments",
    "split_fragment",
    "typos",
    "drop_facts",
    "cross_topic_merge",
    "NOISE_OPERATORS",
    "make_variants",
]


# --------------------------------------------------------------------------- #
# Noise operators: text -> text, deterministic given the generator
# --------------------------------------------------------------------------- #
def _tidy(text: str) -> str:
    """Repair spacing/punctuation after words were removed."""
    t = re.sub(r"\(\s*[,;:]?\s*\)", "", text)
    t = re.sub(
        r"\b(?:in|on|by|of|from|to|with|and|or|the|a|an|at|since|until|than|about|around|during|between|"
        r"for|as|into|against|near|under|after|before|via|among|within|such as)\s*(?=[,.;:)])",
        "",
        t,
        flags=re.IGNORECASE,
    )
    t = re.sub(r"\s+([,.;:!?)])", r"\1", t)
    t = re.sub(r"([,;:])(\s*[,;:.])+", lambda m: m.group(0)[-1], t)
    t = re.sub(r"(^|[.!?]\s+)[,;:]\s*", r"\1", t)
    t = re.sub(r"[ \t]{2,}", " ", t).strip()
    # capitalise sentence starts that lost their first word
    t = re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), t)
    return t


def drop_sentences(text: str, rng: np.random.Generator | int | None = None) -> str:
    """Remove 1..n-1 sentences (order kept): information loss.  Needs two sentences."""
    rng = _as_rng(rng)
    sents = split_sentences(text)
    if len(sents) < 2:
        return text
    n_drop = int(rng.integers(1, len(sents)))
    drop = set(int(i) for i in rng.choice(len(sents), size=n_drop, replace=False))
    return " ".join(s for i, s in enumerate(sents) if i not in drop)


def truncate(
    text: str, rng: np.random.Generator | int | None = None, min_frac: float = 0.3, max_frac: float = 0.8
) -> str:
    """Cut the text at a word boundary between ``min_frac`` and ``max_frac`` of its length."""
    rng = _as_rng(rng)
    text = text.strip()
    if len(text) < 12:
        return text
    cut = int(len(text) * rng.uniform(min_frac, max_frac))
    space = text.rfind(" ", 0, cut)
    if space > 0:
        cut = space
    out = text[:cut].rstrip(" ,;:-")
    return out if out and out != text else text


_RESTATE_PREFIXES = ("In other words, ", "That is, ", "Again, ", "To put it another way, ", "As noted, ")


def redundant_restatement(text: str, rng: np.random.Generator | int | None = None) -> str:
    """Say one sentence twice: verbatim, with its clauses reordered, or behind a filler
    such as "In other words," - redundancy without new information."""
    rng = _as_rng(rng)
    sents = split_sentences(text)
    if not sents:
        return text
    i = int(rng.integers(len(sents)))
    s = sents[i]
    style = int(rng.integers(3))
    clauses = [c.strip() for c in re.split(r",\s+", s.rstrip(".!?")) if c.strip()]
    if style == 1 and len(clauses) >= 2:
        k = int(rng.integers(1, len(clauses)))
        moved = clauses[k:] + clauses[:k]
        # the old first clause is now inside the sentence: "The term" -> "the term"
        head = clauses[0].split(" ", 1)
        if head[0].lower() in _STOP_CAPS:
            moved[len(clauses) - k] = " ".join([head[0].lower()] + head[1:])
        restated = ", ".join(moved)
        restated = restated[0].upper() + restated[1:] + "."
    elif style == 2 and len(s) > 1:
        prefix = _RESTATE_PREFIXES[int(rng.integers(len(_RESTATE_PREFIXES)))]
        restated = prefix + s[0].lower() + s[1:] if not s[:2].isupper() else prefix + s
    else:
        restated = s
    at = i + 1 if rng.random() < 0.5 else len(sents)
    return " ".join(sents[:at] + [restated] + sents[at:])


def shuffle_fragments(text: str, rng: np.random.Generator | int | None = None) -> str:
    """Put sentences (or, for a single sentence, its clauses / word groups) out of order."""
    rng = _as_rng(rng)
    units, sep = split_sentences(text), " "
    if len(units) < 2:
        units, sep = [c for c in re.split(r"(?<=[,;])\s+", text.strip()) if c], " "
    if len(units) < 2:
        words = text.split()
        if len(words) < 4:
            return text
        size = max(2, len(words) // 4)
        units = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    if len(units) < 2 or len(set(units)) < 2:
        return text
    for _ in range(10):
        perm = rng.permutation(len(units))
        if not np.array_equal(perm, np.arange(len(units))):
            break
    else:
        perm = np.roll(np.arange(len(units)), 1)
    out = sep.join(units[int(i)] for i in perm)
    return out if out != text else text


def split_fragment(
    text: str, rng: np.random.Generator | int | None = None, min_frac: float = 0.3, max_frac: float = 0.6
) -> str:
    """Keep only a fragment from the middle: a run of 30-60% of the words, not
    starting at the first word (a cut-out, where ``truncate`` keeps the head)."""
    rng = _as_rng(rng)
    words = text.split()
    if len(words) < 6:
        return text
    size = max(2, int(round(len(words) * rng.uniform(min_frac, max_frac))))
    size = min(size, len(words) - 1)
    start = int(rng.integers(1, len(words) - size + 1))
    return " ".join(words[start : start + size])


_KEY_NEIGHBOURS = {
    "a": "qwsz",
    "b": "vghn",
    "c": "xdfv",
    "d": "serfcx",
    "e": "wsdr",
    "f": "drtgvc",
    "g": "ftyhbv",
    "h": "gyujnb",
    "i": "ujko",
    "j": "huikmn",
    "k": "jiolm",
    "l": "kop",
    "m": "njk",
    "n": "bhjm",
    "o": "iklp",
    "p": "ol",
    "q": "wa",
    "r": "edft",
    "s": "awedxz",
    "t": "rfgy",
    "u": "yhji",
    "v": "cfgb",
    "w": "qase",
    "x": "zsdc",
    "y": "tghu",
    "z": "asx",
}


def _typo(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(1, len(word) - 1))  # keep the first letter: typos rarely hit it
    op = int(rng.integers(4))
    if op == 0 and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]  # swap
    if op == 1:
        return word[:i] + word[i] + word[i:]  # doubled letter
    if op == 2 and word[i].lower() in _KEY_NEIGHBOURS:
        nb = _KEY_NEIGHBOURS[word[i].lower()]
        c = nb[int(rng.integers(len(nb)))]
        return word[:i] + (c.upper() if word[i].isupper() else c) + word[i + 1 :]  # neighbouring key
    return word[:i] + word[i + 1 :]  # dropped letter


def typos(text: str, rng: np.random.Generator | int | None = None, rate: float = 0.05) -> str:
    """Character-level noise in about ``rate`` of the words of 4+ letters (at least one):
    swapped, doubled, dropped or neighbouring-key letters."""
    rng = _as_rng(rng)
    parts = re.split(r"(\W+)", text)
    cands = [i for i, p in enumerate(parts) if len(p) >= 4 and p.isalpha()]
    if not cands:
        return text
    m = max(1, int(rng.binomial(len(cands), min(max(rate, 0.0), 1.0))))
    for i in rng.choice(len(cands), size=min(m, len(cands)), replace=False):
        j = cands[int(i)]
        parts[j] = _typo(parts[j], rng)
    return "".join(parts)


_CLAUSE_RE = re.compile(
    r",\s+(?:which|who|whom|whose|where|when|while|although|including|such as|known as|especially|"
    r"particularly|i\.e\.|e\.g\.)\b[^,.;]*(?=[,.;])"
)
_ATTACH_RE = re.compile(
    r"\s+(?:in|at|on|of|by|from|to|with|into|near|under|against|the|and|or)\s+(?:the\s+)?$", re.IGNORECASE
)
_PREP_BEFORE_NUMBER = r"(?:(?:in|on|by|since|from|until|to|of|around|about|during|circa|c\.)\s+)?"


def drop_facts(text: str, rng: np.random.Generator | int | None = None, frac: float = 0.5) -> str:
    """Remove specifics: numbers and years (with their preposition), names, parenthetical
    remarks and subordinate clauses; each candidate goes with probability ``frac``
    (at least one).  The text is then tidied so it still reads as prose."""
    rng = _as_rng(rng)
    spans: list[tuple[int, int, str]] = []  # (start, end, replacement)
    for m in re.finditer(r"\s*\([^()]{1,200}\)", text):
        spans.append((m.start(), m.end(), ""))
    for m in _CLAUSE_RE.finditer(text):
        spans.append((m.start(), m.end(), ""))
    for m in re.finditer(rf"\b{_PREP_BEFORE_NUMBER}(?:1[0-9]{{3}}|20[0-2][0-9])\b(?![\w\-])", text, re.IGNORECASE):
        spans.append((m.start(), m.end(), ""))
    for m in re.finditer(r"(?<![\w.,\-])\d[\d,]*(?:\.\d+)?(?![\w\-])(?:\s*(?:%|percent|per cent))?", text):
        spans.append((m.start(), m.end(), "some"))
    # a name goes together with the word that attaches it ("in England", "by Royalists",
    # "the Diggers"), so the sentence still parses; names without one stay
    offset = 0
    for sent in split_sentences(text):
        pos = text.find(sent, offset)
        if pos < 0:
            continue
        offset = pos + len(sent)
        for tok in salient_tokens(sent):
            if tok.kind != "proper":
                continue
            m = _ATTACH_RE.search(sent[: tok.start])
            if m:
                spans.append((pos + m.start(), pos + tok.end, ""))
    if not spans:
        return text
    # keep non-overlapping spans, earliest first (longer first on ties)
    spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))
    chosen, last_end = [], -1
    for s in spans:
        if s[0] >= last_end:
            chosen.append(s)
            last_end = s[1]
    keep = rng.random(len(chosen)) < frac
    if not keep.any():
        keep[int(rng.integers(len(chosen)))] = True
    out, prev = [], 0
    for (start, end, repl), k in zip(chosen, keep):
        if not k:
            continue
        out.append(text[prev:start])
        out.append(repl if not repl else (" " + repl if start > 0 and text[start - 1] != " " else repl))
        prev = end
    out.append(text[prev:])
    result = _tidy("".join(out))
    return result if result and result != text else text


def cross_topic_merge(
    text: str, other_text: str, rng: np.random.Generator | int | None = None, max_sentences: int = 2
) -> str:
    """Splice 1-``max_sentences`` sentences of ``other_text`` (a semantically similar sample of
    another topic, chosen by the caller through embeddings) into ``text`` at random places."""
    rng = _as_rng(rng)
    other = split_sentences(other_text or "")
    if not other:
        return text
    sents = split_sentences(text) or [text.strip()]
    k = int(rng.integers(1, min(max_sentences, len(other)) + 1))
    picked = [other[int(i)] for i in sorted(rng.choice(len(other), size=k, replace=False))]
    for s in picked:
        at = int(rng.integers(len(sents) + 1))
        sents.insert(at, s)
    out = " ".join(sents)
    return out if out != text else text


NOISE_OPERATORS: dict[str, Callable[..., str]] = {
    "drop_sentences": drop_sentences,
    "truncate": truncate,
    "redundant_restatement": redundant_restatement,
    "shuffle_fragments": shuffle_fragments,
    "split_fragment": split_fragment,
    "typos": typos,
    "drop_facts": drop_facts,
}


# --------------------------------------------------------------------------- #
# Variants
# --------------------------------------------------------------------------- #
def _split_body(task: str, text: str) -> tuple[str, str, str]:
    """(prefix, body, suffix) of a sample: the operators edit the body (the answer of a
    QA, the statement of CS/TFQ, the quoted sentence or the question of an MCQ) and leave
    the scaffolding recognisable; a text that does not parse is all body."""
    text = text.strip()
    if task == "qa" and (m := re.match(r"(\s*Q:.*?\n\s*A:[ \t]*)(.*)$", text, re.DOTALL)):
        return m.group(1), m.group(2), ""
    if task == "cs" and (m := re.match(r"(\s*C:[^\n]*\n\s*S:[ \t]*)(.*)$", text, re.DOTALL)):
        return m.group(1), m.group(2), ""
    if task == "mcq":
        # the quoted cloze sentence of our writer, else the whole question
        m = re.match(r'(\s*Q:[^\n"]*")([^\n]*)("[ \t]*\n\s*A\).*)$', text, re.DOTALL)
        m = m or re.match(r"(\s*Q:[ \t]*)(.*?)(\n\s*A\).*)$", text, re.DOTALL)
        if m:
            return m.group(1), m.group(2), m.group(3)
    if task == "tfq" and (
        m := re.match(
            r"(\s*Q:[ \t]*(?:True or false[^:\n]*:[ \t]*)?)(.*?)(\n\s*Answer\s*:.*)$", text, re.DOTALL | re.IGNORECASE
        )
    ):
        return m.group(1), m.group(2), m.group(3)
    return "", text, ""


def _drop_option(suffix: str, rng: np.random.Generator) -> str:
    """MCQ: remove one wrong option (the letters then skip one)."""
    lines = suffix.split("\n")
    ans = re.search(r"Answer\s*:\s*\(?([A-D])", suffix)
    opts = [i for i, ln in enumerate(lines) if (m := _OPTION_RE.match(ln)) and (not ans or m.group(1) != ans.group(1))]
    if not opts:
        return suffix
    del lines[opts[int(rng.integers(len(opts)))]]
    return "\n".join(lines)


def _drop_answer(suffix: str, rng: np.random.Generator) -> str:
    """MCQ/TFQ: leave the answer out (incomplete reasoning)."""
    return re.sub(r"\n?\s*Answer\s*:[^\n]*\s*$", "", suffix, flags=re.IGNORECASE)


_STRUCTURAL_OPS: dict[str, dict[str, Callable[[str, np.random.Generator], str]]] = {
    "mcq": {"drop_option": _drop_option, "drop_answer": _drop_answer},
    "tfq": {"drop_answer": _drop_answer},
}


def make_variants(
    target: str,
    task: str,
    rng: np.random.Generator | int | None = None,
    n: int = 4,
    others: Sequence[str] = (),
    max_ops: int = 3,
    max_attempts: int | None = None,
    operators: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """``n`` distinct low-quality variants of ``target``: ``[(variant text, "op1+op2")]``.

    Each variant applies 1-``max_ops`` distinct operators in sequence to the sample's
    body (see ``_split_body``); MCQ/TFQ may also lose an option or the answer line.
    ``cross_topic_merge`` is available when ``others`` (samples of other topics, picked
    by the caller by embedding similarity) is non-empty.  Operators that leave the
    text unchanged are not named.  Every variant differs from the target and from the
    other variants; if the target is too short to yield ``n`` distinct variants within
    ``max_attempts`` (default 40·n), fewer are returned.  ``operators`` restricts the
    choice to those names (e.g. ``("typos", "cross_topic_merge")``, the surface noise
    added on top of LLM-degraded variants).
    """
    _check_task(task)
    rng = _as_rng(rng)
    prefix, body, suffix = _split_body(task, target)
    other_bodies = [_split_body(task, o)[1] for o in others if o and o.strip()]
    op_names = list(NOISE_OPERATORS) + (["cross_topic_merge"] if other_bodies else [])
    structural = _STRUCTURAL_OPS.get(task, {}) if suffix else {}
    op_names += list(structural)
    if operators is not None:
        known = set(NOISE_OPERATORS) | {"cross_topic_merge"} | set(_STRUCTURAL_OPS.get(task, {}))
        if set(operators) - known:
            raise ValueError(f"unknown noise operators {sorted(set(operators) - known)}; known: {sorted(known)}")
        op_names = [o for o in op_names if o in set(operators)]
        structural = {k: v for k, v in structural.items() if k in set(operators)}
        if not op_names:
            return []

    seen = {target.strip()}
    out: list[tuple[str, str]] = []
    attempts = 0
    limit = max_attempts if max_attempts is not None else 40 * max(n, 1)
    while len(out) < n and attempts < limit:
        attempts += 1
        k = int(rng.integers(1, min(max_ops, len(op_names)) + 1))
        chosen = [op_names[int(i)] for i in rng.choice(len(op_names), size=k, replace=False)]
        b, s, applied = body, suffix, []
        for name in chosen:
            if name in structural:
                new_s = structural[name](s, rng)
                if new_s != s:
                    s = new_s
                    applied.append(name)
                continue
            if name == "cross_topic_merge":
                other = other_bodies[int(rng.integers(len(other_bodies)))]
                new_b = cross_topic_merge(b, other, rng)
            else:
                new_b = NOISE_OPERATORS[name](b, rng)
            if new_b != b and new_b.strip():
                b = new_b
                applied.append(name)
        if not applied:
            continue
        variant = (prefix + b + s).strip()
        if variant in seen:
            continue
        seen.add(variant)
        out.append((variant, "+".join(applied)))
    return out
