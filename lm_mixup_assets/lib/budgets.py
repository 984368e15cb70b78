"""Failure budgets: a run is green only when its calls to a judge or a generator mostly succeeded.

Pure logic (no Dagster import): :func:`assess` counts the failed rows of one
batch of calls and says whether their share exceeds the budget;
``lm_mixup_assets/budgets.py`` turns an exceeded budget into a ``dg.Failure``
after the asset has written its rows (the failed rows, with their status, are
the evidence; the successful ones are already in the judge or generation
cache, so a re-run pays only for the failures). See docs/method.md,
"Failure budgets".

What counts as failed is the caller's choice (``failed_statuses``): for a
judge, ``api_error`` and ``parse_error`` (an answer that still did not parse
after the re-asks is a failed call: it carries no score); for a generator,
``api_error`` (and an answer that stayed empty); a distiller's answer that
does not parse into a pair is a quality outcome with its own, separate budget.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["BudgetReport", "assess", "assess_outcomes", "describe", "outcome_details", "redact"]

# Looks like an OpenAI-style key, also when an error message echoes part of one.
_KEYISH = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}")
SAMPLES = 3
_SAMPLE_CHARS = 240


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every given secret value and anything shaped like an ``sk-`` key replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:  # shorter values ("k", "EMPTY"?) would blank ordinary words
            text = text.replace(secret, "***")
    return _KEYISH.sub("sk-***", text)


@dataclass(frozen=True)
class BudgetReport:
    """The failed share of one batch of calls against its budget."""

    what: str  # e.g. "judge calls of rated_pool[humaneval]"
    total: int
    failed: int
    max_fraction: float
    by_status: dict[str, int] = field(default_factory=dict)  # failed rows per status
    samples: tuple[str, ...] = ()  # up to three failures, redacted
    setting: str = "max_failed_fraction"  # the config field that holds the budget

    @property
    def fraction(self) -> float:
        return self.failed / self.total if self.total else 0.0

    @property
    def exceeded(self) -> bool:
        return self.fraction > self.max_fraction

    def summary(self) -> str:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(self.by_status.items())) or "none failed"
        return (
            f"{self.what}: {self.failed} of {self.total} failed ({self.fraction:.1%}: {statuses}); "
            f"budget {self.setting}={self.max_fraction:g}"
        )


def assess(
    what: str,
    statuses: Sequence[str],
    details: Sequence[str | None],
    failed_statuses: Iterable[str],
    max_fraction: float,
    secrets: Iterable[str | None] = (),
    setting: str = "max_failed_fraction",
) -> BudgetReport:
    """Count the rows whose status is in ``failed_statuses``; ``details[i]`` (an error text or the
    answer that did not parse) is kept, redacted and shortened, for the first three failures."""
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"a failure budget is a fraction in [0, 1], got {max_fraction} for {what}")
    if len(statuses) != len(details):
        raise ValueError(f"{len(statuses)} statuses but {len(details)} details for {what}")
    failed_statuses = set(failed_statuses)
    secrets = list(secrets)
    by_status: dict[str, int] = {}
    samples: list[str] = []
    for status, detail in zip(statuses, details):
        if status not in failed_statuses:
            continue
        by_status[status] = by_status.get(status, 0) + 1
        if len(samples) < SAMPLES:
            text = redact(str(detail if detail is not None else "(no detail)"), secrets)
            samples.append(f"{status}: {text[:_SAMPLE_CHARS]}")
    return BudgetReport(
        what=what,
        total=len(statuses),
        failed=sum(by_status.values()),
        max_fraction=max_fraction,
        by_status=by_status,
        samples=tuple(samples),
        setting=setting,
    )


def describe(reports: Sequence[BudgetReport]) -> str:
    """The failure message for the exceeded ones among ``reports``: counts, rates and samples."""
    lines = []
    for r in reports:
        if not r.exceeded:
            continue
        lines.append(r.summary())
        lines.extend(f"  e.g. {s}" for s in r.samples)
    lines.append(
        "The rows are written with their status; successful answers are cached, so fixing the cause "
        "and re-running pays only for the failed rows; raising the budget accepts them as they are."
    )
    return "\n".join(lines)


JUDGE_FAILED = ("api_error", "parse_error")
GENERATOR_FAILED = ("api_error", "parse_error")  # the openai generator re-asks an empty answer, then gives up


def outcome_details(outcomes: Sequence) -> list[str | None]:
    """Per outcome (``rubric.JudgeOutcome`` or ``generation.GenerationOutcome``), what a failure sample shows: the error and, for an
    answer that did not parse, its first characters."""
    details = []
    for o in outcomes:
        if o.status == "ok":
            details.append(None)
            continue
        text = o.error or "(no error text)"
        if o.raw_answer and o.raw_answer.strip()[:40] not in text:
            text += f"; answer: {o.raw_answer.strip()[:120]!r}"
        details.append(text)
    return details


def assess_outcomes(
    what: str,
    outcomes: Sequence,
    max_fraction: float,
    secrets: Iterable[str | None] = (),
    failed_statuses: Iterable[str] = JUDGE_FAILED,
    setting: str = "max_failed_fraction",
) -> BudgetReport:
    """:func:`assess` over call outcomes (``JudgeOutcome`` or ``GenerationOutcome``)."""
    return assess(
        what, [o.status for o in outcomes], outcome_details(outcomes), failed_statuses, max_fraction, secrets, setting
    )
