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
"""

from __future__ import annotations

from typing import Any, Callable

from lm_mixup_assets.lib.chat_transport import AnswerRejected, ChatClient
from lm_mixup_assets.lib.rubric import (
    SYSTEM_PROMPT,
    JudgeOutcome,
    JudgeParseError,
    JudgeRequest,
    parse_judge_answer,
)

__all__ = ["OpenAIJudgeClient"]

OnResult = Callable[[int, JudgeOutcome], None]


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

    def __init__(self, base_url: str, api_key: str, model: str, *, temperature: float = 0.0, max_tokens: int = 128,
                 **options: Any) -> None:
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

    async def _rate_one(self, session: Any, prompt: str | JudgeRequest) -> JudgeOutcome:
        if isinstance(prompt, JudgeRequest):  # a rubric's own system message (or none) and user message
            messages = prompt.messages()
        else:  # a bare rendered string: pool_quality_v1's system message
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        r = await self.transport.ask(session, messages, self.fields, _accept_scores, self.max_parse_retries)
        return JudgeOutcome(status=r.status, scores=r.value if r.status == "ok" else None, raw_answer=r.content,
                            error=r.error, prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                            attempts=r.attempts, latency_s=r.latency_s)
