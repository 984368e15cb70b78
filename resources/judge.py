"""The judge: one interface, two backends (``openai`` over HTTP, online or through the Batch API; ``heuristic`` offline)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import dagster as dg
from pydantic import Field

from lm_mixup_assets.lib.heuristic_judge import score_pair
from lm_mixup_assets.lib.judging import CachedRating, estimate_cost_usd, rate_with_cache
from lm_mixup_assets.lib.openai_batch import (
    BATCH_PRICE_FACTOR,
    MAX_BATCH_REQUESTS,
    BatchError,
    BatchPending,
    BatchStore,
    serialized,
)
from lm_mixup_assets.lib.rubric import (
    RUBRIC_VERSION,
    JudgeOutcome,
    JudgeRequest,
    get_rubric,
    judge_cache_key,
    per_task_rubric,
)

from .warehouse import WarehouseResource

BACKENDS = ("openai", "heuristic")


class JudgeResource(dg.ConfigurableResource):
    """Rates (prompt, completion) pairs on the 1-10 rubric, through the warehouse's judge cache.

    ``openai`` talks to any OpenAI-compatible ``base_url`` (OpenAI, a vLLM or
    llama.cpp server, Ollama) with bounded concurrency, timeouts and retries;
    the key is read at run time from the environment variable named by
    ``api_key_env`` (``OPENAI_API_KEY``): a secret is never a config value, so
    it is never in a launchpad, in run history, logs, metadata or the warehouse. With ``batch`` on, the
    ``openai`` backend sends the same requests through the Batch API (``lib/openai_batch.py``) at half the
    price; its answers share the online judge's cache keys. ``heuristic`` is deterministic
    and offline (see ``lib/heuristic_judge.py``); it ignores the rubric's text,
    but the rubric version is still part of its cache key.
    """

    backend: str = Field(
        "heuristic",
        description="'heuristic' (offline, length-biased: its Overall tracks answer length) or 'openai' (any OpenAI-compatible chat endpoint).",
    )
    model: str = Field(
        "heuristic-v1",
        min_length=1,
        description="The judge model (openai backend: the served model name, e.g. gpt-4o-mini); keys the cache.",
    )
    base_url: str = Field(
        "", description="OpenAI-compatible endpoint (openai backend); empty = the client's default (api.openai.com)."
    )
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="NAME of the environment variable that holds the openai backend's API key (read at run time, "
        "never stored; any value, e.g. EMPTY, for a local server). The key itself is never a config field.",
    )
    rubric_version: str = Field(
        default=RUBRIC_VERSION,
        description="Rubric for rating the pool (rated_pool) and any call that names none: 'ds2' (DS2's prompt, "
        "verbatim; the paper's), 'pool_quality_v1' (ours), or another version of lib/rubrics/rubrics.yaml.",
    )
    distilled_rubric_version: str = Field(
        default=RUBRIC_VERSION,
        description="Rubric for re-rating distilled pairs (rated_distilled): 'per_task_qa_pair' is the reference's "
        "QA re-rating rubric (data_process/gpt_rating.py); 'pool_quality_v1' rates them like the pool.",
    )
    target_rubric_version: str = Field(
        default=RUBRIC_VERSION,
        description="Rubric for rating generated samples of a known task type (MIXTURE targets and variants), "
        "through rubric_for_task(): 'per_task' = the reference's rubric for each task (per_task_<task>), "
        "or one version name for every task.",
    )
    temperature: float = Field(
        default=0.0,
        description="Sampling temperature of the openai backend. The reference sets none (the API default, 1.0); "
        "0 makes re-asks of one prompt agree. A non-zero value is part of the judge cache key.",
    )
    concurrency: int = Field(16, ge=1, description="Requests in flight at once (openai backend).")
    timeout_s: float = Field(60.0, gt=0, description="Seconds before one request times out (then retried).")
    max_retries: int = Field(
        5, ge=0, description="Retries of a request after 429/5xx/timeouts, with backoff; then the row is api_error."
    )
    max_parse_retries: int = Field(
        2, ge=0, description="Re-asks when an answer has no parsable scores; then the row is parse_error."
    )
    max_tokens: int = Field(128, ge=1, description="Longest judge answer in tokens.")
    chunk_rows: int = Field(
        4096,
        ge=1,
        description="Rows rendered, looked up in the cache and sent per step (heuristic and online openai "
        "backends): memory holds one chunk's prompts, not the pool's; progress is logged per chunk. Keep it "
        ">= 32 x concurrency so the drain at each chunk's end costs little throughput.",
    )
    batch: bool = Field(
        default=False,
        description="openai backend: rate through the OpenAI Batch API (LM_MIXUP_JUDGE_BATCH=true) at half the "
        "online price, answers within 24 h. Same request bodies, parser, statuses and cache keys as online; each "
        "batch is recorded in the warehouse (judge_batches) before polling, so a restarted run resumes it instead "
        "of paying again. Answers that do not parse are re-asked online (max_parse_retries).",
    )
    batch_poll_interval_s: float = Field(
        60.0,
        ge=0,
        description="Seconds between two polls of the open batches (batch on); each poll logs the request counts.",
    )
    batch_max_wait_s: float = Field(
        default=26 * 3600.0,
        ge=0,
        description="How long one run polls its batches (batch on) before it fails with their ids; they stay "
        "recorded and the next run resumes them. The API's window is 24 h.",
    )
    batch_max_requests: int = Field(
        default=MAX_BATCH_REQUESTS,
        ge=1,
        le=MAX_BATCH_REQUESTS,
        description="Most requests in one batch (batch on); more rows are split into several batches, as are "
        "files over 200 MB. Lower it to stay under the organisation's enqueued-token limit.",
    )

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise dg.Failure(f"judge backend {self.backend!r} is unknown; choose one of {BACKENDS}")
        if self.batch and self.backend != "openai":
            raise dg.Failure(
                f"judge batch=true needs backend 'openai' (LM_MIXUP_JUDGE_BACKEND=openai), not {self.backend!r}"
            )
        if self.backend == "openai":
            if not self.base_url:
                raise dg.Failure(
                    "judge backend 'openai' needs base_url (LM_MIXUP_JUDGE_BASE_URL), e.g. http://127.0.0.1:8000/v1"
                )
            if not self.api_key():
                raise dg.Failure(
                    f"judge backend 'openai' needs {self.api_key_env} set in the environment of the run "
                    "(any value, e.g. EMPTY, for a local server); keys are never config values"
                )
        if self.target_rubric_version != "per_task":
            versions = (self.rubric_version, self.distilled_rubric_version, self.target_rubric_version)
        else:
            versions = (self.rubric_version, self.distilled_rubric_version)
        for version in versions:
            try:
                get_rubric(version)
            except ValueError as exc:
                raise dg.Failure(str(exc)) from None

    def api_key(self) -> str:
        """The openai backend's key, from the environment at call time ("" when unset)."""
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def secrets(self) -> list[str]:
        """Values to redact from any text this judge's errors reach (its key, when set)."""
        return [k for k in (self.api_key(),) if k]

    def rubric_for_task(self, task: str) -> str:
        """The rubric version for a generated sample of ``task`` (qa, mcq, tfq, cs, paragraph)."""
        if self.target_rubric_version == "per_task":
            return per_task_rubric(task)
        return self.target_rubric_version

    @property
    def model_label(self) -> str:
        return self.model if self.backend == "openai" else f"{self.backend}:{self.model}"

    def rate_pairs(
        self,
        prompts: list[str],
        completions: list[str],
        warehouse: WarehouseResource,
        progress: Callable[[str], None] | None = None,
        rubric_version: str | Sequence[str] | None = None,
    ) -> tuple[CachedRating, list[str]]:
        """Rate each pair; returns the outcomes (with cache hits marked) and their cache keys.

        ``rubric_version``: None = :attr:`rubric_version`; a version name for every
        row; or one version per row (e.g. the per-task rubric of each MIXTURE target).
        Online and heuristic rows are rendered, looked up and sent :attr:`chunk_rows` at a time
        (``progress`` gets a line per chunk); the Batch API path looks every row up at once and renders
        each batch file's prompts while it writes that file.
        """
        self.validate()
        if rubric_version is None or isinstance(rubric_version, str):
            versions = [rubric_version or self.rubric_version] * len(prompts)
        else:
            versions = list(rubric_version)
            if len(versions) != len(prompts):
                raise ValueError(f"{len(versions)} rubric versions for {len(prompts)} rows")
        try:
            rubrics = {v: get_rubric(v) for v in set(versions)}
        except ValueError as exc:
            raise dg.Failure(str(exc)) from None
        temperature = self.temperature if self.backend == "openai" else 0.0  # the heuristic has no sampling

        def request_of(i: int) -> JudgeRequest:
            return rubrics[versions[i]].render(prompts[i], completions[i])

        def render(lo: int, hi: int) -> tuple[list, list[str]]:
            requests = [request_of(i) for i in range(lo, min(hi, len(prompts)))]
            keys = [
                judge_cache_key(self.backend, self.model, v, r.user, temperature)
                for v, r in zip(versions[lo:hi], requests)
            ]
            return requests, keys

        if self.backend == "openai" and self.batch:
            # Keys a chunk at a time; a prompt is rendered again when its batch file is written.
            keys = [k for lo in range(0, len(prompts), self.chunk_rows) for k in render(lo, lo + self.chunk_rows)[1]]
            return self._rate_through_batches(keys, request_of, versions, warehouse, progress)

        if self.backend == "heuristic":
            client = None

            def rate_chunk(lo: int, hi: int, requests: list) -> Callable:
                pair_of = {r: pair for r, pair in zip(requests, zip(prompts[lo:hi], completions[lo:hi]))}

                def rate_missing(todo: list, on_result) -> list[JudgeOutcome]:
                    out = []
                    for i, r in enumerate(todo):
                        o = JudgeOutcome(status="ok", scores=score_pair(*pair_of[r]), attempts=1)
                        on_result(i, o)
                        out.append(o)
                    return out

                return rate_missing
        else:
            from lm_mixup_assets.lib.openai_judge import OpenAIJudgeClient

            client = OpenAIJudgeClient(
                base_url=self.base_url,
                api_key=self.api_key(),
                model=self.model,
                concurrency=self.concurrency,
                timeout_s=self.timeout_s,
                max_retries=self.max_retries,
                max_parse_retries=self.max_parse_retries,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
            )

            def rate_chunk(lo: int, hi: int, requests: list) -> Callable:
                return client.rate_all

        # Rendered prompts exist for one chunk at a time: memory follows chunk_rows, not the pool.
        total = CachedRating(outcomes=[], from_cache=[])
        all_keys: list[str] = []
        stats: dict[str, int] = {}
        n_chunks = max(1, -(-len(prompts) // self.chunk_rows))
        for n, lo in enumerate(range(0, max(len(prompts), 1), self.chunk_rows), start=1):
            hi = min(lo + self.chunk_rows, len(prompts))
            requests, keys = render(lo, hi)
            if progress and n_chunks > 1:
                progress(f"judge chunk {n}/{n_chunks}: rows {lo}-{hi - 1} of {len(prompts)}")
            result = rate_with_cache(
                requests,
                keys,
                warehouse.connect,
                rate_chunk(lo, hi, requests),
                backend=self.backend,
                model=self.model,
                rubric_version=versions[lo:hi],
                progress=progress,
                flush_every=self.concurrency,  # durable within one concurrency's worth of answers (or 0.5 s)
            )
            del requests  # before the next chunk renders its own
            total.outcomes += result.outcomes
            total.from_cache += result.from_cache
            total.requests_made += result.requests_made
            total.cache_writes += result.cache_writes
            total.cache_write_seconds += result.cache_write_seconds
            all_keys += keys
            if client is not None and result.requests_made:  # a chunk answered by the cache sent nothing: its
                for k, v in client.stats.items():  # client still holds the previous chunk's counters
                    stats[k] = stats.get(k, 0) + v
        if client is not None:
            total.stats = stats
        return total, all_keys

    def _rate_through_batches(
        self,
        keys: list[str],
        render_row: Callable[[int], JudgeRequest],
        versions: list[str],
        warehouse: WarehouseResource,
        progress: Callable[[str], None] | None,
    ) -> tuple[CachedRating, list[str]]:
        """The Batch API path: every row at once (the runner splits them into batches of its own);
        ``render_row(i)`` is row ``i``'s judge request."""
        from lm_mixup_assets.lib.openai_judge import OpenAIBatchJudgeClient

        connect = serialized(warehouse.connect)  # batch records and cache commits come from two threads
        client = OpenAIBatchJudgeClient(
            base_url=self.base_url,
            api_key=self.api_key(),
            model=self.model,
            store=BatchStore(connect),
            label=",".join(sorted(set(versions))),
            poll_interval_s=self.batch_poll_interval_s,
            max_wait_s=self.batch_max_wait_s,
            max_requests_per_batch=self.batch_max_requests,
            progress=progress,
            defer_collected=True,  # confirmed below, once the cache writer has committed the answers
            concurrency=self.concurrency,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            max_parse_retries=self.max_parse_retries,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )
        try:
            # The cache key is the batch's custom_id: each row number travels with it.
            result = rate_with_cache(
                list(zip(keys, range(len(keys)))),
                keys,
                connect,
                lambda todo, on_result: client.rate_all(todo, on_result, render=render_row),
                backend=self.backend,
                model=self.model,
                rubric_version=versions,
                progress=progress,
                flush_every=self.concurrency,
            )
        except BatchPending as exc:
            client.confirm_collected()  # rate_with_cache closed its writer: what was collected is cached
            raise dg.Failure(description=str(exc), metadata={"pending_batches": ", ".join(exc.batch_ids)}) from None
        except BatchError as exc:  # already redacted
            client.confirm_collected()
            raise dg.Failure(description=f"the judge's Batch API calls failed: {exc}") from None
        client.confirm_collected()
        result.stats = dict(client.stats)
        return result, keys

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Estimated USD for these tokens: the model's online price, halved with ``batch`` (the online
        re-asks of unparsable batch answers are counted at the batch price too: an estimate)."""
        if self.backend != "openai":
            return 0.0
        cost = estimate_cost_usd(self.model, prompt_tokens, completion_tokens)
        return cost * BATCH_PRICE_FACTOR if cost is not None and self.batch else cost
