"""The judge's rubric: rendering the prompt, parsing the answer, compressing Overall.

The rubric text lives in ``rubrics/<version>.txt`` so a change of wording is a
change of version, and the judge cache (keyed by version) never mixes the two.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

RUBRIC_VERSION = "pool_quality_v1"
SCORE_KEYS = ("rarity", "complexity", "informativeness", "overall")
SYSTEM_PROMPT = "You are a strict, consistent data-quality judge. You answer only with JSON."

_RUBRIC_DIR = Path(__file__).with_name("rubrics")


@lru_cache(maxsize=None)
def load_rubric(version: str = RUBRIC_VERSION) -> str:
    path = _RUBRIC_DIR / f"{version}.txt"
    if not path.exists():
        known = sorted(p.stem for p in _RUBRIC_DIR.glob("*.txt"))
        raise ValueError(f"unknown rubric version {version!r}; known: {known}")
    return path.read_text(encoding="utf-8")


def render_judge_prompt(prompt: str, completion: str, version: str = RUBRIC_VERSION) -> str:
    # str.replace, not str.format: the rubric contains literal JSON braces.
    return load_rubric(version).replace("{prompt}", prompt).replace("{completion}", completion)


def judge_cache_key(backend: str, model: str, rubric_version: str, rendered_prompt: str) -> str:
    """Hash of everything that determines a judge answer (the "pay once" key)."""
    h = hashlib.sha256()
    for part in (backend, model, rubric_version, rendered_prompt):
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


class JudgeParseError(ValueError):
    """The judge answered, but not with four integers 1-10 in a JSON object."""


_JSON_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)


def parse_judge_answer(text: str) -> dict[str, int]:
    """Return {rarity, complexity, informativeness, overall} or raise JudgeParseError.

    Accepts the object alone or wrapped in prose / a ```json fence (models do
    that), keys in any case. Values must be integers 1-10: an int, or a string
    or float holding one exactly. Anything else is a parse error, never a guess.
    """
    if not isinstance(text, str) or not text.strip():
        raise JudgeParseError("empty answer")
    candidates = [text.strip()] + _JSON_OBJECT.findall(text)
    last_error = "no JSON object found"
    for candidate in candidates:
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            last_error = f"JSON is a {type(obj).__name__}, not an object"
            continue
        try:
            return _validate_scores(obj)
        except JudgeParseError as exc:
            last_error = str(exc)
    raise JudgeParseError(f"{last_error}; answer starts {text.strip()[:80]!r}")


def _validate_scores(obj: dict) -> dict[str, int]:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    scores: dict[str, int] = {}
    for key in SCORE_KEYS:
        if key not in lowered:
            raise JudgeParseError(f"missing key {key!r}")
        value = lowered[key]
        if isinstance(value, bool):
            raise JudgeParseError(f"{key} is a boolean")
        if isinstance(value, str):
            value = value.strip()
            if not re.fullmatch(r"-?\d+(\.0+)?", value):
                raise JudgeParseError(f"{key}={value!r} is not an integer")
            value = float(value)
        if isinstance(value, float):
            if not value.is_integer():
                raise JudgeParseError(f"{key}={value} is not an integer")
            value = int(value)
        if not isinstance(value, int):
            raise JudgeParseError(f"{key} has type {type(value).__name__}")
        if not 1 <= value <= 10:
            raise JudgeParseError(f"{key}={value} outside 1-10")
        scores[key] = value
    return scores


def compress_overall(overall: int) -> int:
    """METHOD.md §1: min(9, max(4, overall)) - 4, giving 0-5."""
    return min(9, max(4, int(overall))) - 4


@dataclass
class JudgeOutcome:
    """One judged row. ``scores`` is set only when ``status == 'ok'``."""

    status: str  # ok | parse_error | api_error
    scores: dict[str, int] | None = None
    raw_answer: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    latency_s: float = 0.0
