"""The generator: one resource for every stage that writes text (MIXTURE, distillation)."""

from __future__ import annotations

from typing import Callable

import dagster as dg

from lm_mixup_assets.lib.generation import (
    GenerationParams,
    TransformersGenerator,
    VllmGenerator,
    generate_with_cache,
    generation_cache_key,
    model_fingerprint,
)
from lm_mixup_assets.lib.models import resolve_causal_lm
from lm_mixup_assets.lib.rubric import JudgeOutcome

from .warehouse import WarehouseResource

BACKENDS = ("transformers", "vllm", "openai")
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
    (any OpenAI-compatible URL; key from ``OPENAI_API_KEY``). Greedy by default. Results
    are cached in the warehouse by (backend, model, sampling parameters, chat)."""

    backend: str = "transformers"
    model: str = "smollm2"
    base_url: str = ""
    api_key: str = ""
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

    def generate(self, chats: list[list[dict]], warehouse: WarehouseResource, model: str | None = None,
                 progress: Callable[[str], None] | None = None, **param_overrides) -> tuple[list[JudgeOutcome], list[bool]]:
        """One outcome per chat (text in ``raw_answer``) and whether it came from the cache."""
        if self.backend not in BACKENDS:
            raise dg.Failure(f"generator backend {self.backend!r} is unknown; choose one of {BACKENDS}")
        model = model or self.model
        params = self.params(**param_overrides)
        # Local checkpoints are keyed by their files too: a re-trained folder is a new model.
        resolved = model if self.backend == "openai" else resolve_causal_lm(model, str(warehouse.artifacts_dir))
        label = model if self.backend == "openai" else model_fingerprint(resolved)
        keys = [generation_cache_key(self.backend, label, params, c) for c in chats]
        if self.backend == "openai":
            if not self.base_url or not self.api_key:
                raise dg.Failure("generator backend 'openai' needs base_url and OPENAI_API_KEY")
            extra = {"repetition_penalty": params.repetition_penalty} if params.repetition_penalty != 1.0 else {}
            client = _openai_client(extra, base_url=self.base_url, api_key=self.api_key, model=model,
                                    concurrency=self.concurrency, timeout_s=self.timeout_s,
                                    max_retries=self.max_retries, temperature=params.temperature,
                                    max_tokens=params.max_new_tokens)
            missing = client.complete_all
        else:
            engine = self._engine(resolved, label)

            def missing(todo, on_result):
                return engine.generate(todo, params, on_result)
        return generate_with_cache(chats, keys, warehouse.connect, missing, self.backend, model, params, progress=progress)
