"""The judge over any OpenAI-compatible chat-completions API: rubric messages in, four scores out.

Pure Python (no Dagster import): the asset layer wraps this, persists each
outcome as it arrives (``on_result``), and owns the cache. The HTTP side
(concurrency, transport retries, backoff, counters) is
:class:`~.chat_transport.ChatTransport`; this module is the judge's policy:
which messages a rendered prompt becomes, which answer counts (four integers,
:func:`~.rubric.parse_judge_answer`; anything else is re-asked up to
``max_parse_retries`` times) and what the outcome says. It never invents a
score: a row is ``ok`` with four parsed integers, or it is a ``parse_error`` /
``api_error`` with ``scores=None`` and the reason.

:class:`OpenAIBatchJudgeClient` sends the same request bodies through the
Batch API (:mod:`.openai_batch`, half the price) and reads the answers with the
same parser and statuses: an errored or missing line is ``api_error``; an
answer that does not parse is re-asked online (``max_parse_retries`` asks in
all, at the online price; 0 records it as ``parse_error`` at once), as the
online judge would have re-asked it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from lm_mixup_assets.lib.chat_transport import STAT_KEYS, AnswerRejected, ChatClient
from lm_mixup_assets.lib.openai_batch import (
    BatchLine,
    BatchPending,
    BatchReport,
    BatchRunner,
    BatchStore,
)
from lm_mixup_assets.lib.rubric import (
    SYSTEM_PROMPT,
    JudgeOutcome,
    JudgeParseError,
    JudgeRequest,
    parse_judge_answer,
)

__all__ = ["OpenAIBatchJudgeClient", "OpenAIJudgeClient"]

OnResult = Callable[[int, JudgeOutcome], None]


def _messages(prompt: str | JudgeRequest) -> list[dict]:
    if isinstance(prompt, JudgeRequest):  # a rubric's own system message (or none) and user message
        return prompt.messages()
    # a bare rendered string: pool_quality_v1's system message
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]


def _accept_scores(content: str | None) -> dict[str, int]:
    try:
        return parse_judge_answer(content)  # type: ignore[arg-type]
    except JudgeParseError as exc:
        raise AnswerRejected(str(exc)) from None


class OpenAIJudgeClient(ChatClient):
    """Judge many rendered prompts concurrently through an OpenAI-compatible API.

    Args:
        base_url, api_key, model, max_parse_retries (re-asks per row when the
            answer does not parse), ``transport_options``: see
            :class:`~.chat_transport.ChatClient` (the key never reaches an
            outcome or an error text).
        temperature, max_tokens: sent with each request.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        *,
        temperature: float = 0.0,
        max_tokens: int = 128,
        **options: Any,
    ) -> None:
        super().__init__(base_url, api_key, model, **options)
        self.fields = {"temperature": temperature, "max_tokens": max_tokens}

    def rate_all(self, prompts: list[str | JudgeRequest], on_result: OnResult | None = None) -> list[JudgeOutcome]:
        """Judge every rendered prompt; returns one outcome per prompt, in order.

        A prompt is a :class:`JudgeRequest` (system message, or none, and user
        message, as a rubric renders it) or a bare user message string, sent
        with :data:`SYSTEM_PROMPT`. ``on_result(index, outcome)`` and the event
        loop are as in :meth:`~.chat_transport.ChatTransport.run_all`. Resets :attr:`stats`.
        """
        return self.transport.run_all(list(prompts), self._rate_one, on_result)

    def request_body(self, prompt: str | JudgeRequest) -> dict:
        """The JSON body of the chat request that judges ``prompt`` (online and in a batch alike)."""
        return self.transport.request_body(_messages(prompt), self.fields)

    async def _rate_one(self, session: Any, prompt: str | JudgeRequest) -> JudgeOutcome:
        r = await self.transport.ask(session, _messages(prompt), self.fields, _accept_scores, self.max_parse_retries)
        return JudgeOutcome(
            status=r.status,
            scores=r.value if r.status == "ok" else None,
            raw_answer=r.content,
            error=r.error,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            attempts=r.attempts,
            latency_s=r.latency_s,
        )


class OpenAIBatchJudgeClient(OpenAIJudgeClient):
    """The judge through the OpenAI Batch API: same bodies, parser and statuses as :class:`OpenAIJudgeClient`.

    Args:
        store: where batches are recorded, so a restarted run resumes its batch (:class:`~.openai_batch.BatchStore`).
        label: part of each batch's request-set key (the rubric versions).
        poll_interval_s, max_wait_s, max_requests_per_batch, max_bytes_per_batch, progress, sleep,
            defer_collected: see :class:`~.openai_batch.BatchRunner` (with ``defer_collected``, call
            :meth:`confirm_collected` once the outcomes reported to ``on_result`` are durable).
        The rest as :class:`OpenAIJudgeClient` (its transport sends the online re-asks of answers that
        did not parse; ``timeout_s`` and ``max_retries`` also bound each Batch API management call).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        *,
        store: BatchStore,
        label: str = "",
        poll_interval_s: float = 60.0,
        max_wait_s: float = 26 * 3600.0,
        max_requests_per_batch: int | None = None,
        max_bytes_per_batch: int | None = None,
        progress: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        defer_collected: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(base_url, api_key, model, **options)
        limits = {
            k: v
            for k, v in (("max_requests", max_requests_per_batch), ("max_bytes", max_bytes_per_batch))
            if v is not None
        }
        self.runner = BatchRunner(
            base_url,
            api_key,
            store,
            model=model,
            label=label,
            poll_interval_s=poll_interval_s,
            max_wait_s=max_wait_s,
            timeout_s=self.transport.timeout_s,
            max_retries=self.transport.max_retries,
            progress=progress,
            sleep=sleep,
            defer_collected=defer_collected,
            **limits,
        )
        self._batch_parse_errors = 0

    @property
    def report(self) -> BatchReport:
        """What the last :meth:`rate_all` did with batches (also after it raised)."""
        return self.runner.report

    def confirm_collected(self) -> None:
        """The outcomes reported so far are durable: the batches collected need not be collected again."""
        self.runner.confirm_collected()

    @property
    def stats(self) -> dict[str, int]:  # type: ignore[override]
        """The online re-asks' transport counters plus the batches' (``requests_sent`` counts both)."""
        online = self.transport.stats
        batch = self.report.stats()
        return {
            **online,
            **batch,
            "batch_parse_errors": self._batch_parse_errors,
            "requests_sent": online["requests_sent"] + batch["batch_requests"],
            # The first online ask after an unparsable batch answer is a re-ask too.
            "parse_retries": online["parse_retries"] + (self._batch_parse_errors if self.max_parse_retries else 0),
        }

    def rate_all(
        self,
        items: Sequence[tuple[str, Any]],  # type: ignore[override]
        on_result: OnResult | None = None,
        render: Callable[[Any], str | JudgeRequest] | None = None,
    ) -> list[JudgeOutcome]:
        """Judge ``(custom_id, prompt)`` pairs (custom_id: the row's cache key, unique); one outcome each, in order.

        ``render``: when given, the second item of each pair is what it renders into the prompt (e.g. a
        row number), called only while that row's batch file is written or it is asked again online, so a
        large pool never holds every prompt at once.

        ``on_result(index, outcome)`` is called once per row as soon as it is final: when its batch is
        collected, or after its online re-asks. Raises :class:`~.openai_batch.BatchPending` when batches
        are still running after ``max_wait_s`` (rows of batches already collected were reported).
        """
        items = list(items)
        prompt_of: Callable[[Any], str | JudgeRequest] = render or (lambda p: p)
        self.transport.stats = dict.fromkeys(STAT_KEYS, 0)
        self._batch_parse_errors = 0
        outcomes: list[JudgeOutcome | None] = [None] * len(items)
        index = {cid: i for i, (cid, _) in enumerate(items)}
        reask: list[tuple[int, BatchLine]] = []
        started = time.perf_counter()

        def final(i: int, outcome: JudgeOutcome) -> None:
            outcomes[i] = outcome
            if on_result is not None:
                on_result(i, outcome)

        def on_line(line: BatchLine) -> None:
            i = index[line.custom_id]
            common = {
                "prompt_tokens": line.prompt_tokens,
                "completion_tokens": line.completion_tokens,
                "attempts": 1,
                "latency_s": time.perf_counter() - started,
            }
            if line.error is not None:
                final(i, JudgeOutcome(status="api_error", error=self._redact(line.error), **common))
                return
            try:
                scores = _accept_scores(line.content)
            except AnswerRejected as exc:
                self._batch_parse_errors += 1
                if self.max_parse_retries:
                    reask.append((i, line))
                else:
                    final(
                        i,
                        JudgeOutcome(
                            status="parse_error", raw_answer=line.content, error=self._redact(str(exc)), **common
                        ),
                    )
                return
            final(i, JudgeOutcome(status="ok", scores=scores, raw_answer=line.content, **common))

        try:
            self.runner.run(
                [cid for cid, _ in items], lambda cid: self.request_body(prompt_of(items[index[cid]][1])), on_line
            )
        except BatchPending:
            if reask:  # rows of the batches already collected are finished before the run stops
                self._reask_online(items, reask, final, prompt_of)
            raise
        if reask:
            self._reask_online(items, reask, final, prompt_of)
        for i, o in enumerate(outcomes):
            if o is None:  # the runner answers every request; this only guards the contract
                final(i, JudgeOutcome(status="api_error", error="no answer from the Batch API", attempts=1))
        return outcomes  # type: ignore[return-value]

    def _reask_online(
        self,
        items: list,
        reask: list[tuple[int, BatchLine]],
        final: Callable[[int, JudgeOutcome], None],
        prompt_of: Callable[[Any], str | JudgeRequest],
    ) -> None:
        """Ask the rows whose batch answer did not parse again, online: ``max_parse_retries`` asks in all."""

        async def handle(session: Any, job: tuple[int, BatchLine]) -> JudgeOutcome:
            i, line = job
            r = await self.transport.ask(
                session, _messages(prompt_of(items[i][1])), self.fields, _accept_scores, self.max_parse_retries - 1
            )
            return JudgeOutcome(
                status=r.status,
                scores=r.value if r.status == "ok" else None,
                raw_answer=r.content if r.content is not None else line.content,
                error=r.error,
                prompt_tokens=line.prompt_tokens + r.prompt_tokens,
                completion_tokens=line.completion_tokens + r.completion_tokens,
                attempts=1 + r.attempts,
                latency_s=r.latency_s,
            )

        self.transport.run_all(reask, handle, lambda k, o: final(reask[k][0], o))
