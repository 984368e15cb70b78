"""The generator: one resource for every stage that writes text (MIXTURE, distillation)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg
from pydantic import Field

from lm_mixup_assets.lib.generation import (
    GenerationOutcome,
    GenerationParams,
    OpenAIGenerator,
    TransformersGenerator,
    VllmGenerator,
    generate_with_cache,
    generation_cache_key,
    model_fingerprint,
)
from lm_mixup_assets.lib.judging import estimate_cost_usd
from lm_mixup_assets.lib.models import resolve_causal_lm

from .warehouse import WarehouseResource

BACKENDS = ("transformers", "vllm", "openai")
# What GeneratorResource.generate(usage=...) reports; cost_usd is added when the model's price is known.
USAGE_KEYS = (
    "rows",
    "cache_hits",
    "generated",
    "http_requests",
    "retries",
    "batches",
    "prompt_tokens",
    "completion_tokens",
)
# The loaded model, kept for the next generate() of the same asset with the same configuration. One at a time:
# loading another model releases it, so a process never holds several; an asset releases it when it ends
# (GeneratorResource.session), so later steps of an in-process run find the GPU free.
_ENGINES: dict[tuple, object] = {}


def release_engines() -> None:
    """Close the loaded model and give its memory back (CUDA included) now; a no-op when none is loaded."""
    if not _ENGINES:
        return
    from lm_mixup_assets.lib.training import free_memory

    engines = list(_ENGINES.values())
    _ENGINES.clear()
    close = None
    try:
        while engines:
            close = getattr(engines.pop(), "close", None)
            if close is not None:
                close()
    finally:
        del close  # a bound method keeps its engine alive: gone before the memory is collected
        free_memory()


class GeneratorResource(dg.ConfigurableResource):
    """``transformers`` (batched, CPU or GPU), ``vllm`` (GPU; the ``gpu`` extra) or ``openai``
    (any OpenAI-compatible URL; key read at run time from the environment variable named by
    ``api_key_env``, never a config value). Greedy by default. Results are cached in the
    warehouse by (backend, model, sampling parameters, chat)."""

    backend: str = Field(
        "transformers",
        description="'transformers' (in process, any device), 'vllm' (in process, GPU) or 'openai' (an OpenAI-compatible server, e.g. vLLM serve).",
    )
    model: str = Field(
        "smollm2",
        min_length=1,
        description="'smollm2' (packaged, offline), an HF id or folder, or (openai backend) the served model name.",
    )
    base_url: str = Field("", description="OpenAI-compatible endpoint (openai backend); empty = the client's default.")
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="NAME of the environment variable that holds the openai backend's API key (read at run time, "
        "never stored; any value, e.g. EMPTY, for a local server). The key itself is never a config field.",
    )
    max_new_tokens: int = Field(256, ge=1, description="Longest generation in tokens (an asset may ask for fewer).")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (temperature > 0).")
    seed: int = Field(0, description="Sampling seed.")
    repetition_penalty: float = Field(
        1.0, gt=0, description="1 = off; the openai backend sends it as an extra body field (vLLM servers read it)."
    )
    batch_size: int = Field(8, ge=1, description="Prompts per batch (transformers / vllm backends).")
    device: str = Field(
        "auto", description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N' (transformers backend)."
    )
    concurrency: int = Field(16, ge=1, description="Requests in flight at once (openai backend).")
    timeout_s: float = Field(120.0, gt=0, description="Seconds before one request times out (then retried).")
    max_retries: int = Field(
        5, ge=0, description="Retries after 429/5xx/timeouts, with backoff; then the row is api_error."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one vLLM engine spans (vllm backend).")
    gpu_memory_utilization: float = Field(
        0.85,
        gt=0,
        le=1,
        description="Share of the GPU's memory one vLLM engine reserves (weights + KV cache; vllm backend). Capped "
        "at start to what is free, so a model another step left on the device lowers it instead of failing vLLM's "
        "start-up check; lower it by hand when another process shares the GPU.",
    )

    def params(self, **overrides) -> GenerationParams:
        base = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
        }
        return GenerationParams(**{**base, **overrides})

    def _engine(self, model_path: str, fingerprint: str):
        key = (
            self.backend,
            fingerprint,
            self.device,
            self.batch_size,
            self.tensor_parallel_size,
            self.gpu_memory_utilization,
        )
        if key not in _ENGINES:
            release_engines()
            if self.backend == "transformers":
                _ENGINES[key] = TransformersGenerator(model_path, device=self.device, batch_size=self.batch_size)
            else:
                _ENGINES[key] = VllmGenerator(
                    model_path,
                    tensor_parallel_size=self.tensor_parallel_size,
                    gpu_memory_utilization=self.gpu_memory_utilization,
                )
        return _ENGINES[key]

    @contextmanager
    def session(self) -> Iterator[GeneratorResource]:
        """``with generator.session():`` around an asset's generation: the engine it loads is released when the
        block ends, failed or not. Resources live for a whole run, so this is what frees the GPU per asset."""
        try:
            yield self
        finally:
            release_engines()

    def release(self) -> None:
        """Release the loaded engine now (e.g. between two models of one asset)."""
        release_engines()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # The run's end: nothing loaded by a step that did not use session() outlives the run.
        release_engines()

    def api_key(self) -> str:
        """The openai backend's key, from the environment at call time ("" when unset)."""
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def secrets(self) -> list[str]:
        """Values to redact from any text this generator's errors reach (its key, when set)."""
        return [k for k in (self.api_key(),) if k]

    def generate(
        self,
        chats: list[list[dict]],
        warehouse: WarehouseResource,
        model: str | None = None,
        progress: Callable[[str], None] | None = None,
        usage: dict | None = None,
        **param_overrides,
    ) -> tuple[list[GenerationOutcome], list[bool]]:
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
                raise dg.Failure(
                    f"generator backend 'openai' needs {self.api_key_env} set in the environment of the "
                    "run (any value, e.g. EMPTY, for a local server); keys are never config values"
                )
            client = OpenAIGenerator(
                base_url=self.base_url,
                api_key=self.api_key(),
                model=model,
                concurrency=self.concurrency,
                timeout_s=self.timeout_s,
                max_retries=self.max_retries,
            )

            def missing(todo, on_result):
                counters["generated"] += len(todo)
                return client.generate(todo, params, on_result)
        else:

            def missing(todo, on_result):
                engine = self._engine(resolved, label)  # loaded only when something is not in the cache
                counters["generated"] += len(todo)
                # transformers runs one generate() per batch_size chats; vLLM schedules the whole list itself.
                counters["batches"] += math.ceil(len(todo) / self.batch_size) if self.backend == "transformers" else 1
                return engine.generate(todo, params, on_result)

        outcomes, hits = generate_with_cache(
            chats,
            keys,
            warehouse.connect,
            missing,
            self.backend,
            model,
            params,
            progress=progress,
            flush_every=self.concurrency,
        )
        if usage is not None:
            fresh = [o for o, hit in zip(outcomes, hits) if not hit]
            counters.update(
                rows=len(chats),
                cache_hits=sum(hits),
                prompt_tokens=sum(o.prompt_tokens for o in fresh),
                completion_tokens=sum(o.completion_tokens for o in fresh),
            )
            if client is not None:
                counters.update(http_requests=client.stats["requests_sent"], retries=client.stats["retries"])
                cost = estimate_cost_usd(model, counters["prompt_tokens"], counters["completion_tokens"])
            else:
                cost = 0.0  # local compute, not billed per token
            usage.update(counters)
            if cost is not None:
                usage["cost_usd"] = round(cost, 6)
        return outcomes, hits
