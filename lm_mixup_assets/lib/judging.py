"""Rating through a persistent cache: a call that succeeded is never paid twice.

The cache is a DuckDB table keyed by a hash of (backend, model, rubric version,
rendered prompt). Only ``ok`` answers are stored, so failed rows are retried by
the next run. Results are written in batches as they arrive, so a run that
crashes half-way keeps what it already paid for.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pandas as pd

from .rubric import JudgeOutcome

CACHE_TABLE = "judge_cache"
CACHE_DDL = f"""
create table if not exists {CACHE_TABLE} (
    cache_key varchar primary key,
    backend varchar, model varchar, rubric_version varchar,
    rarity integer, complexity integer, informativeness integer, overall integer,
    raw_answer varchar, prompt_tokens bigint, completion_tokens bigint,
    created_at timestamp
)"""

# USD per million tokens (input, output), for the cost estimate in metadata.
PRICE_PER_MTOK = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00), "gpt-4.1-mini": (0.40, 1.60), "gpt-4.1": (2.00, 8.00)}

Connect = Callable[[], AbstractContextManager]
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

    @property
    def tokens(self) -> tuple[int, int]:
        """Tokens paid in this run (cache hits cost nothing)."""
        fresh = [o for o, hit in zip(self.outcomes, self.from_cache) if not hit]
        return sum(o.prompt_tokens for o in fresh), sum(o.completion_tokens for o in fresh)


def lookup_cached(connect: Connect, keys: list[str]) -> dict[str, JudgeOutcome]:
    if not keys:
        return {}
    with connect() as con:
        con.execute(CACHE_DDL)
        con.register("_keys", pd.DataFrame({"cache_key": list(dict.fromkeys(keys))}))
        df = con.execute(
            f"select c.* from {CACHE_TABLE} c join _keys k using (cache_key)"
        ).df()
        con.unregister("_keys")
    return {
        r.cache_key: JudgeOutcome(
            status="ok",
            scores={"rarity": int(r.rarity), "complexity": int(r.complexity), "informativeness": int(r.informativeness), "overall": int(r.overall)},
            raw_answer=r.raw_answer,
            prompt_tokens=int(r.prompt_tokens),
            completion_tokens=int(r.completion_tokens),
        )
        for r in df.itertuples()
    }


def store_cached(connect: Connect, items: list[tuple[str, JudgeOutcome]], backend: str, model: str,
                 rubric_version: str | dict[str, str]) -> None:
    """Persist the ``ok`` outcomes; ``rubric_version`` is one version or a {cache_key: version} map."""
    version_of = (lambda k: rubric_version[k]) if isinstance(rubric_version, dict) else (lambda k: rubric_version)
    rows = [
        {"cache_key": k, "backend": backend, "model": model, "rubric_version": version_of(k), **o.scores,
         "raw_answer": o.raw_answer, "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
         "created_at": pd.Timestamp.now("UTC").tz_localize(None)}
        for k, o in items if o.status == "ok" and o.scores
    ]
    if not rows:
        return
    with connect() as con:
        con.execute(CACHE_DDL)
        con.register("_new", pd.DataFrame(rows))
        con.execute(f"insert or replace into {CACHE_TABLE} by name select * from _new")
        con.unregister("_new")


def rate_with_cache(
    prompts: list[Any],
    keys: list[str],
    connect: Connect,
    rate_missing: RateFn,
    backend: str,
    model: str,
    rubric_version: str | Sequence[str],
    flush_every: int = 256,
    flush_seconds: float = 10.0,
    progress: Callable[[str], None] | None = None,
) -> CachedRating:
    """Answer from the cache where possible; rate the rest, persisting as results arrive.

    ``rubric_version``: one version for every row, or one per row (rows of one
    call may be judged under different rubrics, e.g. per task type).
    """
    if not isinstance(rubric_version, str):
        if len(rubric_version) != len(keys):
            raise ValueError(f"{len(rubric_version)} rubric versions for {len(keys)} rows")
        rubric_version = dict(zip(keys, rubric_version))
    cached = lookup_cached(connect, keys)
    outcomes: list[JudgeOutcome | None] = [cached.get(k) for k in keys]
    from_cache = [o is not None for o in outcomes]
    # Identical prompts within one run are rated once.
    todo_keys = list(dict.fromkeys(k for k, o in zip(keys, outcomes) if o is None))
    first_prompt = {}
    for k, p in zip(keys, prompts):
        first_prompt.setdefault(k, p)
    todo_prompts = [first_prompt[k] for k in todo_keys]
    if progress:
        progress(f"{len(keys) - sum(1 for o in outcomes if o is None)} of {len(keys)} rows answered from the judge cache; rating {len(todo_prompts)}")

    pending: list[tuple[str, JudgeOutcome]] = []
    done = 0
    last_flush = time.monotonic()
    started = time.monotonic()

    def on_result(i: int, outcome: JudgeOutcome) -> None:
        nonlocal done, last_flush
        done += 1
        pending.append((todo_keys[i], outcome))
        if len(pending) >= flush_every or time.monotonic() - last_flush > flush_seconds:
            store_cached(connect, pending, backend, model, rubric_version)
            pending.clear()
            last_flush = time.monotonic()
            if progress:
                rate = done / max(1e-9, time.monotonic() - started)
                progress(f"rated {done}/{len(todo_prompts)} ({rate:.1f} rows/s)")

    fresh = rate_missing(todo_prompts, on_result) if todo_prompts else []
    store_cached(connect, pending, backend, model, rubric_version)
    by_key = dict(zip(todo_keys, fresh))
    final = [o if o is not None else by_key[k] for k, o in zip(keys, outcomes)]
    return CachedRating(outcomes=final, from_cache=from_cache, requests_made=len(todo_prompts))
