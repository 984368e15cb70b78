"""The judge's rubrics: versions, rendering the request, parsing the answer, compressing Overall.

A rubric version fixes the whole judge request: the system message (or none)
and the user message built around one row. Versions are defined in
``rubrics/rubrics.yaml`` (long texts in ``rubrics/<file>.txt``), so a change of
wording is a change of version, and the judge cache (keyed by version) never
mixes the two. See docs/method.md, "Judge rubrics":

- ``pool_quality_v1``: our own pool rubric (the demo's);
- ``ds2``: DS2's pool prompt, verbatim (the paper profile's pool rubric);
- ``per_task_<qa|mcq|para|tfq|cs>``: the reference's re-rating rubric for one
  generated sample body; ``per_task_qa_pair`` the same QA rubric on a
  (question, answer) pair, as a distilled pair is rated.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from .generation import GenerationOutcome

RUBRIC_VERSION = "pool_quality_v1"
SCORE_KEYS = ("rarity", "complexity", "informativeness", "overall")
# Accepted spellings of the overall score (compared lower-cased): ours, and DS2's / the reference's.
OVERALL_ALIASES = ("overall", "overall rating")
# The system message of pool_quality_v1, also used for a bare string prompt (no rubric attached).
SYSTEM_PROMPT = "You are a strict, consistent data-quality judge. You answer only with JSON."

_RUBRIC_DIR = Path(__file__).with_name("rubrics")
_REGISTRY_FILE = _RUBRIC_DIR / "rubrics.yaml"
_PLACEHOLDER = re.compile(r"\{(prompt|completion)\}")

# MIXTURE / distiller task names -> the per-task re-rating rubric of the reference.
_TASK_RUBRICS = {
    "qa": "per_task_qa",
    "mcq": "per_task_mcq",
    "tfq": "per_task_tfq",
    "cs": "per_task_cs",
    "paragraph": "per_task_para",
    "para": "per_task_para",
}


@dataclass(frozen=True)
class JudgeRequest:
    """What one judge call sends: an optional system message and the user message."""

    system: str | None
    user: str

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [*head, {"role": "user", "content": self.user}]


@dataclass(frozen=True)
class Rubric:
    version: str
    description: str
    system: str | None
    template: str  # the user message, with {prompt} and {completion} still to fill
    source: str = ""
    licence: str = ""

    def render(self, prompt: str, completion: str) -> JudgeRequest:
        # One pass over the template only: braces inside the row's text stay literal.
        values = {"prompt": prompt, "completion": completion}
        return JudgeRequest(self.system, _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template))


@lru_cache(maxsize=1)
def _registry() -> dict[str, Rubric]:
    doc = yaml.safe_load(_REGISTRY_FILE.read_text(encoding="utf-8"))
    rubrics = {}
    for version, entry in doc.items():
        template = entry["user"]
        if "instructions_file" in entry:
            # newline="" keeps the file's bytes exactly (ds2.txt is verbatim, whitespace included).
            with open(_RUBRIC_DIR / entry["instructions_file"], encoding="utf-8", newline="") as fh:
                template = template.replace("{instructions}", fh.read())
        rubrics[version] = Rubric(
            version=version,
            description=str(entry.get("description", "")),
            system=entry.get("system"),
            template=template,
            source=str(entry.get("source", "")),
            licence=str(entry.get("licence", "")),
        )
    return rubrics


def known_rubrics() -> list[str]:
    return sorted(_registry())


def get_rubric(version: str = RUBRIC_VERSION) -> Rubric:
    rubrics = _registry()
    if version not in rubrics:
        raise ValueError(f"unknown rubric version {version!r}; known: {sorted(rubrics)} (defined in {_REGISTRY_FILE})")
    return rubrics[version]


def load_rubric(version: str = RUBRIC_VERSION) -> str:
    """The user-message template of a version (placeholders unfilled)."""
    return get_rubric(version).template


def per_task_rubric(task: str) -> str:
    """The reference's re-rating rubric version for one task type's sample body (qa, mcq, tfq, cs, paragraph)."""
    if task not in _TASK_RUBRICS:
        raise ValueError(f"no per-task rubric for task {task!r}; known tasks: {sorted(_TASK_RUBRICS)}")
    return _TASK_RUBRICS[task]


def render_judge_request(prompt: str, completion: str, version: str = RUBRIC_VERSION) -> JudgeRequest:
    return get_rubric(version).render(prompt, completion)


def render_judge_prompt(prompt: str, completion: str, version: str = RUBRIC_VERSION) -> str:
    """The user message the judge gets for one row under ``version``."""
    return render_judge_request(prompt, completion, version).user


def judge_cache_key(
    backend: str, model: str, rubric_version: str, rendered_prompt: str, temperature: float = 0.0
) -> str:
    """Hash of everything that determines a judge answer (the "pay once" key).

    The version stands for the system message. A non-zero sampling temperature
    is part of the key; 0 adds nothing, so keys made before it was configurable
    stay valid.
    """
    h = hashlib.sha256()
    parts = [backend, model, rubric_version, rendered_prompt]
    if temperature:
        parts.append(f"temperature={float(temperature)!r}")
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


class JudgeParseError(ValueError):
    """The judge answered, but not with four integers 1-10 in a JSON object."""


_JSON_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)


def parse_judge_answer(text: str) -> dict[str, int]:
    """Return {rarity, complexity, informativeness, overall} or raise JudgeParseError.

    Accepts the object alone or wrapped in prose / a ```json fence (models do
    that), keys in any case; the overall score as ``Overall`` (ours) or
    ``Overall rating`` (DS2 and the reference's re-rating rubric). Values must
    be integers 1-10: an int, or a string or float holding one exactly.
    Anything else is a parse error, never a guess.
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
    overall_keys = [k for k in OVERALL_ALIASES if k in lowered]
    if len(overall_keys) > 1:
        raise JudgeParseError("both 'Overall' and 'Overall rating' given; ambiguous")
    if overall_keys:
        lowered["overall"] = lowered[overall_keys[0]]
    scores: dict[str, int] = {}
    for key in SCORE_KEYS:
        if key not in lowered:
            raise JudgeParseError(f"missing key {key!r}" + (" (or 'overall rating')" if key == "overall" else ""))
        scores[key] = check_score(key, lowered[key])
    return scores


def check_score(key: str, value: object, low: int = 1, high: int = 10) -> int:
    """``value`` as an integer in [low, high], or JudgeParseError saying why not."""
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
    if not low <= value <= high:
        raise JudgeParseError(f"{key}={value} outside {low}-{high}")
    return value


def compress_overall(overall: int) -> int:
    """docs/method.md: min(9, max(4, overall)) - 4, giving 0-5."""
    return min(9, max(4, int(overall))) - 4


@dataclass
class JudgeOutcome(GenerationOutcome):
    """One judged row: the judge's generated answer, and its ``scores``, set only when ``status == 'ok'``."""

    scores: dict[str, int] | None = None
