"""The judge: one interface, two backends (``openai`` over HTTP, ``heuristic`` offline)."""

from __future__ import annotations

from typing import Callable

import dagster as dg

from lm_mixup_assets.lib.heuristic_judge import score_pair
from lm_mixup_assets.lib.judging import CachedRating, estimate_cost_usd, rate_with_cache
from lm_mixup_assets.lib.rubric import (
    RUBRIC_VERSION,
    JudgeOutcome,
    judge_cache_key,
    render_judge_prompt,
)

from .warehouse import WarehouseResource

BACKENDS = ("openai", "heuristic")


class JudgeResource(dg.ConfigurableResource):
    """Rates (prompt, completion) pairs on the 1-10 rubric, through the warehouse's judge cache.

    ``openai`` talks to any OpenAI-compatible ``base_url`` (OpenAI, a vLLM or
    llama.cpp server, Ollama) with bounded concurrency, timeouts and retries;
    the key comes from ``OPENAI_API_KEY`` only. ``heuristic`` is deterministic
    and offline (see ``lib/heuristic_judge.py``).
    """

    backend: str = "heuristic"
    model: str = "heuristic-v1"
    base_url: str = ""
    api_key: str = ""
    rubric_version: str = RUBRIC_VERSION
    concurrency: int = 16
    timeout_s: float = 60.0
    max_retries: int = 5
    max_parse_retries: int = 2
    max_tokens: int = 128

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise dg.Failure(f"judge backend {self.backend!r} is unknown; choose one of {BACKENDS}")
        if self.backend == "openai":
            if not self.base_url:
                raise dg.Failure("judge backend 'openai' needs base_url (LM_MIXUP_JUDGE_BASE_URL), e.g. http://127.0.0.1:8000/v1")
            if not self.api_key:
                raise dg.Failure("judge backend 'openai' needs OPENAI_API_KEY in the environment (any value, e.g. EMPTY, for a local server)")

    @property
    def model_label(self) -> str:
        return self.model if self.backend == "openai" else f"{self.backend}:{self.model}"

    def rate_pairs(
        self,
        prompts: list[str],
        completions: list[str],
        warehouse: WarehouseResource,
        progress: Callable[[str], None] | None = None,
    ) -> tuple[CachedRating, list[str]]:
        """Rate each pair; returns the outcomes (with cache hits marked) and their cache keys."""
        self.validate()
        rendered = [render_judge_prompt(p, c, self.rubric_version) for p, c in zip(prompts, completions)]
        keys = [judge_cache_key(self.backend, self.model, self.rubric_version, r) for r in rendered]
        pairs_by_prompt = {r: (p, c) for r, p, c in zip(rendered, prompts, completions)}

        if self.backend == "heuristic":
            def rate_missing(todo: list[str], on_result) -> list[JudgeOutcome]:
                out = []
                for i, r in enumerate(todo):
                    o = JudgeOutcome(status="ok", scores=score_pair(*pairs_by_prompt[r]), attempts=1)
                    on_result(i, o)
                    out.append(o)
                return out
            stats_source = None
        else:
            from lm_mixup_assets.lib.openai_judge import OpenAIJudgeClient

            client = OpenAIJudgeClient(
                base_url=self.base_url,
                api_key=self.api_key,
                model=self.model,
                concurrency=self.concurrency,
                timeout_s=self.timeout_s,
                max_retries=self.max_retries,
                max_parse_retries=self.max_parse_retries,
                max_tokens=self.max_tokens,
            )
            rate_missing = client.rate_all
            stats_source = client

        result = rate_with_cache(
            rendered, keys, warehouse.connect, rate_missing,
            backend=self.backend, model=self.model, rubric_version=self.rubric_version, progress=progress,
        )
        if stats_source is not None:
            result.stats = dict(stats_source.stats)
        return result, keys

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        return estimate_cost_usd(self.model, prompt_tokens, completion_tokens) if self.backend == "openai" else 0.0
