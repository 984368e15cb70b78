"""Write-through caches in the warehouse: an answer that was paid for is never paid twice.

One implementation for every cache table (``judge_cache``, ``generation_cache``):
a table is keyed by a hash of everything that decides an answer, only
successful answers are stored, so failed rows are asked again by the next run.
A background :class:`CacheWriter` commits answers in small batches as they
arrive: an answer is durable within ``flush_seconds`` (0.5 s) or one
concurrency's worth of answers, whichever comes first, so even a ``kill -9``
loses at most the answers of that last moment (see docs/method.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lm_mixup_assets.lib import warehouse as wh

Connect = Callable[[], AbstractContextManager]
# Answers the requests not in the cache, reporting each (index, outcome) as it arrives.
AnswerFn = Callable[[list[Any], Callable[[int, Any], None]], list[Any]]

# Commit cadence: an answer reaches the cache once its batch holds this many answers
# (None: the client's concurrency, i.e. one wave of requests) or its oldest answer is this old.
DEFAULT_FLUSH_ROWS = 16
DEFAULT_FLUSH_SECONDS = 0.5
# A commit opens, writes and closes the warehouse (~20-100 ms, mostly fixed cost); at high answer
# rates commits at least this far apart carry more rows each, so committing never slows the calls down.
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

    def __init__(
        self,
        write: Callable[[list], None],
        max_rows: int = DEFAULT_FLUSH_ROWS,
        max_delay_s: float = DEFAULT_FLUSH_SECONDS,
        min_interval_s: float = DEFAULT_MIN_COMMIT_INTERVAL_S,
        name: str = "cache-writer",
    ):
        if max_rows < 1 or max_delay_s <= 0 or not 0 <= min_interval_s <= max_delay_s:
            raise ValueError(
                "CacheWriter needs max_rows >= 1 and 0 <= min_interval_s <= max_delay_s > 0, got "
                f"{max_rows}, {min_interval_s}, {max_delay_s}"
            )
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


def concurrency_of(answer_fn: Callable) -> int | None:
    """The ``concurrency`` of the client whose bound method ``answer_fn`` is, if it has one."""
    value = getattr(getattr(answer_fn, "__self__", None), "concurrency", None)
    return value if isinstance(value, int) and value > 0 else None


@dataclass(frozen=True)
class CacheTable:
    """One cache table: its name, its DDL (a ``cache_key`` column, no key constraint) and how a row reads back."""

    name: str
    ddl: str
    from_row: Callable[[Any], Any]  # a row (pandas itertuples) -> the cached outcome

    def lookup(self, connect: Connect, keys: list[str]) -> dict[str, Any]:
        """The cached outcome of each of ``keys`` that has one (creates the table; nothing to do for no keys)."""
        if not keys:
            return {}
        with connect() as con:
            con.execute(self.ddl)
            con.register("_keys", pd.DataFrame({"cache_key": list(dict.fromkeys(keys))}))
            df = con.execute(f"select c.* from {self.name} c join _keys k using (cache_key)").df()
            con.unregister("_keys")
        return {r.cache_key: self.from_row(r) for r in df.itertuples()}

    def store(self, connect: Connect, rows: list[dict], ensure_table: bool = True) -> None:
        """Insert the ``rows`` (each with its ``cache_key``) whose key is not stored yet, stamped with ``created_at`` now.

        ``ensure_table=False`` skips the ``create table if not exists`` (the caller already ran it)."""
        if not rows:
            return
        now = pd.Timestamp.now("UTC").tz_localize(None)
        frame = pd.DataFrame([{**r, "created_at": now} for r in rows])

        def attempt() -> None:
            with connect() as con:
                if ensure_table:
                    con.execute(self.ddl)
                con.register("_new", frame)
                # An anti-join instead of a key constraint: a primary-key index makes every commit rewrite
                # the whole index when the connection closes (~175 ms at 300k rows against ~35 ms), and a
                # lake has no keys anyway. A key stored twice (two processes that missed it at once)
                # holds the same answer twice: a lookup reads one.
                con.execute(
                    f"insert into {self.name} by name select * from _new n "
                    f"where not exists (select 1 from {self.name} c where c.cache_key = n.cache_key)"
                )
                con.unregister("_new")

        wh.retry_on_conflict(attempt)


@dataclass
class CacheResult:
    outcomes: list[Any]
    from_cache: list[bool]
    requests_made: int = 0  # distinct requests sent to the backend
    cache_writes: int = 0  # commits to the cache table during this call
    cache_write_seconds: float = 0.0


def answer_with_cache(
    requests: list[Any],
    keys: list[str],
    connect: Connect,
    table: CacheTable,
    answer_missing: AnswerFn,
    row_of: Callable[[str, Any], dict | None],
    flush_every: int | None = None,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    progress: Callable[[str], None] | None = None,
    progress_seconds: float = 10.0,
    started_message: Callable[[int, int, int], str] = lambda hits, rows, todo: (
        f"{hits} of {rows} rows from the cache; asking {todo}"
    ),
    progress_message: Callable[[int, int, float], str] = lambda done, todo, rate: (
        f"answered {done}/{todo} ({rate:.1f}/s)"
    ),
) -> CacheResult:
    """Answer from ``table`` where possible; ask ``answer_missing`` for the rest, committing answers as they arrive.

    Identical keys within one call are asked once (the first request of a key is
    sent). ``row_of(key, outcome)`` is the table row to store for a fresh
    outcome, or None to store nothing (a failure). Commits go through
    :class:`CacheWriter` (``flush_every`` answers, None = the client's
    concurrency or 16, or ``flush_seconds``), also when ``answer_missing``
    raises: what was paid for is kept. ``started_message(hits, rows, todo)`` and
    ``progress_message(done, todo, rate)`` are the lines given to ``progress``.
    """
    cached = table.lookup(connect, keys)
    from_cache = [k in cached for k in keys]
    todo_keys = list(dict.fromkeys(k for k in keys if k not in cached))
    first_request: dict[str, Any] = {}
    for k, r in zip(keys, requests):
        first_request.setdefault(k, r)
    if progress:
        progress(started_message(sum(from_cache), len(keys), len(todo_keys)))
    if not todo_keys:
        return CacheResult(outcomes=[cached[k] for k in keys], from_cache=from_cache)

    done = 0
    started = last_progress = time.monotonic()
    # lookup() created the table: commits skip the DDL.
    writer = CacheWriter(
        lambda batch: table.store(connect, batch, ensure_table=False),
        max_rows=flush_every or concurrency_of(answer_missing) or DEFAULT_FLUSH_ROWS,
        max_delay_s=flush_seconds,
        name=f"{table.name}-writer",
    )

    def on_result(i: int, outcome: Any) -> None:
        nonlocal done, last_progress
        done += 1
        row = row_of(todo_keys[i], outcome)
        if row is not None:
            writer.add({"cache_key": todo_keys[i], **row})
        if progress and time.monotonic() - last_progress > progress_seconds:
            last_progress = time.monotonic()
            progress(progress_message(done, len(todo_keys), done / max(1e-9, last_progress - started)))

    try:
        fresh = answer_missing([first_request[k] for k in todo_keys], on_result)
    finally:
        writer.close()  # also when answering failed: what was paid for is kept
    by_key = {**cached, **dict(zip(todo_keys, fresh))}
    return CacheResult(
        outcomes=[by_key[k] for k in keys],
        from_cache=from_cache,
        requests_made=len(todo_keys),
        cache_writes=writer.writes,
        cache_write_seconds=writer.write_seconds,
    )
