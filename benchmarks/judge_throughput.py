"""Throughput of OpenAIJudgeClient against a local server with a fixed latency.

    python benchmarks/judge_throughput.py [--n 2000 --concurrency 128 --latency 0.5]

The server runs in a separate process (so it does not compete with the client
for the GIL; on uvloop when installed, so its own timing is precise). The
measured call is the first ``rate_all`` of the process: client creation,
connection set-up and ramp-up are inside the timing. With ``concurrency`` requests in flight and a fixed server latency,
the ideal is ``concurrency / latency`` rows per second. Printed, one per line:
our rows/s, the ideal, the ratio; a baseline (a thread pool of ``concurrency``
threads, each posting with its own blocking HTTP session) and our speed-up over
it; a second pass through a caller-side cache that must send 0 requests; and
the cost of committing answers to a DuckDB judge_cache as they arrive: the same
rating through ``rate_with_cache`` at the old cadence (256 rows / 10 s) and at
ours (one concurrency's worth / 0.5 s), fresh prompts each (``--skip-flush`` skips).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lm_mixup_assets.lib.openai_judge import OpenAIJudgeClient  # noqa: E402
from lm_mixup_assets.lib.rubric import SYSTEM_PROMPT, parse_judge_answer, render_judge_prompt  # noqa: E402
from tests.openai_server import OpenAICompatServer  # noqa: E402

API_KEY = "sk-benchmark-not-a-real-key"
MODEL = "local-judge"


def make_prompts(n: int, tag: str) -> list[str]:
    return [
        render_judge_prompt(
            f"[{tag} {i}] Explain why the sky looks blue at noon and red at sunset.",
            f"Rayleigh scattering favours short wavelengths (sample {tag}-{i}); at sunset light crosses more air.",
        )
        for i in range(n)
    ]


def run_openai_judge(base_url: str, prompts: list[str], concurrency: int) -> tuple[float, list]:
    client = OpenAIJudgeClient(base_url=base_url, api_key=API_KEY, model=MODEL, concurrency=concurrency, timeout_s=30.0)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    outcomes = client.rate_all(prompts)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    bad = [o for o in outcomes if o.status != "ok"]
    if bad:
        raise SystemExit(f"{len(bad)} rows failed, e.g. {bad[0]}")
    print(f"openai_judge_backend={client.http_backend} uvloop={client.use_uvloop}")
    print(f"openai_judge_cpu_ms_per_row={cpu / len(prompts) * 1000:.2f}")
    # Rows and HTTP requests apart (retries and parse re-asks are requests too); compare with server_requests.
    print(f"openai_judge_rows={len(prompts)} openai_judge_http_requests={client.stats['requests_sent']}")
    return elapsed, outcomes


def run_thread_baseline(base_url: str, prompts: list[str], concurrency: int) -> float:
    try:
        import requests

        def new_session():
            return requests.Session()

        def post(session, url, payload):
            r = session.post(url, json=payload, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
            r.raise_for_status()
            return r.json()

    except ImportError:  # pragma: no cover - requests is normally installed
        import httpx

        def new_session():
            return httpx.Client(timeout=30)

        def post(session, url, payload):
            r = session.post(url, json=payload, headers={"Authorization": f"Bearer {API_KEY}"})
            r.raise_for_status()
            return r.json()

    local = threading.local()
    url = base_url + "/chat/completions"

    def rate(prompt: str) -> dict:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = new_session()
        data = post(
            session,
            url,
            {
                "model": MODEL,
                "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
                "temperature": 0.0,
                "max_tokens": 128,
            },
        )
        return parse_judge_answer(data["choices"][0]["message"]["content"])

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(rate, prompts))
        elapsed = time.perf_counter() - t0
    assert len(results) == len(prompts)
    return elapsed


def run_cache_cadence(
    base_url: str, n: int, concurrency: int, flush_every: int, flush_seconds: float, tag: str
) -> None:
    """rows/s of rate_with_cache into a fresh DuckDB file, and how many commits it made."""
    import tempfile
    from functools import partial

    from lm_mixup_assets.lib.judging import rate_with_cache
    from lm_mixup_assets.lib.warehouse import connect

    prompts = make_prompts(n, f"cadence-{tag}")
    client = OpenAIJudgeClient(base_url=base_url, api_key=API_KEY, model=MODEL, concurrency=concurrency, timeout_s=30.0)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "warehouse.duckdb"
        t0 = time.perf_counter()
        result = rate_with_cache(
            prompts,
            [f"{tag}-{i}" for i in range(n)],
            partial(connect, db),
            client.rate_all,
            backend="openai",
            model=MODEL,
            rubric_version="bench",
            flush_every=flush_every,
            flush_seconds=flush_seconds,
        )
        elapsed = time.perf_counter() - t0
        with connect(db) as con:
            stored = con.execute("select count(*) from judge_cache").fetchall()[0][0]
    assert stored == n, f"{stored} of {n} answers in judge_cache"
    print(
        f"cache_cadence_{tag} flush_every={flush_every} flush_seconds={flush_seconds} rows_per_s={n / elapsed:.1f} "
        f"commits={result.cache_writes} commit_seconds={result.cache_write_seconds:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-flush", action="store_true", help="skip the judge_cache commit-cadence comparison")
    args = ap.parse_args(argv)

    ideal = args.concurrency / args.latency
    prompts = make_prompts(args.n, "judge")
    with OpenAICompatServer(latency_s=args.latency, mode="subprocess") as srv:
        # --- OpenAIJudgeClient, filling a caller-side cache keyed by prompt
        cache: dict[str, object] = {}
        elapsed, outcomes = run_openai_judge(srv.base_url, prompts, args.concurrency)
        cache.update(zip(prompts, outcomes))
        stats = srv.stats()
        rate = args.n / elapsed
        print(f"n={args.n} concurrency={args.concurrency} latency_s={args.latency}")
        print(f"openai_judge_seconds={elapsed:.2f}")
        print(f"openai_judge rows_per_s={rate:.1f}")
        print(f"ideal_rows_per_s={ideal:.1f}")
        print(f"openai_judge_ratio={rate / ideal:.3f}")
        print(
            f"server_requests={stats['requests']} server_max_in_flight={stats['max_in_flight']} server_connections={stats['connections']}"
        )

        # --- baseline: thread pool of blocking clients, same server, fresh prompts
        if not args.skip_baseline:
            base_prompts = make_prompts(args.n, "baseline")
            b_elapsed = run_thread_baseline(srv.base_url, base_prompts, args.concurrency)
            b_rate = args.n / b_elapsed
            print(f"thread_baseline_seconds={b_elapsed:.2f}")
            print(f"thread_baseline_rows_per_s={b_rate:.1f}")
            print(f"thread_baseline_ratio={b_rate / ideal:.3f}")
            print(f"speedup_vs_baseline={rate / b_rate:.2f}")

        # --- second pass: the caller's cache answers everything, nothing is sent
        before = srv.request_count()
        missing = [p for p in prompts if p not in cache]
        t0 = time.perf_counter()
        fresh = OpenAIJudgeClient(
            base_url=srv.base_url, api_key=API_KEY, model=MODEL, concurrency=args.concurrency
        ).rate_all(missing)
        cache.update(zip(missing, fresh))
        second = [cache[p] for p in prompts]
        second_elapsed = time.perf_counter() - t0
        assert all(o.status == "ok" for o in second)
        print(f"second_pass_seconds={second_elapsed:.3f}")
        print(f"second_pass_requests={srv.request_count() - before}")

        # --- committing to judge_cache as answers arrive: the old cadence against ours, same server
        if not args.skip_flush:
            run_cache_cadence(srv.base_url, args.n, args.concurrency, 256, 10.0, "old")
            run_cache_cadence(srv.base_url, args.n, args.concurrency, args.concurrency, 0.5, "durable")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
