"""The OpenAI Batch API for chat completions: half the price of online requests, answers within 24 h.

Pure Python (no Dagster import). :class:`BatchRunner` takes ``(custom_id, body)``
pairs — ``body`` exactly what an online request sends — and delivers one
:class:`BatchLine` per custom_id: it writes them as a JSONL file of Batch API
requests, uploads it (``files.create(purpose="batch")``), creates the batch
(``batches.create``), polls it (``batches.retrieve``, one progress line per
poll with the request counts), downloads the output and error files
(``files.content``) and reads each line with the same reader as online
answers (:func:`~.chat_transport.parse_completion`). The caller decides what
an answer is worth (the judge parses scores).

Resume. Every batch is recorded in the warehouse (:class:`BatchStore`: table
``judge_batches``, its requests in ``judge_batch_requests``) right after it is
created and before the first poll: a run killed while its batch is in flight
finds the batch on the next run, among the batches not yet collected whose
requests it still needs, and polls it again instead of paying for a new one. A
batch that ended ``failed``, ``expired`` or ``cancelled`` is collected as it
is: its requests without an answer are errors, and only a later run sends them
again, in a new batch. A batch counts as collected once its answers are durable
(``defer_collected``: the caller confirms after its cache has committed them), so a
run killed while collecting downloads the same output again rather than paying again. Answers that an expired or cancelled batch did produce
(the API bills them) are delivered like any other.

Limits: one batch holds at most :data:`MAX_BATCH_REQUESTS` requests and
:data:`MAX_BATCH_BYTES` of JSONL; larger inputs are split into several batches,
polled together. The API key is only ever a client argument: it is not in the
JSONL, the warehouse, a progress line or an error text (all redacted).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import openai
import pandas as pd

from lm_mixup_assets.lib.budgets import redact
from lm_mixup_assets.lib.cache import Connect
from lm_mixup_assets.lib.chat_transport import BadCompletion, parse_completion

__all__ = [
    "BATCH_PRICE_FACTOR",
    "ENDPOINT",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_REQUESTS",
    "BatchError",
    "BatchLine",
    "BatchPending",
    "BatchReport",
    "BatchRunner",
    "BatchStore",
    "parse_batch_line",
    "render_request_line",
    "request_set_hash",
    "serialized",
    "split_lines",
]

# The Batch API's limits per input file (https://platform.openai.com/docs/guides/batch).
MAX_BATCH_REQUESTS = 50_000
MAX_BATCH_BYTES = 200_000_000  # "200 MB"; decimal megabytes keep us under either reading
# Batch requests cost half the online price (input and output tokens alike).
BATCH_PRICE_FACTOR = 0.5
ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"

OPEN_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
ENDED_UNFINISHED = frozenset({"failed", "expired", "cancelled"})
# Uploads of up to 200 MB take longer than one chat request.
_UPLOAD_TIMEOUT_S = 600.0


class BatchError(RuntimeError):
    """A Batch API call failed in a way waiting will not fix (e.g. 401); the text is redacted."""


class BatchPending(RuntimeError):
    """Batches still running when ``max_wait_s`` ran out; they are recorded, and the next run resumes them."""

    def __init__(self, message: str, batch_ids: list[str]):
        super().__init__(message)
        self.batch_ids = batch_ids


@dataclass
class BatchLine:
    """What the Batch API returned for one request: an answer (``error`` None) or why there is none."""

    custom_id: str
    content: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    batch_id: str | None = None


@dataclass
class BatchReport:
    """What one :meth:`BatchRunner.run` did (see :meth:`stats`)."""

    created: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    collected: list[str] = field(default_factory=list)  # batches whose lines were all delivered
    ended_unfinished: dict[str, str] = field(default_factory=dict)  # batch id -> why (failed/expired/cancelled)
    polls: int = 0
    requests: int = 0  # requests delivered from batches (answers and errored lines)
    errored_lines: int = 0  # requests with an error line, or with no line at all
    garbage_lines: int = 0  # output lines that were not a readable batch record

    def stats(self) -> dict[str, int]:
        return {
            "batches_created": len(self.created),
            "batches_resumed": len(self.resumed),
            "batches_unfinished": len(self.ended_unfinished),
            "batch_polls": self.polls,
            "batch_requests": self.requests,
            "batch_errored_lines": self.errored_lines,
            "batch_garbage_lines": self.garbage_lines,
        }


# --------------------------------------------------------------------------- the file format


def render_request_line(custom_id: str, body: dict) -> bytes:
    """One JSONL line of a Batch API input file (``body``: the online request body, unchanged)."""
    record = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def split_lines(
    lines: Iterable[tuple[str, bytes]], max_requests: int = MAX_BATCH_REQUESTS, max_bytes: int = MAX_BATCH_BYTES
) -> Iterator[list[tuple[str, bytes]]]:
    """``(custom_id, line)`` pairs cut, in order, into files of at most ``max_requests`` lines and
    ``max_bytes`` bytes (a single longer line gets a file of its own; the API then rejects it).

    A generator: ``lines`` is read one file ahead, so rendering them lazily keeps one file in memory."""
    if max_requests < 1 or max_bytes < 1:
        raise ValueError("batch limits must be >= 1")
    chunk: list[tuple[str, bytes]] = []
    size = 0
    for item in lines:
        if chunk and (len(chunk) >= max_requests or size + len(item[1]) > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item[1])
    if chunk:
        yield chunk


def request_set_hash(custom_ids: Iterable[str], model: str, label: str = "") -> str:
    """The key of one batch's request set: its custom_ids (in any order), the model and a label (the rubrics)."""
    h = hashlib.sha256()
    for part in (model, label, *sorted(custom_ids)):
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def parse_batch_line(raw: str) -> BatchLine | None:
    """One line of an output or error file, or None when it is not a batch record (no custom_id)."""
    try:
        record = json.loads(raw)
        custom_id = record["custom_id"]
        if not isinstance(custom_id, str):
            return None
    except (ValueError, KeyError, TypeError):
        return None
    error = record.get("error")
    if error:
        if isinstance(error, dict):
            error = f"{error.get('code') or 'error'}: {error.get('message') or ''}".rstrip(": ")
        return BatchLine(custom_id, error=f"batch request failed: {error}")
    response = record.get("response") or {}
    status, body = response.get("status_code"), response.get("body")
    if status != 200:
        detail: Any = body
        if isinstance(body, dict):
            err = body.get("error", body)
            detail = err.get("message") if isinstance(err, dict) else err
        return BatchLine(custom_id, error=f"batch request answered {status}: {str(detail)[:300]}")
    try:
        content, prompt_tokens, completion_tokens = parse_completion(body)
    except BadCompletion as exc:
        return BatchLine(custom_id, error=f"batch request answered {exc}")
    return BatchLine(custom_id, content=content, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


# --------------------------------------------------------------------------- the record in the warehouse

_CONNECT_LOCK = threading.RLock()


def serialized(connect: Connect) -> Connect:
    """``connect``, one connection at a time in this process.

    A batch run writes its records from the calling thread while the cache writer commits answers
    from its own; DuckDB (2.0) loses its ``pandas_scan`` function when another thread of the process
    opens or closes a connection during a scan of a registered DataFrame. Both sides go through this.
    """

    @contextmanager
    def locked(*args: Any, **kwargs: Any):
        with _CONNECT_LOCK, connect(*args, **kwargs) as con:
            yield con

    return locked


class BatchStore:
    """Batches in the warehouse: ``<prefix>_batches`` (one row per batch) and ``<prefix>_batch_requests``
    (its custom_ids), so a later run resumes a batch instead of paying for it twice."""

    def __init__(self, connect: Connect, prefix: str = "judge"):
        self.connect = serialized(connect)  # the caller's cache commits must go through serialized() too
        self.batches = f"{prefix}_batches"
        self.requests = f"{prefix}_batch_requests"
        self._ddl = [
            f"""create table if not exists {self.batches} (
                batch_id varchar primary key, request_set varchar, model varchar, label varchar,
                input_file_id varchar, status varchar, request_count integer,
                completed integer, failed integer, output_file_id varchar, error_file_id varchar,
                errors varchar, created_at timestamp, updated_at timestamp, collected_at timestamp)""",
            f"create table if not exists {self.requests} (batch_id varchar, custom_id varchar)",
        ]

    def _ensure(self, con: Any) -> None:
        for ddl in self._ddl:
            con.execute(ddl)

    def record(self, batch: Any, request_set: str, custom_ids: list[str], model: str, label: str) -> None:
        """A new batch and its requests, in one transaction."""
        now = _now()
        created = pd.Timestamp(batch.created_at, unit="s") if getattr(batch, "created_at", None) else now
        counts = getattr(batch, "request_counts", None)
        with self.connect() as con:
            self._ensure(con)
            con.execute("begin transaction")
            con.execute(
                f"insert or replace into {self.batches} (batch_id, request_set, model, label, input_file_id, status, "
                "request_count, completed, failed, created_at, updated_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    batch.id,
                    request_set,
                    model,
                    label,
                    batch.input_file_id,
                    batch.status,
                    len(custom_ids),
                    getattr(counts, "completed", 0) or 0,
                    getattr(counts, "failed", 0) or 0,
                    created,
                    now,
                ],
            )
            con.register("_members", pd.DataFrame({"batch_id": batch.id, "custom_id": custom_ids}))
            con.execute(f"insert into {self.requests} select batch_id, custom_id from _members")
            con.unregister("_members")
            con.execute("commit")

    def update(self, batch: Any, errors: str | None = None) -> None:
        counts = getattr(batch, "request_counts", None)
        with self.connect() as con:
            self._ensure(con)
            con.execute(
                f"update {self.batches} set status = ?, completed = ?, failed = ?, output_file_id = ?, "
                "error_file_id = ?, errors = coalesce(?, errors), updated_at = ? where batch_id = ?",
                [
                    batch.status,
                    getattr(counts, "completed", None),
                    getattr(counts, "failed", None),
                    getattr(batch, "output_file_id", None),
                    getattr(batch, "error_file_id", None),
                    errors,
                    _now(),
                    batch.id,
                ],
            )

    def update_status(self, batch_id: str, status: str, errors: str | None = None) -> None:
        with self.connect() as con:
            self._ensure(con)
            con.execute(
                f"update {self.batches} set status = ?, errors = coalesce(?, errors), updated_at = ? "
                "where batch_id = ?",
                [status, errors, _now(), batch_id],
            )

    def mark_collected(self, batch_id: str) -> None:
        with self.connect() as con:
            self._ensure(con)
            con.execute(
                f"update {self.batches} set collected_at = ?, updated_at = ? where batch_id = ?",
                [_now(), _now(), batch_id],
            )

    def open_batches_for(self, custom_ids: list[str]) -> dict[str, list[str]]:
        """{batch id: its custom_ids among ``custom_ids``} of the batches not collected yet, oldest first."""
        if not custom_ids:
            return {}
        with self.connect() as con:
            self._ensure(con)
            con.register("_wanted", pd.DataFrame({"custom_id": list(dict.fromkeys(custom_ids))}))
            df = con.execute(
                f"select r.batch_id, r.custom_id from {self.requests} r join _wanted w using (custom_id) "
                f"join {self.batches} b using (batch_id) where b.collected_at is null "
                "order by b.created_at, b.batch_id"
            ).df()
            con.unregister("_wanted")
        out: dict[str, list[str]] = {}
        for batch_id, custom_id in zip(df["batch_id"], df["custom_id"]):
            out.setdefault(batch_id, []).append(custom_id)
        return out

    def rows(self) -> pd.DataFrame:
        """Every recorded batch (for tests and the curious)."""
        with self.connect() as con:
            self._ensure(con)
            return con.execute(f"select * from {self.batches} order by created_at, batch_id").df()


def _now() -> pd.Timestamp:
    return pd.Timestamp.now("UTC").tz_localize(None)


# --------------------------------------------------------------------------- the runner


class BatchRunner:
    """Run requests through the Batch API of ``base_url``; see the module docstring.

    Args:
        base_url, api_key: the API (the key never reaches a file, the store, a log line or an error).
        store: where batches are recorded (resume).
        model, label: part of each batch's request-set key (``label``: e.g. the rubric versions).
        poll_interval_s: seconds between two polls of the open batches.
        max_wait_s: how long :meth:`run` polls before it raises :class:`BatchPending` (the
            batches stay recorded; the next run resumes them).
        max_requests, max_bytes: the most requests and bytes in one batch's file.
        timeout_s, max_retries: of each management call (the SDK retries 429/5xx/connection errors).
        progress: gets one line per created batch, per poll and per batch that ended unfinished.
        sleep: how to wait between polls (tests pass a fast one).
        defer_collected: leave marking batches collected to :meth:`confirm_collected`, which the
            caller calls once the delivered answers are durable (e.g. its cache writer closed): a run
            killed in between collects the batch again on its next run, instead of buying its
            answers twice.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        store: BatchStore,
        *,
        model: str,
        label: str = "",
        poll_interval_s: float = 60.0,
        max_wait_s: float = 26 * 3600.0,
        max_requests: int = MAX_BATCH_REQUESTS,
        max_bytes: int = MAX_BATCH_BYTES,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        progress: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        defer_collected: bool = False,
    ) -> None:
        if poll_interval_s < 0 or max_wait_s < 0:
            raise ValueError("poll_interval_s and max_wait_s must be >= 0")
        if not 1 <= max_requests <= MAX_BATCH_REQUESTS or not 1 <= max_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"a batch holds 1-{MAX_BATCH_REQUESTS} requests and 1-{MAX_BATCH_BYTES} bytes")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.store = store
        self.model = model
        self.label = label
        self.poll_interval_s = float(poll_interval_s)
        self.max_wait_s = float(max_wait_s)
        self.max_requests = int(max_requests)
        self.max_bytes = int(max_bytes)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self._progress = progress
        self._sleep = sleep
        self.defer_collected = bool(defer_collected)
        #: What the last :meth:`run` did (also after it raised).
        self.report = BatchReport()
        self._confirmed: set[str] = set()

    def __repr__(self) -> str:  # keeps the key out of reprs
        return f"BatchRunner(base_url={self.base_url!r}, model={self.model!r})"

    def redact(self, text: str) -> str:
        return redact(text, [self._api_key])

    def _say(self, line: str) -> None:
        if self._progress is not None:
            self._progress(self.redact(line))

    def run(
        self, custom_ids: Sequence[str], body_of: Callable[[str], dict], on_line: Callable[[BatchLine], None]
    ) -> BatchReport:
        """Deliver one :class:`BatchLine` per custom_id to ``on_line``, as each batch is collected.

        ``body_of(custom_id)`` is that request's body, asked for only when its line goes into a new
        batch's file: a file is rendered, uploaded and dropped before the next one is rendered, so memory
        follows the file size, not the number of requests. Resumes the recorded batches that hold any
        of these custom_ids; the rest go into new batches. Raises :class:`BatchPending` when batches
        are still running after ``max_wait_s`` (the lines of the batches collected so far were
        delivered), :class:`BatchError` when the API refuses a management call for good (e.g. a bad key).
        """
        report = self.report = BatchReport()
        ids = list(custom_ids)
        if len(set(ids)) != len(ids):
            raise ValueError("custom_ids of one batch run must be unique")
        if not ids:
            return report
        wanted = set(ids)
        delivered: set[str] = set()

        def deliver(line: BatchLine) -> None:
            if line.custom_id in wanted and line.custom_id not in delivered:
                delivered.add(line.custom_id)
                report.requests += 1
                report.errored_lines += line.error is not None
                on_line(line)

        with openai.OpenAI(
            base_url=self.base_url, api_key=self._api_key, max_retries=self.max_retries, timeout=self.timeout_s
        ) as client:
            members: dict[str, list[str]] = {}  # open batch id -> its custom_ids this run wants
            covered: set[str] = set()
            for batch_id, cids in self.store.open_batches_for(ids).items():
                cids = [c for c in cids if c not in covered]  # a request in two open batches: the older one
                if cids:
                    members[batch_id] = cids
                    covered.update(cids)
                    report.resumed.append(batch_id)
                    self._say(f"resuming batch {batch_id} ({len(cids)} of the requests wanted), recorded earlier")
            todo = [cid for cid in ids if cid not in covered]
            lines = ((cid, render_request_line(cid, body_of(cid))) for cid in todo)
            first = 0
            for n, chunk in enumerate(split_lines(lines, self.max_requests, self.max_bytes), start=1):
                cids = [cid for cid, _ in chunk]
                where = f"{n}, requests {first + 1}-{first + len(chunk)} of {len(todo)}"
                batch_id = self._create(client, chunk, where, deliver)
                first += len(chunk)
                del chunk  # the file's bytes go before the next file is rendered
                if batch_id is not None:
                    members[batch_id] = cids
                    report.created.append(batch_id)
            self._poll(client, members, deliver, report)
        return report

    def _create(
        self, client: Any, chunk: list[tuple[str, bytes]], where: str, deliver: Callable[[BatchLine], None]
    ) -> str | None:
        """Upload one file and create its batch, recorded before anything else; None if the API refused it
        (its requests are then errors of this run)."""
        cids = [cid for cid, _ in chunk]
        request_set = request_set_hash(cids, self.model, self.label)
        data = b"".join(line for _, line in chunk)
        try:
            upload = client.files.create(
                file=(f"lm-mixup-{request_set[:16]}.jsonl", io.BytesIO(data)),
                purpose="batch",
                timeout=max(self.timeout_s, _UPLOAD_TIMEOUT_S),
            )
            batch = client.batches.create(
                input_file_id=upload.id,
                endpoint=ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata={"lm_mixup_request_set": request_set[:64]},
            )
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise BatchError(self.redact(_describe(exc, self.base_url))) from None
            why = self.redact(f"the Batch API refused batch {where}: {_describe(exc, self.base_url)}")
            self._say(why)
            for cid in cids:
                deliver(BatchLine(cid, error=why))
            return None
        except openai.APIError as exc:  # connection errors after the SDK's retries
            raise BatchError(self.redact(f"could not create batch {where} at {self.base_url}: {exc}")) from None
        # Recorded before the first poll: from here on a killed run finds this batch again.
        self.store.record(batch, request_set, cids, self.model, self.label)
        self._say(
            f"created batch {batch.id} (batch {where}): {len(cids)} requests, {len(data)} bytes, input file {upload.id}"
        )
        return batch.id

    def _poll(
        self, client: Any, members: dict[str, list[str]], deliver: Callable[[BatchLine], None], report: BatchReport
    ) -> None:
        started = time.monotonic()
        pending = dict(members)
        while pending:
            for batch_id in list(pending):
                try:
                    batch = client.batches.retrieve(batch_id)
                except openai.NotFoundError:
                    why = f"batch {batch_id} is unknown to {self.base_url}; forgotten, its requests go into a new batch next run"
                    self._say(why)
                    self.store.update_status(batch_id, "not_found", errors=why)
                    report.ended_unfinished[batch_id] = why
                    self._fail_rows(pending.pop(batch_id), why, batch_id, deliver)
                    self._collected(batch_id)
                    continue
                except openai.APIStatusError as exc:
                    if exc.status_code in (401, 403):
                        raise BatchError(self.redact(_describe(exc, self.base_url))) from None
                    self._say(f"poll of batch {batch_id} failed ({_describe(exc, self.base_url)}); polling on")
                    continue
                except openai.APIError as exc:  # the service is unreachable for now: keep waiting
                    self._say(f"poll of batch {batch_id} failed ({exc}); polling on")
                    continue
                report.polls += 1
                counts = batch.request_counts
                done, failed, total = (getattr(counts, k, 0) or 0 for k in ("completed", "failed", "total"))
                self._say(
                    f"batch {batch_id}: {batch.status}, {done}/{total or len(pending[batch_id])} done, "
                    f"{failed} failed ({len(pending)} batch(es) open, {time.monotonic() - started:.0f}s)"
                )
                if batch.status in OPEN_STATUSES:
                    self.store.update(batch)
                    continue
                self._collect(client, batch, pending.pop(batch_id), deliver, report)
            if not pending:
                return
            if time.monotonic() - started >= self.max_wait_s:
                ids = sorted(pending)
                raise BatchPending(
                    f"{len(ids)} batch(es) still running after {self.max_wait_s:g}s (max_wait_s): {', '.join(ids)}. "
                    f"They are recorded in {self.store.batches}; run again to resume polling them (nothing is "
                    "sent twice)",
                    ids,
                )
            self._sleep(self.poll_interval_s)

    def _collect(
        self, client: Any, batch: Any, cids: list[str], deliver: Callable[[BatchLine], None], report: BatchReport
    ) -> None:
        """Deliver a finished batch's lines; its requests without a line are errors. Marked collected last
        (or by :meth:`confirm_collected`), so a run killed while collecting collects again."""
        errors = self.redact(_batch_errors(batch))  # error texts may echo the key, as 401s do
        wanted = set(cids)
        unfinished = batch.status != "completed"
        why = f"batch {batch.id} {batch.status}" + (f": {errors}" if errors else "")
        self.store.update(batch, errors=errors or None)
        seen: set[str] = set()
        answered = 0
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            try:
                text = client.files.content(file_id).text
            except openai.APIError as exc:  # left uncollected: the next run downloads it again
                detail = _describe(exc, self.base_url) if isinstance(exc, openai.APIStatusError) else str(exc)
                raise BatchError(
                    self.redact(f"could not download file {file_id} of batch {batch.id}: {detail}")
                ) from None
            for raw in text.splitlines():
                if not raw.strip():
                    continue
                line = parse_batch_line(raw)
                if line is None:
                    report.garbage_lines += 1
                    continue
                line.batch_id = batch.id
                if line.error is not None:
                    line.error = self.redact(f"{line.error} (batch {batch.id})")
                seen.add(line.custom_id)
                answered += line.error is None and line.custom_id in wanted
                deliver(line)
        missing = [cid for cid in cids if cid not in seen]
        if unfinished:
            report.ended_unfinished[batch.id] = why
            self._say(
                f"{why}; {len(cids) - answered} of its {len(cids)} requests have no answer: they are api_error, "
                "a later run sends them in a new batch"
            )
        reason = why if unfinished else f"no line for this request in the output of batch {batch.id}"
        self._fail_rows(missing, reason, batch.id, deliver)
        self._collected(batch.id)

    def _collected(self, batch_id: str) -> None:
        self.report.collected.append(batch_id)
        if not self.defer_collected:
            self.confirm_collected()

    def confirm_collected(self) -> None:
        """Mark the batches the last run collected as collected: their answers are durable, a later run
        leaves them alone (and sends their rows that are still uncached in a new batch)."""
        for batch_id in self.report.collected:
            if batch_id not in self._confirmed:
                self.store.mark_collected(batch_id)
                self._confirmed.add(batch_id)

    def _fail_rows(self, cids: list[str], why: str, batch_id: str, deliver: Callable[[BatchLine], None]) -> None:
        why = self.redact(why)
        for cid in cids:
            deliver(BatchLine(cid, error=why, batch_id=batch_id))


def _batch_errors(batch: Any) -> str:
    data = getattr(getattr(batch, "errors", None), "data", None) or []
    parts = []
    for e in data[:5]:
        where = f" (line {e.line})" if getattr(e, "line", None) else ""
        parts.append(f"{getattr(e, 'code', None) or 'error'}: {getattr(e, 'message', '') or ''}{where}")
    if len(data) > 5:
        parts.append(f"... {len(data) - 5} more")
    return "; ".join(parts)


def _describe(exc: openai.APIStatusError, base_url: str) -> str:
    detail: Any = exc.body
    if isinstance(detail, dict):
        err = detail.get("error", detail)
        detail = err.get("message") if isinstance(err, dict) else err
    hint = " (check OPENAI_API_KEY)" if exc.status_code == 401 else ""
    return f"{exc.status_code} from {base_url}{hint}: {str(detail or exc.message)[:300]}"
