"""An offline, deterministic stand-in for the LLM judge (the ``heuristic`` backend).

It scores the same four criteria on the same 1-10 scale from text features, so
the demo's high/low split follows real differences between rows (a one-word
reply vs. a worked, structured answer) rather than chance. It is a proxy, not a
judge of correctness: use the ``openai`` backend for real ratings.

Features (all from the completion unless said otherwise):
- length: log2 of the word count (a 1-word reply scores ~1, 100 words ~7);
- lexical richness: distinct/total words, damped for very short texts;
- structure: several lines, list items, code (def/return/braces/semicolons);
- rarity: share of long words (>= 8 letters), digits and code tokens;
- complexity: the prompt's length and structure plus the answer's structure;
- completeness: the answer ends cleanly, is not a copy of the prompt, and is
  not tiny next to a long prompt.
"""

from __future__ import annotations

import math
import re

HEURISTIC_MODEL = "heuristic-v1"

_WORD = re.compile(r"[A-Za-z0-9_']+")
_CODE = re.compile(r"(^|\n)\s*(def |class |return\b|for .+:|if .+:|import |#include|function\b)|[{};]\s*($|\n)|```")
_LIST = re.compile(r"(^|\n)\s*([-*•]|\d+[.)])\s+")


def _clip(x: float) -> int:
    return int(min(10, max(1, round(x))))


def text_features(prompt: str, completion: str) -> dict[str, float]:
    words = _WORD.findall(completion)
    prompt_words = _WORD.findall(prompt)
    n = len(words)
    lines = [ln for ln in completion.splitlines() if ln.strip()]
    long_words = sum(1 for w in words if len(w) >= 8 and not w.isdigit())
    digits = sum(1 for w in words if any(c.isdigit() for c in w))
    distinct = len({w.lower() for w in words})
    stripped = completion.strip()
    clean_end = bool(stripped) and (stripped[-1] in ".!?)]}\"'`" or bool(_CODE.search(completion)))
    copy_of_prompt = stripped.lower() in prompt.lower() if stripped else True
    return {
        "words": n,
        "prompt_words": len(prompt_words),
        "lines": len(lines),
        "richness": (distinct / n) * min(1.0, n / 15) if n else 0.0,
        "long_share": long_words / n if n else 0.0,
        "digit_share": digits / n if n else 0.0,
        "code": 1.0 if _CODE.search(completion) else 0.0,
        "prompt_code": 1.0 if _CODE.search(prompt) else 0.0,
        "list": 1.0 if len(_LIST.findall(completion)) >= 2 else 0.0,
        "clean_end": 1.0 if clean_end else 0.0,
        "copy_of_prompt": 1.0 if copy_of_prompt else 0.0,
        "answer_ratio": n / max(1, len(prompt_words)),
    }


def score_pair(prompt: str, completion: str) -> dict[str, int]:
    """Deterministic Rarity/Complexity/Informativeness/Overall, integers 1-10."""
    f = text_features(prompt, completion)
    length = math.log2(1 + f["words"])  # 0 .. ~10
    structure = min(2.0, (f["lines"] >= 3) + f["list"] + f["code"])
    informativeness = 0.5 + 0.75 * length + 2.0 * f["richness"] + 0.6 * structure
    complexity = (
        0.5
        + 0.55 * math.log2(1 + f["prompt_words"])
        + 0.35 * length
        + 1.2 * max(f["code"], f["prompt_code"])
        + 0.4 * f["list"]
    )
    rarity = 1.0 + 14.0 * f["long_share"] + 4.0 * min(f["digit_share"], 0.3) + 1.5 * f["code"] + 0.25 * length
    completeness = (
        f["clean_end"]
        - 2.0 * f["copy_of_prompt"]
        - (1.0 if f["answer_ratio"] < 0.15 and f["prompt_words"] > 20 else 0.0)
    )
    overall = 0.55 * informativeness + 0.25 * complexity + 0.2 * rarity + 0.6 * completeness + 0.7
    return {
        "rarity": _clip(rarity),
        "complexity": _clip(complexity),
        "informativeness": _clip(informativeness),
        "overall": _clip(overall),
    }
