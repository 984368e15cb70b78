"""Rating through a persistent cache: a call that succeeded is never paid twice.

The judge cache is a DuckDB table keyed by a hash of (backend, model, rubric
version, rendered prompt), written through :mod:`.cache` (only ``ok`` answers
are stored, committed as they arrive, so a ``kill -9`` loses at most the
answers of its last moment).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cache import DEFAULT_FLUSH_SECONDS, CacheTable, Connect, answer_with_cache
from .rubric import JudgeOutcome

CACHE_DDL = """
create table if not exists judge_cache (
    cache_key varchar,
    backend varchar, model varchar, rubric_version varchar,
    rarity integer, complexity integer, informativeness integer, overall integer,
    raw_answer varchar, prompt_tokens bigint, completion_tokens bigint,
    created_at timestamp
)"""

JUDGE_CACHE = CacheTable(
    "judge_cache",
    CACHE_DDL,
    lambda r: JudgeOutcome(
        status="ok",
        scores={
            "rarity": int(r.rarity),
            "complexity": int(r.complexity),
            "informativeness": int(r.informativeness),
            "overall": int(r.overall),
        },
        raw_answer=r.raw_answer,
        prompt_tokens=int(r.prompt_tokens),
        completion_tokens=int(r.completion_tokens),
    ),
)

# USD per million tokens (input, output), for the cost estimate in metadata.
PRICE_PER_MTOK = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
}

# Rates rendered prompts (strings or rubric.JudgeRequest), reporting each outcome as it arrives.
RateFn = Callable[[list[Any], Callable[[int, JudgeOutcome], None]], list[JudgeOutcome]]


def estimate_cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    price = PRICE_PER_MTOK.get(model)
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


@dataclass
class CachedRating:
    outcomes: list[JudgeOutcome]
    from_cache: list[bool]
    requests_made: int = 0
    stats: dict = field(default_factory=dict)
    cache_writes: int = 0  # commits to judge_cache during this call
    cache_write_seconds: float = 0.0

    @property
    def tokens(self) -> tuple[int, int]:
        """Tokens paid in this run (cache hits cost nothing)."""
        fresh = [o for o, hit in zip(self.outcomes, self.from_cache) if not hit]
        return sum(o.prompt_tokens for o in fresh), sum(o.completion_tokens for o in fresh)


def rate_with_cache(
    prompts: list[Any],
    keys: list[str],
    connect: Connect,
    rate_missing: RateFn,
    backend: str,
    model: str,
    rubric_version: str | Sequence[str],
    flush_every: int | None = None,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    progress: Callable[[str], None] | None = None,
    progress_seconds: float = 10.0,
) -> CachedRating:
    """Answer from the judge cache where possible; rate the rest, committing answers as they arrive.

    ``rubric_version``: one version for every row, or one per row (rows of one
    call may be judged under different rubrics, e.g. per task type).
    ``flush_every`` / ``flush_seconds``: the commit cadence of :class:`~.cache.CacheWriter`;
    ``flush_every=None`` = the client's concurrency (16 when it has none).
    """
    if isinstance(rubric_version, str):
        version_of = dict.fromkeys(keys, rubric_version)
    else:
        if len(rubric_version) != len(keys):
            raise ValueError(f"{len(rubric_version)} rubric versions for {len(keys)} rows")
        version_of = dict(zip(keys, rubric_version))

    def row_of(key: str, o: JudgeOutcome) -> dict | None:
        if o.status != "ok" or not o.scores:
            return None  # failures are not cached: the next run asks again
        return {
            "backend": backend,
            "model": model,
            "rubric_version": version_of[key],
            **o.scores,
            "raw_answer": o.raw_answer,
            "prompt_tokens": o.prompt_tokens,
            "completion_tokens": o.completion_tokens,
        }

    result = answer_with_cache(
        prompts,
        keys,
        connect,
        JUDGE_CACHE,
        rate_missing,
        row_of,
        flush_every=flush_every,
        flush_seconds=flush_seconds,
        progress=progress,
        progress_seconds=progress_seconds,
        started_message=lambda hits, rows, todo: f"{hits} of {rows} rows answered from the judge cache; rating {todo}",
        progress_message=lambda done, todo, rate: f"rated {done}/{todo} ({rate:.1f} rows/s)",
    )
    return CachedRating(
        outcomes=result.outcomes,
        from_cache=result.from_cache,
        requests_made=result.requests_made,
        cache_writes=result.cache_writes,
        cache_write_seconds=result.cache_write_seconds,
    )
