"""A small, local, OpenAI-compatible chat-completions server for tests and benchmarks.

Pure asyncio (``asyncio.start_server`` plus a minimal HTTP/1.1 keep-alive
parser), no third-party dependency. It serves ``POST /v1/chat/completions`` (and
``/chat/completions``) on 127.0.0.1 with an ephemeral port and answers with a
deterministic judge answer, after a fixed latency, unless a scheduled fault says
otherwise. ``GET /stats`` returns the counters as JSON; ``POST /reset`` zeroes
them. It also serves the Batch API, in memory (see "Batch API" below).

Usage::

    with OpenAICompatServer(latency_s=0.0, faults={"prompt 7": [{"status": 500}]}) as srv:
        client = OpenAIJudgeClient(base_url=srv.base_url, api_key="test", model="m")
        ...
        assert srv.request_count() == 10

Two run modes:

* ``mode="subprocess"`` (default): the server runs in a child Python process, so
  it does not compete with the client for the GIL (needed by the benchmark on
  2 cores). The child exits when the parent closes it, and also by itself when
  the parent dies (it watches its stdin pipe), so no process is left behind.
* ``mode="thread"``: an event loop in a daemon thread of this process; allows a
  plain Python callable as ``answer_fn``.

Faults: ``faults`` maps a key to a list of fault dicts consumed in order, one per
matching request. A ``str`` key matches requests whose user message contains it;
an ``int`` key matches the N-th chat request the server receives (1-based). A
fault dict may hold:

* ``{"status": 429, "retry_after": 1}``: that HTTP status (with an OpenAI-style
  error body; ``retry_after`` seconds, if given, as a ``Retry-After`` header;
  ``headers`` a dict of further response headers, e.g. ``x-ratelimit-reset-tokens``;
  ``message`` to override the error text);
* ``{"status": 500}``: likewise;
* ``{"hang": seconds}``: wait that long before answering normally (a client with
  a shorter timeout gives up first);
* ``{"content": "not json at all"}``: a 200 answer with that message content;
* ``{"drop": True}``: close the connection without answering;
* ``"sticky": True`` in any of them: never consumed (applies to every match).

Once a key's list is used up, matching requests get normal answers. When
several keys match, the first one listed that still has faults applies.
``require_api_key="..."`` makes the server answer 401 (echoing the presented
key, as the real API does, so clients must redact it) to any other bearer token.

Answers: ``answer_fn(user_message) -> content``; the default returns the JSON
object of :func:`expected_scores` (four integers 1-10 from a hash of the user
message); :func:`ds2_answer` gives the same scores in DS2's layout ("Overall
rating", after prose). ``usage`` counts whitespace-separated words: prompt_tokens over all
messages' contents, completion_tokens over the answer.

Counters (``srv.stats()``, ``GET /stats``): ``requests`` (chat requests),
``per_prompt`` ({:func:`prompt_hash` of the user message: count}),
``status_counts``, ``faults_applied``, ``in_flight``, ``max_in_flight``,
``connections`` (all TCP connections, /stats ones included),
``chat_connections`` (those that carried a chat request), ``faults_pending``.
In subprocess mode the child runs on uvloop when it is installed
(``use_uvloop=False`` to opt out), so the server's own timing stays precise.

Batch API
---------
``POST /v1/files`` (multipart upload, any purpose), ``GET /v1/files/{id}`` and
``GET /v1/files/{id}/content``; ``POST /v1/batches`` (``input_file_id``,
``endpoint`` ``/v1/chat/completions``, ``completion_window`` ``24h``) and ``GET
/v1/batches/{id}``. ``require_api_key`` guards these too. An input file is
validated as the real API does (JSON lines with a unique ``custom_id``,
``method`` POST, ``url`` /v1/chat/completions, a ``body``; at most
``batch_max_requests`` lines): a bad file fails the batch with line errors. A
batch is ``validating`` when created, ``in_progress`` while polled, and ends
on its ``batch_polls``-th retrieve (default 2), or, when ``batch_seconds`` is
set, on the first retrieve that many seconds after its creation. Then every
line is answered like a chat request: the same ``answer_fn`` and the same
string-keyed ``faults`` (a ``status`` fault or ``drop``/``hang`` makes an error
line in the error file, a ``content`` fault an answer with that content;
request-number keys apply to online requests only). Answers go to the output
file, one ``{"id", "custom_id", "response": {"status_code", "body"}, "error"}``
line each. ``batch_script`` is a list of dicts, one per created batch in order
(later batches behave by default), each of which may hold:

* ``{"status": "failed", "errors": [{"code": ..., "message": ...}]}``: the batch
  fails (no files);
* ``{"status": "expired"}`` / ``{"status": "cancelled"}``: the batch ends so,
  with the first ``complete`` (default 0) lines answered and the rest error
  lines (``batch_expired`` / ``batch_cancelled``), as the real API reports them;
* ``{"garbage": ["substring", ...]}``: the output lines of requests whose user
  message holds a substring are replaced by a line that is not JSON;
* ``{"polls": n}`` / ``{"seconds": s}``: this batch's own completion rule.

Batch counters in ``stats()``: ``files_uploaded``, ``file_downloads``,
``batches_created``, ``batch_polls``, ``batch_requests`` (lines answered; not
in ``requests``), ``batches`` ({id: status}). ``srv.uploaded_files()`` returns
every uploaded file with its text, for tests that inspect what was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = [
    "OpenAICompatServer",
    "default_answer",
    "ds2_answer",
    "expected_scores",
    "prompt_hash",
]

SCORE_KEYS = ("rarity", "complexity", "informativeness", "overall")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


# --------------------------------------------------------------------------- answers


def prompt_hash(user_message: str) -> str:
    """The key under which the server counts requests per prompt."""
    return hashlib.sha256(user_message.encode("utf-8")).hexdigest()[:16]


def expected_scores(user_message: str) -> dict[str, int]:
    """The four scores (1-10) the default answer gives for this user message."""
    digest = hashlib.sha256(user_message.encode("utf-8")).digest()
    return {key: 1 + digest[i] % 10 for i, key in enumerate(SCORE_KEYS)}


def default_answer(user_message: str) -> str:
    """Default answer function: the JSON object of :func:`expected_scores`."""
    return json.dumps(expected_scores(user_message))


def ds2_answer(user_message: str) -> str:
    """The scores of :func:`expected_scores` as DS2's prompt asks for them: indented JSON with
    "Overall rating", after a line of prose (pass ``answer_fn="tests.openai_server:ds2_answer"``)."""
    s = expected_scores(user_message)
    obj = {
        "Rarity": s["rarity"],
        "Complexity": s["complexity"],
        "Informativeness": s["informativeness"],
        "Overall rating": s["overall"],
    }
    return "Here is my evaluation of the sample:\n" + json.dumps(obj, indent=4)


def _resolve_answer_fn(spec: Any) -> Callable[[str], str]:
    if spec is None:
        return default_answer
    if callable(spec):
        return spec
    module_name, _, attr = str(spec).partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _answer_fn_spec(fn: Any) -> str | None:
    """An importable "module:qualname" for a callable (subprocess mode)."""
    if fn is None or isinstance(fn, str):
        return fn
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or "<" in qualname or module == "__main__":
        raise ValueError(
            "in subprocess mode answer_fn must be a module-level function or a "
            "'module:function' string; use mode='thread' for closures/lambdas"
        )
    return f"{module}:{qualname}"


def _count_tokens(text: str) -> int:
    return max(1, len(text.split()))


# --------------------------------------------------------------------------- core


class _ServerCore:
    """State and request handling; runs inside one event loop."""

    def __init__(
        self,
        latency_s: float = 0.0,
        faults: list[tuple[str, Any, list[dict]]] | None = None,
        answer_fn: Any = None,
        require_api_key: str | None = None,
        model: str = "local-judge",
        batch_polls: int = 2,
        batch_seconds: float | None = None,
        batch_script: list[dict] | None = None,
        batch_max_requests: int = 50_000,
    ) -> None:
        self.latency_s = float(latency_s)
        self.answer_fn = _resolve_answer_fn(answer_fn)
        self.require_api_key = require_api_key
        self.model = model
        # [(kind, key, remaining faults)] ; kind "substr" or "nth"
        self.faults = [(kind, key, list(items)) for kind, key, items in (faults or [])]
        self.batch_polls = max(1, int(batch_polls))
        self.batch_seconds = batch_seconds
        self.batch_script = [dict(b) for b in (batch_script or [])]
        self.batch_max_requests = int(batch_max_requests)
        # Files and batches outlive /reset: only the counters are zeroed.
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.per_prompt: Counter[str] = Counter()
        self.status_counts: Counter[str] = Counter()
        self.faults_applied: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self.chat_connections = 0
        self.files_uploaded = 0
        self.file_downloads = 0
        self.batches_created = 0
        self.batch_polls_seen = 0
        self.batch_requests = 0
        self.started = time.monotonic()

    def stats(self) -> dict:
        return {
            "requests": self.total,
            "per_prompt": dict(self.per_prompt),
            "status_counts": dict(self.status_counts),
            "faults_applied": dict(self.faults_applied),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "connections": self.connections,
            "chat_connections": self.chat_connections,
            "faults_pending": sum(len(items) for _, _, items in self.faults),
            "files_uploaded": self.files_uploaded,
            "file_downloads": self.file_downloads,
            "batches_created": self.batches_created,
            "batch_polls": self.batch_polls_seen,
            "batch_requests": self.batch_requests,
            "batches": {b["id"]: b["status"] for b in self.batches.values()},
        }

    def _take_fault(self, n: int, user_message: str) -> dict | None:
        for kind, key, items in self.faults:
            if not items:
                continue
            if (kind == "nth" and key == n) or (kind == "substr" and key in user_message):
                fault = items[0]
                if not fault.get("sticky"):
                    items.pop(0)
                return fault
        return None

    # ---- HTTP

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        counted_chat = False
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await self._write(writer, 413, {"error": {"message": "headers too large"}}, close=True)
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    await self._write(writer, 400, {"error": {"message": "bad request line"}}, close=True)
                    return
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if not line:
                        continue
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                try:
                    body = await self._read_body(reader, headers)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except ValueError as exc:
                    await self._write(writer, 400, {"error": {"message": str(exc)}}, close=True)
                    return
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                if not counted_chat and "chat/completions" in target:
                    counted_chat = True
                    self.chat_connections += 1
                keep = await self.dispatch(method, target.split("?", 1)[0], headers, body, writer, close)
                if close or not keep:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until blank line
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return b"".join(parts)
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
        length = headers.get("content-length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise ValueError("bad content-length") from None
        return await reader.readexactly(n) if n else b""

    async def _write(
        self,
        writer,
        status: int,
        payload: Any,
        close: bool = False,
        extra: dict | None = None,
        content_type: str = "application/json",
    ) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        reason = _REASONS.get(status, "Status")
        head = [
            f"HTTP/1.1 {status} {reason}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close" if close else "Connection: keep-alive",
        ]
        for k, v in (extra or {}).items():
            head.append(f"{k}: {v}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()

    async def dispatch(self, method, path, headers, body, writer, close) -> bool:
        if path == "/stats" and method == "GET":
            await self._write(writer, 200, self.stats(), close)
            return True
        if path == "/reset" and method == "POST":
            self.reset()
            await self._write(writer, 200, {"ok": True}, close)
            return True
        if path == "/health":
            await self._write(writer, 200, {"ok": True}, close)
            return True
        if path == "/debug/files" and method == "GET":  # test inspection, no auth: what clients uploaded
            files = [
                {k: v for k, v in f.items() if k != "data"} | {"text": f["data"].decode("utf-8", "replace")}
                for f in self.files.values()
            ]
            await self._write(writer, 200, files, close)
            return True
        if path.startswith(("/v1/files", "/v1/batches")):
            status, payload, content_type = self.batch_api(method, path, headers, body)
            await self._write(writer, status, payload, close, content_type=content_type)
            return True
        if path not in ("/v1/chat/completions", "/chat/completions"):
            await self._write(
                writer, 404, {"error": {"message": f"no route {method} {path}", "type": "invalid_request_error"}}, close
            )
            return True
        if method != "POST":
            await self._write(writer, 405, {"error": {"message": "use POST"}}, close)
            return True
        return await self.chat(headers, body, writer, close)

    async def chat(self, headers, body, writer, close) -> bool:
        self.total += 1
        n = self.total
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            try:
                req = json.loads(body or b"{}")
                messages = req.get("messages") or []
                user_message = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
                if not isinstance(user_message, str):  # content parts
                    user_message = "".join(p.get("text", "") for p in user_message if isinstance(p, dict))
            except (ValueError, AttributeError, TypeError) as exc:
                self.status_counts["400"] += 1
                await self._write(
                    writer, 400, {"error": {"message": f"bad JSON body: {exc}", "type": "invalid_request_error"}}, close
                )
                return True
            self.per_prompt[prompt_hash(user_message)] += 1

            if self.require_api_key is not None:
                auth = headers.get("authorization", "")
                if auth != f"Bearer {self.require_api_key}":
                    self.status_counts["401"] += 1
                    # Like the real API, echo a hint of the key, so clients must redact.
                    given = auth.removeprefix("Bearer ")
                    await self._write(
                        writer,
                        401,
                        {
                            "error": {
                                "message": f"Incorrect API key provided: {given}.",
                                "type": "invalid_request_error",
                                "code": "invalid_api_key",
                            }
                        },
                        close,
                    )
                    return True

            fault = self._take_fault(n, user_message)
            content = None
            if fault is not None:
                name = next((k for k in ("status", "hang", "content", "drop") if k in fault), "other")
                self.faults_applied[name] += 1
                if fault.get("drop"):
                    self.status_counts["drop"] += 1
                    return False
                if "hang" in fault:
                    await asyncio.sleep(float(fault["hang"]))
                if "status" in fault and int(fault["status"]) != 200:
                    status = int(fault["status"])
                    if self.latency_s:
                        await asyncio.sleep(self.latency_s)
                    extra = {str(k): str(v) for k, v in (fault.get("headers") or {}).items()}
                    if fault.get("retry_after") is not None:
                        extra["Retry-After"] = str(fault["retry_after"])
                    msg = fault.get("message") or f"injected {status}"
                    self.status_counts[str(status)] += 1
                    await self._write(
                        writer,
                        status,
                        {
                            "error": {
                                "message": msg,
                                "type": "server_error" if status >= 500 else "invalid_request_error",
                            }
                        },
                        close,
                        extra,
                    )
                    return True
                if "content" in fault:
                    content = str(fault["content"])

            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if content is None:
                content = self.answer_fn(user_message)
            payload = _chat_completion(f"chatcmpl-local-{n}", req.get("model") or self.model, messages, content)
            self.status_counts["200"] += 1
            await self._write(writer, 200, payload, close)
            return True
        finally:
            self.in_flight -= 1

    # ---- Batch API (in memory)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-local-{next(self._ids)}"

    def _authorised(self, headers: dict) -> tuple[int, dict] | None:
        if self.require_api_key is None:
            return None
        auth = headers.get("authorization", "")
        if auth == f"Bearer {self.require_api_key}":
            return None
        self.status_counts["401"] += 1
        given = auth.removeprefix("Bearer ")  # echoed like the real API: clients must redact it
        return 401, {
            "error": {
                "message": f"Incorrect API key provided: {given}.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }

    def batch_api(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, Any, str]:
        """/v1/files and /v1/batches: (status, JSON payload or bytes, content type)."""
        refused = self._authorised(headers)
        if refused is not None:
            return (*refused, "application/json")
        parts = path.strip("/").split("/")  # ["v1", "files" | "batches", id?, "content"?]
        try:
            if parts[1] == "files" and len(parts) == 2 and method == "POST":
                return 200, self._upload(headers, body), "application/json"
            if parts[1] == "files" and len(parts) in (3, 4) and method == "GET":
                f = self.files.get(parts[2])
                if f is None:
                    return 404, {"error": {"message": f"No such File object: {parts[2]}"}}, "application/json"
                if len(parts) == 4 and parts[3] == "content":
                    self.file_downloads += 1
                    return 200, f["data"], "application/octet-stream"
                return 200, _file_object(f), "application/json"
            if parts[1] == "batches" and len(parts) == 2 and method == "POST":
                return self._create_batch(json.loads(body or b"{}"))
            if parts[1] == "batches" and len(parts) == 3 and method == "GET":
                b = self.batches.get(parts[2])
                if b is None:
                    return 404, {"error": {"message": f"No batch found with id '{parts[2]}'."}}, "application/json"
                self.batch_polls_seen += 1
                self._advance(b)
                return 200, _batch_object(b), "application/json"
        except ValueError as exc:
            return 400, {"error": {"message": str(exc), "type": "invalid_request_error"}}, "application/json"
        return 404, {"error": {"message": f"no route {method} {path}"}}, "application/json"

    def _upload(self, headers: dict, body: bytes) -> dict:
        fields = _multipart(headers.get("content-type", ""), body)
        if "file" not in fields:
            raise ValueError("multipart upload needs a 'file' part")
        filename, data = fields["file"]
        purpose = fields.get("purpose", (None, b""))[1].decode()
        f = {
            "id": self._new_id("file"),
            "purpose": purpose,
            "filename": filename or "upload",
            "bytes": len(data),
            "created_at": int(time.time()),
            "data": data,
        }
        self.files[f["id"]] = f
        self.files_uploaded += 1
        return _file_object(f)

    def _create_batch(self, req: dict) -> tuple[int, dict, str]:
        f = self.files.get(req.get("input_file_id", ""))
        if f is None:
            return 404, {"error": {"message": f"No such File object: {req.get('input_file_id')}"}}, "application/json"
        if req.get("endpoint") != "/v1/chat/completions" or req.get("completion_window") != "24h":
            raise ValueError("this server batches endpoint /v1/chat/completions with completion_window 24h only")
        if f["purpose"] != "batch":
            raise ValueError(f"file {f['id']} was uploaded with purpose {f['purpose']!r}, not 'batch'")
        script = self.batch_script[self.batches_created] if self.batches_created < len(self.batch_script) else {}
        self.batches_created += 1
        lines, errors = _validate_batch_file(f["data"], self.batch_max_requests)
        b = {
            "id": self._new_id("batch"),
            "input_file_id": f["id"],
            "endpoint": req["endpoint"],
            "completion_window": "24h",
            "status": "validating",
            "created_at": int(time.time()),
            "created_monotonic": time.monotonic(),
            "polls": 0,
            "script": script,
            "lines": lines,
            "errors": errors,
            "output_file_id": None,
            "error_file_id": None,
            "metadata": req.get("metadata"),
            "counts": {"total": len(lines), "completed": 0, "failed": 0},
        }
        if errors:  # the real API fails a bad input file while validating
            b["status"] = "failed"
            b["failed_at"] = b["created_at"]
        self.batches[b["id"]] = b
        return 200, _batch_object(b), "application/json"

    def _advance(self, b: dict) -> None:
        if b["status"] not in ("validating", "in_progress"):
            return
        b["polls"] += 1
        script = b["script"]
        seconds = script.get("seconds", self.batch_seconds if "polls" not in script else None)
        if seconds is not None:
            done = time.monotonic() - b["created_monotonic"] >= float(seconds)
        else:
            done = b["polls"] >= int(script.get("polls", self.batch_polls))
        if not done:
            b["status"] = "in_progress"
            return
        end = script.get("status", "completed")
        now = int(time.time())
        if end == "failed":
            b["status"], b["failed_at"] = "failed", now
            b["errors"] = [
                dict(e) for e in script.get("errors") or [{"code": "injected", "message": "injected failure"}]
            ]
            return
        answer_upto = len(b["lines"]) if end == "completed" else int(script.get("complete", 0))
        garbage = list(script.get("garbage") or [])
        out, err = [], []
        for i, line in enumerate(b["lines"]):
            if i >= answer_upto:
                code = {"expired": "batch_expired", "cancelled": "batch_cancelled"}.get(end, "batch_" + end)
                err.append(
                    {
                        "id": f"batch_req_{i}",
                        "custom_id": line["custom_id"],
                        "response": None,
                        "error": {"code": code, "message": f"This request was not executed: the batch {end}."},
                    }
                )
                continue
            kind, record = self._batch_line(i, line)
            user = _user_message(line["body"].get("messages") or [])
            if kind == "ok" and any(g in user for g in garbage):
                out.append(None)  # written as a line that is not JSON
                continue
            (out if kind == "ok" else err).append(record)
        b["counts"] = {"total": len(b["lines"]), "completed": len(out), "failed": len(err)}
        if out:
            text = "".join("this line is not JSON {\n" if r is None else json.dumps(r) + "\n" for r in out)
            b["output_file_id"] = self._store_output(b, "output", text)
        if err:
            b["error_file_id"] = self._store_output(b, "errors", "".join(json.dumps(r) + "\n" for r in err))
        b["status"] = end
        b[f"{end}_at"] = now

    def _store_output(self, b: dict, what: str, text: str) -> str:
        data = text.encode("utf-8")
        f = {
            "id": self._new_id("file"),
            "purpose": "batch_output",
            "filename": f"{b['id']}_{what}.jsonl",
            "bytes": len(data),
            "created_at": int(time.time()),
            "data": data,
        }
        self.files[f["id"]] = f
        return f["id"]

    def _batch_line(self, i: int, line: dict) -> tuple[str, dict]:
        """One input line answered like a chat request: ("ok" | "error", its output-file record)."""
        self.batch_requests += 1
        body = line["body"]
        messages = body.get("messages") or []
        user_message = _user_message(messages)
        record = {"id": f"batch_req_{i}", "custom_id": line["custom_id"], "response": None, "error": None}
        fault = self._take_fault(-1, user_message)  # -1: request-number faults are for online requests
        content = None
        if fault is not None:
            name = next((k for k in ("status", "hang", "content", "drop") if k in fault), "other")
            self.faults_applied[name] += 1
            if fault.get("drop") or "hang" in fault:
                record["error"] = {"code": "server_error", "message": "The server had an error processing the request."}
                return "error", record
            if "status" in fault and int(fault["status"]) != 200:
                status = int(fault["status"])
                msg = fault.get("message") or f"injected {status}"
                record["response"] = {
                    "status_code": status,
                    "request_id": f"req-{i}",
                    "body": {
                        "error": {"message": msg, "type": "server_error" if status >= 500 else "invalid_request_error"}
                    },
                }
                return "error", record
            if "content" in fault:
                content = str(fault["content"])
        if content is None:
            content = self.answer_fn(user_message)
        record["response"] = {
            "status_code": 200,
            "request_id": f"req-{i}",
            "body": _chat_completion(f"chatcmpl-batch-{i}", body.get("model") or self.model, messages, content),
        }
        return "ok", record


def _chat_completion(completion_id: str, model: str, messages: list, content: str) -> dict:
    """A ``chat.completion`` object answering ``messages`` with ``content`` (token counts by whitespace words)."""
    prompt_tokens = sum(_count_tokens(str(m.get("content") or "")) for m in messages)
    completion_tokens = _count_tokens(content)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _user_message(messages: list) -> str:
    user_message = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    if not isinstance(user_message, str):  # content parts
        user_message = "".join(p.get("text", "") for p in user_message if isinstance(p, dict))
    return user_message


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data body: {name: (filename, bytes)}."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or not m:
        raise ValueError(f"expected multipart/form-data with a boundary, got {content_type!r}")
    delimiter = b"--" + m.group(1).encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = next(
            (line for line in head.decode("latin-1").split("\r\n") if line.lower().startswith("content-disposition")),
            "",
        )
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if name:
            fields[name.group(1)] = (filename.group(1) if filename else None, data.removesuffix(b"\r\n"))
    return fields


def _validate_batch_file(data: bytes, max_requests: int) -> tuple[list[dict], list[dict]]:
    """(lines, errors) of a batch input file, checked as the real API checks one."""
    lines, errors, seen = [], [], set()
    for n, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            ok = (
                isinstance(line, dict)
                and isinstance(line.get("custom_id"), str)
                and line.get("method") == "POST"
                and line.get("url") == "/v1/chat/completions"
                and isinstance(line.get("body"), dict)
            )
        except ValueError:
            ok = False
        if not ok:
            errors.append({"code": "invalid_request", "message": "not a valid batch request line", "line": n})
        elif line["custom_id"] in seen:
            errors.append({"code": "duplicate_custom_id", "message": "custom_id values must be unique", "line": n})
        else:
            seen.add(line["custom_id"])
            lines.append(line)
    if len(lines) > max_requests:
        errors.append(
            {"code": "too_many_requests", "message": f"a batch holds at most {max_requests} requests", "line": None}
        )
    return lines, errors


def _file_object(f: dict) -> dict:
    return {
        "id": f["id"],
        "object": "file",
        "bytes": f["bytes"],
        "created_at": f["created_at"],
        "filename": f["filename"],
        "purpose": f["purpose"],
        "status": "processed",
    }


def _batch_object(b: dict) -> dict:
    obj = {
        k: b.get(k)
        for k in (
            "id",
            "endpoint",
            "input_file_id",
            "completion_window",
            "status",
            "output_file_id",
            "error_file_id",
            "created_at",
            "metadata",
        )
    }
    for stamp in ("in_progress_at", "completed_at", "failed_at", "expired_at", "cancelled_at"):
        obj[stamp] = b.get(stamp)
    obj["object"] = "batch"
    obj["request_counts"] = dict(b["counts"])
    obj["errors"] = (
        {
            "object": "list",
            "data": [
                {"code": e.get("code"), "message": e.get("message"), "param": None, "line": e.get("line")}
                for e in b["errors"]
            ],
        }
        if b["errors"]
        else None
    )
    return obj


def _encode_faults(faults: dict | None) -> list[list]:
    out = []
    for key, items in (faults or {}).items():
        if isinstance(items, dict):
            items = [items]
        kind = "nth" if isinstance(key, int) and not isinstance(key, bool) else "substr"
        out.append([kind, key if kind == "nth" else str(key), [dict(f) for f in items]])
    return out


async def _serve(core: _ServerCore, host: str, port: int, started: Callable[[int], None], stop: asyncio.Event) -> None:
    server = await asyncio.start_server(core.handle_connection, host, port, backlog=1024, limit=1 << 22)
    started(server.sockets[0].getsockname()[1])
    try:
        await stop.wait()
    finally:
        server.close()
        # Cancel handler tasks (hanging requests) so close() does not wait for them.
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()


# --------------------------------------------------------------------------- public API


class OpenAICompatServer:
    """Context manager running the local server; see the module docstring.

    Args:
        latency_s: fixed delay before every answer (also error answers).
        faults: ``{substring or request number: [fault, ...]}``.
        answer_fn: ``f(user_message) -> content``; a callable or "module:function".
            In subprocess mode a callable must be importable (module-level).
        require_api_key: when set, any other bearer token gets 401.
        mode: "subprocess" (default) or "thread".
        host: bind address (127.0.0.1).
        use_uvloop: subprocess mode: run the server on uvloop when it is installed
            (keeps the server's own overhead out of latency-sensitive benchmarks).
    """

    def __init__(
        self,
        latency_s: float = 0.0,
        faults: dict[str | int, list[dict]] | None = None,
        answer_fn: Callable[[str], str] | str | None = None,
        require_api_key: str | None = None,
        mode: str = "subprocess",
        host: str = "127.0.0.1",
        startup_timeout_s: float = 20.0,
        use_uvloop: bool = True,
        batch_polls: int = 2,
        batch_seconds: float | None = None,
        batch_script: list[dict] | None = None,
        batch_max_requests: int = 50_000,
    ) -> None:
        if mode not in ("subprocess", "thread"):
            raise ValueError("mode must be 'subprocess' or 'thread'")
        self.latency_s = latency_s
        self.faults = faults
        self.answer_fn = answer_fn
        self.require_api_key = require_api_key
        self.mode = mode
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.use_uvloop = use_uvloop
        self.batch_options = {
            "batch_polls": batch_polls,
            "batch_seconds": batch_seconds,
            "batch_script": list(batch_script or []),
            "batch_max_requests": batch_max_requests,
        }
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.core: _ServerCore | None = None  # thread mode only

    # ---- addresses

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What to give an OpenAI client as ``base_url``."""
        return self.url + "/v1"

    # ---- lifecycle

    def start(self) -> OpenAICompatServer:
        if self.port is not None:
            return self
        if self.mode == "thread":
            self._start_thread()
        else:
            self._start_subprocess()
        return self

    def _config(self) -> dict:
        return {
            "latency_s": self.latency_s,
            "faults": _encode_faults(self.faults),
            "answer_fn": _answer_fn_spec(self.answer_fn) if self.mode == "subprocess" else None,
            "require_api_key": self.require_api_key,
            "host": self.host,
            "use_uvloop": self.use_uvloop,
            **self.batch_options,
        }

    def _start_subprocess(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PYTHONUNBUFFERED"] = "1"
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", json.dumps(self._config())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            env=env,
        )
        # Read "PORT <n>" with a deadline (reader thread, as pipes do not time out).
        box: dict[str, Any] = {}

        def read_port() -> None:
            box["line"] = self._proc.stdout.readline()

        t = threading.Thread(target=read_port, daemon=True)
        t.start()
        t.join(self.startup_timeout_s)
        line = box.get("line", b"").decode().strip()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"test server did not start (got {line!r})")
        self.port = int(line.split()[1])

    def _start_thread(self) -> None:
        self.core = _ServerCore(
            latency_s=self.latency_s,
            faults=[tuple(f) for f in _encode_faults(self.faults)],
            answer_fn=self.answer_fn,
            require_api_key=self.require_api_key,
            **self.batch_options,
        )
        ready = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop = asyncio.Event()

            def started(port: int) -> None:
                box["port"] = port
                ready.set()

            try:
                loop.run_until_complete(_serve(self.core, self.host, 0, started, self._stop))
                loop.run_until_complete(asyncio.sleep(0))
            except BaseException as exc:  # pragma: no cover - surfaced below
                box["error"] = exc
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="openai-compat-server", daemon=True)
        self._thread.start()
        if not ready.wait(self.startup_timeout_s) or "port" not in box:
            self.stop()
            raise RuntimeError(f"test server did not start: {box.get('error')!r}")
        self.port = box["port"]

    def stop(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            try:
                if proc.stdin:
                    proc.stdin.close()  # child exits on stdin EOF
            except Exception:
                pass
            try:
                proc.terminate()
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            finally:
                if proc.stdout:
                    proc.stdout.close()
        if self._thread is not None:
            thread, self._thread = self._thread, None
            if self._loop is not None and self._stop is not None and not self._loop.is_closed():
                try:
                    self._loop.call_soon_threadsafe(self._stop.set)
                except RuntimeError:
                    pass
            thread.join(timeout=5)
        self.port = None

    def __enter__(self) -> OpenAICompatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; the context manager is the real path
        try:
            self.stop()
        except Exception:
            pass

    # ---- counters

    def _get(self, path: str, method: str = "GET") -> dict:
        req = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict:
        """requests, per_prompt {hash: n}, status_counts, faults_applied, max_in_flight, ..."""
        return self._get("/stats")

    def request_count(self) -> int:
        """Chat-completion requests received since start (or the last reset)."""
        return int(self.stats()["requests"])

    def prompt_count(self, user_message: str) -> int:
        """Requests received for this exact user message."""
        return int(self.stats()["per_prompt"].get(prompt_hash(user_message), 0))

    def max_in_flight(self) -> int:
        return int(self.stats()["max_in_flight"])

    def reset_stats(self) -> None:
        self._get("/reset", method="POST")

    def uploaded_files(self) -> list[dict]:
        """Every file on the server (uploads and batch outputs): id, purpose, filename, bytes and text."""
        return self._get("/debug/files")  # type: ignore[return-value]


# --------------------------------------------------------------------------- child process


def _child_main(config_json: str) -> None:
    cfg = json.loads(config_json)
    core = _ServerCore(
        latency_s=cfg["latency_s"],
        faults=[tuple(f) for f in cfg["faults"]],
        answer_fn=cfg.get("answer_fn"),
        require_api_key=cfg.get("require_api_key"),
        **{k: cfg[k] for k in ("batch_polls", "batch_seconds", "batch_script", "batch_max_requests") if k in cfg},
    )

    def watch_parent() -> None:
        # The parent holds our stdin; EOF means it closed us or died.
        try:
            sys.stdin.buffer.read()
        finally:
            os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()

    async def main() -> None:
        stop = asyncio.Event()

        def started(port: int) -> None:
            sys.stdout.write(f"PORT {port}\n")
            sys.stdout.flush()

        await _serve(core, cfg.get("host", "127.0.0.1"), 0, started, stop)

    try:
        if cfg.get("use_uvloop"):
            try:
                import uvloop
            except ImportError:
                uvloop = None
            if uvloop is not None:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runner.run(main())
                return
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        _child_main(sys.argv[2])
    else:
        # Manual use: python tests/openai_server.py [latency_s]
        lat = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
        with OpenAICompatServer(latency_s=lat, mode="thread") as srv:
            print(f"serving on {srv.base_url} (Ctrl-C to stop)", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
