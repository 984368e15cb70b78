"""Text generation behind one call, three backends: transformers (CPU/GPU), vLLM (GPU), OpenAI-compatible HTTP.

Every backend takes a list of chats (lists of {role, content}) and returns one
:class:`GenerationOutcome` per chat (``raw_answer`` = the text, ``status`` ok or
a failure), so callers handle all three alike. Caching lives in
:func:`generate_with_cache`: a generation that succeeded is never paid twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .cache import DEFAULT_FLUSH_SECONDS, CacheTable, answer_with_cache

CACHE_DDL = """
create table if not exists generation_cache (
    cache_key varchar, backend varchar, model varchar, params varchar,
    text varchar, prompt_tokens bigint, completion_tokens bigint, created_at timestamp
)"""


@dataclass
class GenerationOutcome:
    """One generated text. ``raw_answer`` is the text (set when ``status == 'ok'``)."""

    status: str  # ok | api_error | parse_error (openai: still empty after its re-asks)
    raw_answer: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    latency_s: float = 0.0


OnResult = Callable[[int, GenerationOutcome], None]

GENERATION_CACHE = CacheTable(
    "generation_cache",
    CACHE_DDL,
    lambda r: GenerationOutcome(
        status="ok", raw_answer=r.text, prompt_tokens=int(r.prompt_tokens), completion_tokens=int(r.completion_tokens)
    ),
)


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    # > 1 discourages tokens already in the prompt or the text so far (HF / vLLM semantics; 1 = off).
    # The reference distils with 1.05 (data_process/inference.py).
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def model_fingerprint(model: str) -> str:
    """``model`` plus, for a local folder, the size and mtime of its weight and config files.

    A checkpoint re-trained into the same folder gets a new fingerprint, so the
    cache never serves the old model's text for it.
    """
    folder = Path(model)
    if not folder.is_dir():
        return model
    stats = sorted(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns)
        for f in folder.iterdir()
        if f.is_file() and (f.suffix in {".safetensors", ".bin"} or f.name == "config.json")
    )
    return f"{model}@{hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:12]}"


# Parameters added after the cache existed: left out of the key at their default, so older entries stay valid.
_KEY_OMIT_AT_DEFAULT = {"repetition_penalty": 1.0}


def _key_params(params: GenerationParams) -> dict:
    values = asdict(params)
    return {k: v for k, v in values.items() if not (k in _KEY_OMIT_AT_DEFAULT and v == _KEY_OMIT_AT_DEFAULT[k])}


def generation_cache_key(backend: str, model: str, params: GenerationParams, chat: list[dict]) -> str:
    payload = json.dumps([backend, model, _key_params(params), chat], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- transformers


class TransformersGenerator:
    """Batched generation with left padding; greedy unless temperature > 0."""

    def __init__(self, model_path: str, device: str = "auto", batch_size: int = 8, dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .models import pick_device

        self.device = pick_device(device)
        torch_dtype = {
            "auto": torch.bfloat16 if self.device.startswith("cuda") else torch.float32,
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(self.device).eval()
        self.batch_size = batch_size

    def generate(
        self, chats: list[list[dict]], params: GenerationParams, on_result: OnResult | None = None
    ) -> list[GenerationOutcome]:
        import torch

        out: list[GenerationOutcome] = []
        # Sort by length so each batch pads little; results go back in input order.
        texts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: dict[int, GenerationOutcome] = {}
        torch.manual_seed(params.seed)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            started = time.perf_counter()
            enc = self.tokenizer(
                [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            kwargs = {"max_new_tokens": params.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
            kwargs.update(
                {"do_sample": False}
                if params.greedy
                else {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
            )
            if params.repetition_penalty != 1.0:
                kwargs["repetition_penalty"] = params.repetition_penalty
            with torch.no_grad():
                generated = self.model.generate(**enc, **kwargs)
            new = generated[:, enc["input_ids"].shape[1] :]
            for row, i in enumerate(idx):
                n_new = int((new[row] != self.tokenizer.pad_token_id).sum())
                o = GenerationOutcome(
                    status="ok",
                    raw_answer=self.tokenizer.decode(new[row], skip_special_tokens=True).strip(),
                    prompt_tokens=int(enc["attention_mask"][row].sum()),
                    completion_tokens=n_new,
                    attempts=1,
                    latency_s=time.perf_counter() - started,
                )
                results[i] = o
                if on_result:
                    on_result(i, o)
        out = [results[i] for i in range(len(chats))]
        return out

    def close(self) -> None:
        """Drop the model's weights; the caller then runs ``free_memory`` once nothing else holds them."""
        self.model = None


# --------------------------------------------------------------------------- vLLM


# Left free when an engine's share is capped to the free memory: vLLM's own start-up allocations and CUDA context.
_VLLM_HEADROOM = 0.03
_VLLM_MIN_SHARE = 0.05


def fit_gpu_memory_utilization(
    requested: float, free_bytes: int, total_bytes: int, headroom: float = _VLLM_HEADROOM
) -> float:
    """The share of the GPU a vLLM engine may reserve: ``requested``, capped to what is free now.

    vLLM refuses to start when ``gpu_memory_utilization * total`` exceeds the free memory, so
    a model still resident on the device (an embedder, another engine, a trainer) would fail
    an engine asking for the default 0.85. Raises when less than 5% of the device is left.
    """
    if not 0 < requested <= 1:
        raise ValueError(f"gpu_memory_utilization={requested} must be in (0, 1]")
    available = free_bytes / total_bytes - headroom
    share = min(requested, math.floor(available * 1000) / 1000)
    if share < _VLLM_MIN_SHARE:
        raise RuntimeError(
            f"only {free_bytes / 2**30:.1f} of {total_bytes / 2**30:.1f} GiB of GPU memory are free: "
            "another process or model holds the device (release it, or run GPU steps in their own "
            "process: LM_MIXUP_EXECUTOR=multiprocess)"
        )
    return share


def shutdown_vllm(llm: Any) -> None:
    """Stop a vLLM ``LLM``'s engine and its distributed state, so the next engine in this process can start.

    Deleting the object is not enough: vLLM's engine core runs in a child process and its
    model-parallel groups are process globals. The caller drops its references afterwards
    and runs ``free_memory`` (``gc.collect`` + ``torch.cuda.empty_cache``).
    """
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del engine, core
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
    except ImportError:
        return
    destroy_model_parallel()
    destroy_distributed_environment()


class VllmGenerator:
    """vLLM offline engine (GPU). Imported only when chosen: CI and CPU machines never load it."""

    def __init__(
        self,
        model_path: str,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
    ):
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError("generator backend 'vllm' needs the GPU extra: pip install -e '.[gpu]'") from None
        import torch

        free, total = torch.cuda.mem_get_info()
        self.gpu_memory_utilization = fit_gpu_memory_utilization(gpu_memory_utilization, free, total)
        self.llm = LLM(
            model=model_path,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=max_model_len,
        )

    def close(self) -> None:
        """Shut the engine down (see :func:`shutdown_vllm`); the caller then runs ``free_memory``."""
        llm, self.llm = self.llm, None
        if llm is not None:
            shutdown_vllm(llm)

    def generate(
        self, chats: list[list[dict]], params: GenerationParams, on_result: OnResult | None = None
    ) -> list[GenerationOutcome]:
        from vllm import SamplingParams

        sampling = SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            repetition_penalty=params.repetition_penalty,
        )
        outs = self.llm.chat(chats, sampling, use_tqdm=False)
        results = []
        for i, o in enumerate(outs):
            r = GenerationOutcome(
                status="ok",
                raw_answer=o.outputs[0].text.strip(),
                prompt_tokens=len(o.prompt_token_ids),
                completion_tokens=len(o.outputs[0].token_ids),
                attempts=1,
            )
            results.append(r)
            if on_result:
                on_result(i, r)
        return results


# --------------------------------------------------------------------------- OpenAI-compatible HTTP


def _require_text(content: str | None) -> str:
    """What the openai generator accepts: any non-empty answer (an empty one is asked again)."""
    from .chat_transport import AnswerRejected

    if not content or not content.strip():
        raise AnswerRejected("empty completion")
    return content


class OpenAIGenerator:
    """Free-text chat completions through :class:`~.chat_transport.ChatTransport`.

    Sends ``temperature`` and ``max_tokens`` from the :class:`GenerationParams`;
    ``repetition_penalty`` is not an OpenAI parameter: vLLM's server (and servers
    built on it) read it from the request body, while api.openai.com rejects it
    (HTTP 400, recorded as api_error per row), so it is only sent when it differs
    from 1.0. An empty answer is re-asked up to ``max_parse_retries`` times.
    ``options``: those of :class:`~.chat_transport.ChatClient`.
    """

    def __init__(self, base_url: str, api_key: str, model: str, **options: Any):
        from .chat_transport import ChatClient  # here: the openai package loads only when this backend is used

        self.client = ChatClient(base_url, api_key, model, **options)

    # Read by the cache (commit batch size) and by the resource (usage counters).
    concurrency = property(lambda self: self.client.concurrency)
    stats = property(lambda self: self.client.stats)

    def generate(
        self, chats: list[list[dict]], params: GenerationParams, on_result: OnResult | None = None
    ) -> list[GenerationOutcome]:
        fields: dict[str, Any] = {"temperature": params.temperature, "max_tokens": params.max_new_tokens}
        if params.repetition_penalty != 1.0:
            fields["repetition_penalty"] = params.repetition_penalty

        transport = self.client.transport

        async def one(session: Any, chat: list[dict]) -> GenerationOutcome:
            r = await transport.ask(session, list(chat), fields, _require_text, self.client.max_parse_retries)
            return GenerationOutcome(
                status=r.status,
                raw_answer=r.content,
                error=r.error,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                attempts=r.attempts,
                latency_s=r.latency_s,
            )

        return transport.run_all(chats, one, on_result)


# --------------------------------------------------------------------------- cache


def generate_with_cache(
    chats: list[list[dict]],
    keys: list[str],
    connect,
    generate_missing: Callable[[list[list[dict]], OnResult], list[GenerationOutcome]],
    backend: str,
    model: str,
    params: GenerationParams,
    flush_every: int | None = None,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    progress: Callable[[str], None] | None = None,
    progress_seconds: float = 10.0,
) -> tuple[list[GenerationOutcome], list[bool]]:
    """Answer from ``generation_cache`` where possible; generate the rest, committing results as they arrive.

    Commits go through :class:`~.cache.CacheWriter` (``flush_every`` results, None = the
    client's concurrency or 16, or ``flush_seconds``), so a killed run keeps what it generated.
    """
    params_json = json.dumps(asdict(params))

    def row_of(key: str, o: GenerationOutcome) -> dict | None:
        if o.status != "ok":
            return None  # failures are not cached: the next run asks again
        return {
            "backend": backend,
            "model": model,
            "params": params_json,
            "text": o.raw_answer,
            "prompt_tokens": o.prompt_tokens,
            "completion_tokens": o.completion_tokens,
        }

    result = answer_with_cache(
        chats,
        keys,
        connect,
        GENERATION_CACHE,
        generate_missing,
        row_of,
        flush_every=flush_every,
        flush_seconds=flush_seconds,
        progress=progress,
        progress_seconds=progress_seconds,
        started_message=lambda hits, rows, todo: (
            f"{hits} of {rows} generations from the cache; generating {todo} with {backend}:{model}"
        ),
        progress_message=lambda done, todo, rate: f"generated {done}/{todo} ({rate:.2f}/s)",
    )
    return result.outcomes, result.from_cache
