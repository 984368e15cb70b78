"""Rating through a persistent cache: a call that succeeded is never paid twice.

The cache is a DuckDB table keyed by a hash of (backend, model, rubric version,
rendered prompt). Only ``ok`` answers are stored, so failed rows are retried by
the next run. A background :class:`CacheWriter` commits answers in small
batches as they arrive: an answer is durable within ``flush_seconds`` (0.5 s)
or one concurrency's worth of answers, whichever comes first, so even a
``kill -9`` loses at most the answers of that last moment (see docs/method.md).
"""

from __future__ import annotations

import threading
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
    cache_writes: int = 0  # commits to judge_cache during this call
    cache_write_seconds: float = 0.0

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


# Commit cadence: an answer reaches the cache once its batch holds this many answers
# (None: the rating client's concurrency, i.e. one wave of requests) or its oldest answer is this old.
DEFAULT_FLUSH_ROWS = 16
DEFAULT_FLUSH_SECONDS = 0.5
# A commit opens, writes and closes the warehouse (~20-100 ms, mostly fixed cost); at high answer
# rates commits at least this far apart carry more rows each, so committing never slows the rating down.
DEFAULT_MIN_COMMIT_INTERVAL_S = 0.25


class CacheWriter:
    """Commits results on a background thread, batch by batch, so paid answers survive a crash.

    A batch is written as soon as it holds ``max_rows`` items or its oldest item is
    ``max_delay_s`` old, but at most one write per ``min_interval_s``; one write is
    in flight at a time and everything that arrives meanwhile goes into the next
    one, so a slow write (another process holding the DuckDB lock) makes batches
    bigger instead of blocking the caller. An item is therefore durable within
    ``max_delay_s`` plus one write, sooner when ``max_rows`` items are waiting.
    ``add`` never touches the database: it is safe on an event loop. ``close``
    writes what is left and raises the first write error, if any. Counters
    (``writes``, ``rows_written``, ``write_seconds``) are for the benchmark.
    """

    def __init__(self, write: Callable[[list], None], max_rows: int = DEFAULT_FLUSH_ROWS,
                 max_delay_s: float = DEFAULT_FLUSH_SECONDS, min_interval_s: float = DEFAULT_MIN_COMMIT_INTERVAL_S,
                 name: str = "cache-writer"):
        if max_rows < 1 or max_delay_s <= 0 or not 0 <= min_interval_s <= max_delay_s:
            raise ValueError("CacheWriter needs max_rows >= 1 and 0 <= min_interval_s <= max_delay_s > 0, got "
                             f"{max_rows}, {min_interval_s}, {max_delay_s}")
        self._write = write
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.min_interval_s = min_interval_s
        self._last_write_end = float("-inf")
        self._pending: list = []
        self._oldest = 0.0
        self._closing = False
        self._error: Exception | None = None
        self._cond = threading.Condition()
        self.writes = 0
        self.rows_written = 0
        self.write_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, item: Any) -> None:
        with self._cond:
            if self._error is not None:
                # Stop paying for answers that cannot be stored; close() reports the cause.
                raise RuntimeError(f"the cache writer failed: {self._error}") from self._error
            first = not self._pending
            if first:
                self._oldest = time.monotonic()
            self._pending.append(item)
            if first or len(self._pending) >= self.max_rows:  # first: the thread starts its max_delay_s clock
                self._cond.notify()

    def _seconds_until_due(self) -> float | None:
        """0 when a write is due now, else how long to wait (None: until an item arrives)."""
        if not self._pending:
            return None
        if self._closing:
            return 0.0
        now = time.monotonic()
        trigger = 0.0 if len(self._pending) >= self.max_rows else self._oldest + self.max_delay_s - now
        return max(trigger, self._last_write_end + self.min_interval_s - now, 0.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while (wait := self._seconds_until_due()) != 0.0:
                    if self._closing and not self._pending:
                        return
                    self._cond.wait(wait if wait is None else max(wait, 0.001))
                batch, self._pending = self._pending, []
            started = time.perf_counter()
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001 - any write failure is kept for close(); the batch stays pending
                with self._cond:
                    self._error = exc
                    self._pending = batch + self._pending
                return
            self._last_write_end = time.monotonic()
            self.write_seconds += time.perf_counter() - started
            self.writes += 1
            self.rows_written += len(batch)

    def close(self) -> None:
        """Write what is pending (also after a writer error: one last try) and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        if self._pending:
            batch, self._pending = self._pending, []
            self._write(batch)  # raises if the database is still unwritable
            self.writes += 1
            self.rows_written += len(batch)
        elif self._error is not None:
            raise self._error


def concurrency_of(rate_fn: Callable) -> int | None:
    """The ``concurrency`` of the client whose bound method ``rate_fn`` is, if it has one."""
    value = getattr(getattr(rate_fn, "__self__", None), "concurrency", None)
    return value if isinstance(value, int) and value > 0 else None


def store_cached(connect: Connect, items: list[tuple[str, JudgeOutcome]], backend: str, model: str,
                 rubric_version: str | dict[str, str], ensure_table: bool = True) -> None:
    """Persist the ``ok`` outcomes; ``rubric_version`` is one version or a {cache_key: version} map.

    ``ensure_table=False`` skips the ``create table if not exists`` (the caller already ran it)."""
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
        if ensure_table:
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
    flush_every: int | None = None,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    progress: Callable[[str], None] | None = None,
    progress_seconds: float = 10.0,
) -> CachedRating:
    """Answer from the cache where possible; rate the rest, committing answers as they arrive.

    ``rubric_version``: one version for every row, or one per row (rows of one
    call may be judged under different rubrics, e.g. per task type).
    ``flush_every`` / ``flush_seconds``: the commit cadence of :class:`CacheWriter`;
    ``flush_every=None`` = the client's concurrency (16 when it has none).
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
    if not todo_prompts:
        return CachedRating(outcomes=list(outcomes), from_cache=from_cache, requests_made=0)

    done = 0
    started = last_progress = time.monotonic()
    # lookup_cached created the table: commits skip the DDL.
    writer = CacheWriter(lambda batch: store_cached(connect, batch, backend, model, rubric_version, ensure_table=False),
                         max_rows=flush_every or concurrency_of(rate_missing) or DEFAULT_FLUSH_ROWS,
                         max_delay_s=flush_seconds, name="judge-cache-writer")

    def on_result(i: int, outcome: JudgeOutcome) -> None:
        nonlocal done, last_progress
        done += 1
        if outcome.status == "ok" and outcome.scores:
            writer.add((todo_keys[i], outcome))
        if progress and time.monotonic() - last_progress > progress_seconds:
            last_progress = time.monotonic()
            progress(f"rated {done}/{len(todo_prompts)} ({done / max(1e-9, last_progress - started):.1f} rows/s)")

    try:
        fresh = rate_missing(todo_prompts, on_result)
    finally:
        writer.close()  # also when rating failed: what was paid for is kept
    by_key = dict(zip(todo_keys, fresh))
    final = [o if o is not None else by_key[k] for k, o in zip(keys, outcomes)]
    return CachedRating(outcomes=final, from_cache=from_cache, requests_made=len(todo_prompts),
                        cache_writes=writer.writes, cache_write_seconds=writer.write_seconds)
