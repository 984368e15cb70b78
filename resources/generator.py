"""The generator: one resource for every stage that writes text (MIXTURE, distillation)."""

from __future__ import annotations

import math
import os
from typing import Callable

import dagster as dg
from pydantic import Field

from lm_mixup_assets.lib.generation import (
    GenerationParams,
    TransformersGenerator,
    VllmGenerator,
    generate_with_cache,
    generation_cache_key,
    model_fingerprint,
)
from lm_mixup_assets.lib.judging import estimate_cost_usd
from lm_mixup_assets.lib.models import resolve_causal_lm
from lm_mixup_assets.lib.rubric import JudgeOutcome

from .warehouse import WarehouseResource

BACKENDS = ("transformers", "vllm", "openai")
# What GeneratorResource.generate(usage=...) reports; cost_usd is added when the model's price is known.
USAGE_KEYS = ("rows", "cache_hits", "generated", "http_requests", "retries", "batches", "prompt_tokens",
              "completion_tokens")
_ENGINES: dict[tuple, object] = {}  # one loaded model per process and configuration


def _openai_client(extra_body: dict, **kwargs):
    """The OpenAI-compatible client, plus request fields outside the OpenAI schema.

    ``repetition_penalty`` is not an OpenAI parameter: vLLM's server (and servers built on
    it) read it from the request body, while api.openai.com rejects it (HTTP 400, recorded
    as api_error per row), so it is only sent when it differs from 1.0.  Imported here:
    the openai package loads only when this backend is used."""
    from lm_mixup_assets.lib.openai_judge import OpenAIJudgeClient

    class _WithExtras(OpenAIJudgeClient):
        async def _attempt(self, client, body: dict):
            return await super()._attempt(client, {**body, **extra_body})

    return (_WithExtras if extra_body else OpenAIJudgeClient)(**kwargs)


class GeneratorResource(dg.ConfigurableResource):
    """``transformers`` (batched, CPU or GPU), ``vllm`` (GPU; the ``gpu`` extra) or ``openai``
    (any OpenAI-compatible URL; key read at run time from the environment variable named by
    ``api_key_env``, never a config value). Greedy by default. Results are cached in the
    warehouse by (backend, model, sampling parameters, chat)."""

    backend: str = "transformers"
    model: str = "smollm2"
    base_url: str = ""
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="NAME of the environment variable that holds the openai backend's API key (read at run time, "
        "never stored; any value, e.g. EMPTY, for a local server). The key itself is never a config field.",
    )
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    repetition_penalty: float = 1.0  # 1 = off; the openai backend sends it as an extra body field (vLLM servers)
    batch_size: int = 8
    device: str = "auto"
    concurrency: int = 16
    timeout_s: float = 120.0
    max_retries: int = 5
    tensor_parallel_size: int = 1

    def params(self, **overrides) -> GenerationParams:
        base = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "repetition_penalty": self.repetition_penalty}
        return GenerationParams(**{**base, **overrides})

    def _engine(self, model_path: str, fingerprint: str):
        key = (self.backend, fingerprint, self.device, self.batch_size, self.tensor_parallel_size)
        if key not in _ENGINES:
            if self.backend == "transformers":
                _ENGINES[key] = TransformersGenerator(model_path, device=self.device, batch_size=self.batch_size)
            else:
                _ENGINES[key] = VllmGenerator(model_path, tensor_parallel_size=self.tensor_parallel_size)
        return _ENGINES[key]

    def api_key(self) -> str:
        """The openai backend's key, from the environment at call time ("" when unset)."""
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def secrets(self) -> list[str]:
        """Values to redact from any text this generator's errors reach (its key, when set)."""
        return [k for k in (self.api_key(),) if k]

    def generate(self, chats: list[list[dict]], warehouse: WarehouseResource, model: str | None = None,
                 progress: Callable[[str], None] | None = None, usage: dict | None = None,
                 **param_overrides) -> tuple[list[JudgeOutcome], list[bool]]:
        """One outcome per chat (text in ``raw_answer``) and whether it came from the cache.

        ``usage``, when given, is filled with what this call cost (see :data:`USAGE_KEYS`): ``rows``,
        ``cache_hits``, ``generated`` (rows sent to the backend), ``http_requests`` (openai: every attempt,
        retries and re-asks of empty answers included; 0 for local backends), ``retries``, ``batches``
        (local backends: ``generate`` calls of the engine), tokens, and ``cost_usd`` when the model's price is known.
        """
        if self.backend not in BACKENDS:
            raise dg.Failure(f"generator backend {self.backend!r} is unknown; choose one of {BACKENDS}")
        model = model or self.model
        params = self.params(**param_overrides)
        # Local checkpoints are keyed by their files too: a re-trained folder is a new model.
        resolved = model if self.backend == "openai" else resolve_causal_lm(model, str(warehouse.artifacts_dir))
        label = model if self.backend == "openai" else model_fingerprint(resolved)
        keys = [generation_cache_key(self.backend, label, params, c) for c in chats]
        counters = dict.fromkeys(USAGE_KEYS, 0)
        client = None
        if self.backend == "openai":
            if not self.base_url:
                raise dg.Failure("generator backend 'openai' needs base_url, e.g. http://127.0.0.1:8000/v1")
            if not self.api_key():
                raise dg.Failure(f"generator backend 'openai' needs {self.api_key_env} set in the environment of the "
                                 "run (any value, e.g. EMPTY, for a local server); keys are never config values")
            extra = {"repetition_penalty": params.repetition_penalty} if params.repetition_penalty != 1.0 else {}
            client = _openai_client(extra, base_url=self.base_url, api_key=self.api_key(), model=model,
                                    concurrency=self.concurrency, timeout_s=self.timeout_s,
                                    max_retries=self.max_retries, temperature=params.temperature,
                                    max_tokens=params.max_new_tokens)

            def missing(todo, on_result):
                counters["generated"] += len(todo)
                return client.complete_all(todo, on_result)
        else:
            engine = self._engine(resolved, label)

            def missing(todo, on_result):
                counters["generated"] += len(todo)
                # transformers runs one generate() per batch_size chats; vLLM schedules the whole list itself.
                counters["batches"] += math.ceil(len(todo) / self.batch_size) if self.backend == "transformers" else 1
                return engine.generate(todo, params, on_result)
        outcomes, hits = generate_with_cache(chats, keys, warehouse.connect, missing, self.backend, model, params,
                                             progress=progress, flush_every=self.concurrency)
        if usage is not None:
            fresh = [o for o, hit in zip(outcomes, hits) if not hit]
            counters.update(rows=len(chats), cache_hits=sum(hits),
                            prompt_tokens=sum(o.prompt_tokens for o in fresh),
                            completion_tokens=sum(o.completion_tokens for o in fresh))
            if client is not None:
                counters.update(http_requests=client.stats["requests_sent"], retries=client.stats["retries"])
                cost = estimate_cost_usd(model, counters["prompt_tokens"], counters["completion_tokens"])
            else:
                cost = 0.0  # local compute, not billed per token
            usage.update(counters)
            if cost is not None:
                usage["cost_usd"] = round(cost, 6)
        return outcomes, hits
