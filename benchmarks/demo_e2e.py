"""Wall time of the whole demo from an empty home, then again with the judge cache warm.

    python benchmarks/demo_e2e.py [--judge heuristic|openai] [--latency 0.05]

With ``--judge openai`` the judge is a local OpenAI-compatible server (fixed
latency) and requests are counted at the server; with ``heuristic`` a
"request" is a row rated afresh rather than answered from the cache.
Prints one figure per line.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_demo(home: Path, env: dict) -> float:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lm_mixup_assets.cli", "demo"], cwd=ROOT,
                          env={**env, "LM_MIXUP_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"demo failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return time.monotonic() - started


def fresh_ratings(home: Path) -> int:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute("select count(*) from rated_pool where not from_cache").fetchall()[0][0]
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judge", choices=["heuristic", "openai"], default="heuristic")
    ap.add_argument("--latency", type=float, default=0.05)
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LM_MIXUP_PROFILE": "demo"}
    server = None
    if args.judge == "openai":
        from tests.openai_server import OpenAICompatServer

        server = OpenAICompatServer(latency_s=args.latency).start()
        env.update({"LM_MIXUP_JUDGE_BACKEND": "openai", "LM_MIXUP_JUDGE_BASE_URL": server.base_url,
                    "LM_MIXUP_JUDGE_MODEL": "bench-judge", "LM_MIXUP_JUDGE_CONCURRENCY": "64", "OPENAI_API_KEY": "bench"})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            cold = run_demo(home, env)
            cold_requests = server.request_count() if server else fresh_ratings(home)
            warm = run_demo(home, env)
            warm_requests = (server.request_count() - cold_requests) if server else fresh_ratings(home)
    finally:
        if server:
            server.stop()
    print(f"judge={args.judge}")
    print(f"demo_cold_seconds={cold:.1f}")
    print(f"demo_cold_judge_requests={cold_requests}")
    print(f"demo_warm_seconds={warm:.1f}")
    print(f"demo_warm_judge_requests={warm_requests}")
    print(f"warm_over_cold={warm / cold:.2f}")


if __name__ == "__main__":
    main()
