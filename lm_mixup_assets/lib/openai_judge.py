"""Rate rendered judge prompts through any OpenAI-compatible chat-completions API.

Pure Python (no Dagster import): the asset layer wraps this, persists each
outcome as it arrives (``on_result``), and owns the cache. This module never
invents a score: a row is ``ok`` with four parsed integers, or it is a
``parse_error`` / ``api_error`` with ``scores=None`` and the reason.

Design notes
------------
* One ``AsyncOpenAI`` client per :meth:`OpenAIJudgeClient.rate_all` call, with
  the SDK's own retries off (``max_retries=0``) so that every retry is ours,
  counted in :attr:`OpenAIJudgeClient.stats`.
* A fixed pool of ``concurrency`` worker tasks pulls row indices; the HTTP pool
  holds as many keep-alive connections, so connections are never churned.
* Requests go through ``with_raw_response`` and the JSON body is read directly,
  which skips building pydantic models for every answer (measurably cheaper at
  hundreds of rows per second on few cores).
* Transport retries (429, 408, 5xx, timeouts, connection errors) use exponential
  backoff with full jitter, or the server's ``Retry-After`` when it sends one,
  capped at ``backoff_max_s``. Other 4xx fail the row at once. An answer that
  does not parse is re-asked up to ``max_parse_retries`` times.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import threading
import time
from typing import Any, Callable

import openai

from lm_mixup_assets.lib.rubric import SYSTEM_PROMPT, JudgeOutcome, JudgeParseError, parse_judge_answer

__all__ = ["OpenAIJudgeClient"]

OnResult = Callable[[int, JudgeOutcome], None]

_STAT_KEYS = (
    "requests_sent",
    "retries",
    "rate_limited",
    "server_errors",
    "timeouts",
    "connection_errors",
    "client_errors",
    "bad_responses",
    "parse_retries",
)

_HINTS = {
    400: "check the model name and request parameters",
    401: "check OPENAI_API_KEY",
    403: "the key has no access to this model or project",
    404: "check the base URL (usually ends in /v1) and the model name",
    413: "the prompt is too large for this endpoint",
    422: "the server rejected the request parameters",
}

# Looks like an API key (OpenAI style) even when only part of it is echoed back.
_KEYISH = re.compile(r"\b(sk-[A-Za-z0-9_\-*.]{6,})")

# The Limits class of the HTTP library this openai version is built on
# (httpx for openai 1.x, httpx2 for later ones).
_Limits = type(openai.DEFAULT_CONNECTION_LIMITS)


class _Retryable(Exception):
    """A failed attempt worth retrying; ``wait_s`` is the server's Retry-After."""

    def __init__(self, message: str, kind: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.wait_s = wait_s


class _Fatal(Exception):
    """A failed attempt not worth retrying (4xx other than 408/429)."""


class OpenAIJudgeClient:
    """Judge many rendered prompts concurrently through an OpenAI-compatible API.

    Args:
        base_url: API root, e.g. ``https://api.openai.com/v1`` or a local vLLM's ``http://host:8000/v1``.
        api_key: bearer token; never written into any outcome, log or error text.
        model: model name sent with each request.
        concurrency: requests in flight at most (and keep-alive connections kept).
        timeout_s: limit for one HTTP attempt, start to end.
        max_retries: transport retries per row (429/408/5xx/timeout/connection error).
        max_parse_retries: re-asks per row when the answer does not parse.
        backoff_base_s, backoff_max_s: exponential backoff with full jitter,
            ``uniform(0, min(max, base * 2**n))``; a ``Retry-After`` from the
            server replaces it (capped at ``backoff_max_s``).
        temperature, max_tokens: sent with each request.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        concurrency: int = 32,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        max_parse_retries: int = 2,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        temperature: float = 0.0,
        max_tokens: int = 128,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if max_retries < 0 or max_parse_retries < 0:
            raise ValueError("retry counts must be >= 0")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.model = model
        self.concurrency = int(concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.max_parse_retries = int(max_parse_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.temperature = temperature
        self.max_tokens = max_tokens
        #: Counters of the last :meth:`rate_all` call.
        self.stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)

    def __repr__(self) -> str:  # keep the key out of reprs
        return f"OpenAIJudgeClient(base_url={self.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    # ------------------------------------------------------------------ sync entry

    def rate_all(self, prompts: list[str], on_result: OnResult | None = None) -> list[JudgeOutcome]:
        """Judge every rendered prompt; returns one outcome per prompt, in order.

        ``on_result(index, outcome)`` runs (on the event loop, so keep it quick)
        as soon as each row is final, so the caller can persist progressively;
        if it raises, the remaining requests are cancelled and the error
        propagates. Runs its own event loop; callable from any thread, also
        from one that already runs an event loop (a helper thread is used then).
        """
        prompts = list(prompts)
        self.stats = dict.fromkeys(_STAT_KEYS, 0)
        if not prompts:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._rate_all(prompts, on_result))
        # Called from inside a running loop (e.g. a notebook): run in a helper thread.
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = asyncio.run(self._rate_all(prompts, on_result))
            except BaseException as exc:  # re-raised in the caller's thread
                box["error"] = exc

        t = threading.Thread(target=target, name="openai-judge", daemon=True)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    # ------------------------------------------------------------------ async core

    async def _rate_all(self, prompts: list[str], on_result: OnResult | None) -> list[JudgeOutcome]:
        n_workers = min(self.concurrency, len(prompts))
        http_client = openai.DefaultAsyncHttpxClient(
            limits=_Limits(
                max_connections=n_workers,
                max_keepalive_connections=n_workers,
                keepalive_expiry=max(30.0, self.timeout_s),
            ),
            timeout=self.timeout_s,
        )
        client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key,
            max_retries=0,
            timeout=self.timeout_s,
            http_client=http_client,
        )
        create = client.chat.completions.with_raw_response.create
        results: list[JudgeOutcome | None] = [None] * len(prompts)
        indices = iter(range(len(prompts)))

        async def worker() -> None:
            for i in indices:  # shared iterator: each index goes to one worker
                outcome = await self._rate_one(create, prompts[i])
                results[i] = outcome
                if on_result is not None:
                    on_result(i, outcome)

        try:
            tasks = [asyncio.create_task(worker()) for _ in range(n_workers)]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            await client.close()
            await http_client.aclose()
        return results  # type: ignore[return-value]

    async def _rate_one(self, create: Any, prompt: str) -> JudgeOutcome:
        stats = self.stats
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
        started = time.perf_counter()
        attempts = transport_failures = parse_failures = 0
        prompt_tokens = completion_tokens = 0
        while True:
            attempts += 1
            stats["requests_sent"] += 1
            try:
                content, p_tok, c_tok = await self._attempt(create, messages)
            except _Retryable as exc:
                stats[exc.kind] += 1
                if transport_failures >= self.max_retries:
                    return JudgeOutcome(
                        status="api_error",
                        error=self._redact(f"gave up after {attempts} attempts: {exc}"),
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        attempts=attempts,
                        latency_s=time.perf_counter() - started,
                    )
                transport_failures += 1
                stats["retries"] += 1
                await asyncio.sleep(self._backoff(transport_failures, exc.wait_s))
                continue
            except _Fatal as exc:
                stats["client_errors"] += 1
                return JudgeOutcome(
                    status="api_error",
                    error=self._redact(str(exc)),
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    attempts=attempts,
                    latency_s=time.perf_counter() - started,
                )
            prompt_tokens += p_tok
            completion_tokens += c_tok
            try:
                scores = parse_judge_answer(content)
            except JudgeParseError as exc:
                if parse_failures >= self.max_parse_retries:
                    return JudgeOutcome(
                        status="parse_error",
                        raw_answer=content,
                        error=self._redact(str(exc)),
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        attempts=attempts,
                        latency_s=time.perf_counter() - started,
                    )
                parse_failures += 1
                stats["parse_retries"] += 1
                continue
            return JudgeOutcome(
                status="ok",
                scores=scores,
                raw_answer=content,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                attempts=attempts,
                latency_s=time.perf_counter() - started,
            )

    async def _attempt(self, create: Any, messages: list[dict]) -> tuple[str | None, int, int]:
        """One HTTP attempt: (content, prompt_tokens, completion_tokens) or raise _Retryable/_Fatal."""
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await create(
                    model=self.model,
                    messages=messages,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                )
                http_response = raw.http_response
                data = http_response.json()
        except (TimeoutError, openai.APITimeoutError):
            raise _Retryable(f"timed out after {self.timeout_s:g}s", "timeouts") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise _Retryable(f"connection error: {type(cause).__name__}: {cause}", "connection_errors") from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except ValueError as exc:  # body is not JSON
            raise _Retryable(f"malformed response body: {exc}", "bad_responses") from None

        try:
            choice = data["choices"][0]
            content = choice["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise _Retryable(f"unexpected response shape: {str(data)[:200]}", "bad_responses") from None
        usage = data.get("usage") or {}
        return content, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)

    def _status_error(self, exc: openai.APIStatusError) -> Exception:
        status = exc.status_code
        detail = _error_detail(exc)
        reason = _reason(exc)
        text = f"{status} {reason} from {self.base_url}"
        if status == 429:
            return _Retryable(f"{text}: {detail}", "rate_limited", _retry_after(exc.response.headers))
        if status >= 500 or status == 408:
            return _Retryable(f"{text}: {detail}", "server_errors", _retry_after(exc.response.headers))
        hint = _HINTS.get(status)
        return _Fatal(f"{text}: {hint}; server said: {detail}" if hint else f"{text}: {detail}")

    def _backoff(self, failure_number: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(0.0, retry_after), self.backoff_max_s)
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** (failure_number - 1)))
        return random.uniform(0.0, cap)

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return _KEYISH.sub("sk-***", text)


def _reason(exc: openai.APIStatusError) -> str:
    try:
        phrase = exc.response.reason_phrase
    except Exception:
        phrase = ""
    return phrase or "error"


def _error_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    message = None
    if isinstance(body, dict):
        err = body.get("error", body)
        message = err.get("message") if isinstance(err, dict) else err
    if not message:
        message = body if isinstance(body, str) and body else exc.message
    return str(message)[:300]


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date), else None."""
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return float(ms) / 1000.0
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())
