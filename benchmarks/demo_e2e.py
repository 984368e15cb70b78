"""The whole demo from an empty home, then again with nothing changed: time, memory and disk.

    python benchmarks/demo_e2e.py [--judge heuristic|openai] [--latency 0.05] [--home DIR] [--source S ...]

For each run: wall seconds, seconds per job (as ``lm-mixup demo`` prints them), the assets that
reused finished work, the peak resident memory of the demo process, the home's size on disk,
and the judge requests made. With ``--judge openai`` the judge is a local OpenAI-compatible
server (fixed latency) and requests are counted at the server; with ``heuristic`` a "request"
is a row rated afresh rather than answered from the cache. ``--home`` keeps the home (default:
a temporary folder, removed at the end). Prints one figure per line.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# "  per_source_job[chatterbot]: ok in 12.3s (peak memory so far 1.20 GB); reused sft_checkpoint, ..."
JOB_LINE = re.compile(
    r"^  (?P<job>\w+(?:\[[^\]]+\])?): (?P<status>ok|FAILED) in (?P<seconds>[\d.]+)s"
    r"(?: \(peak memory so far [\d.]+ GB\))?(?:; reused (?P<reused>[^;]+))?"
)


DONE_LINE = re.compile(r"^done in \d+s, peak memory (?P<gb>[\d.]+) GB")


def run_demo(home: Path, env: dict, sources: list[str]) -> dict:
    started = time.monotonic()
    cmd = [sys.executable, "-m", "lm_mixup_assets.cli", "demo", *[a for s in sources for a in ("--source", s)]]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**env, "LM_MIXUP_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")},
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"demo failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    lines = proc.stdout.splitlines()
    jobs = [m.groupdict() for m in map(JOB_LINE.match, lines) if m]
    # The demo reports its own peak (getrusage of its process); ru_maxrss of our children would mix both runs.
    done = next((m for m in map(DONE_LINE.match, lines) if m), None)
    return {
        "seconds": seconds,
        "jobs": jobs,
        "peak_rss_bytes": float(done["gb"]) * 2**30 if done else float("nan"),
        "disk_bytes": disk_usage(home),
        "stdout": proc.stdout,
    }


def disk_usage(folder: Path) -> int:
    """Bytes on disk under ``folder`` (hard links counted once, like du)."""
    seen, total = set(), 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def fresh_ratings(home: Path) -> int:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute("select count(*) from rated_pool where not from_cache").fetchall()[0][0]
    finally:
        con.close()


def report(label: str, run: dict, requests: int) -> None:
    print(f"demo_{label}_seconds={run['seconds']:.1f}")
    for job in run["jobs"]:
        print(
            f"demo_{label}_job {job['job']} {job['status']} {float(job['seconds']):.1f}s"
            + (f" reused: {job['reused']}" if job["reused"] else "")
        )
    print(f"demo_{label}_peak_rss_gb={run['peak_rss_bytes'] / 2**30:.2f}")
    print(f"demo_{label}_home_disk_gb={run['disk_bytes'] / 2**30:.2f}")
    print(f"demo_{label}_judge_requests={requests}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judge", choices=["heuristic", "openai"], default="heuristic")
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--home", type=Path, help="keep the home here (must not exist yet)")
    ap.add_argument("--source", action="append", default=[], help="only this source (repeatable)")
    args = ap.parse_args()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LM_MIXUP_PROFILE": "demo",
    }
    server = None
    if args.judge == "openai":
        from tests.openai_server import OpenAICompatServer

        server = OpenAICompatServer(latency_s=args.latency).start()
        env.update(
            {
                "LM_MIXUP_JUDGE_BACKEND": "openai",
                "LM_MIXUP_JUDGE_BASE_URL": server.base_url,
                "LM_MIXUP_JUDGE_MODEL": "bench-judge",
                "LM_MIXUP_JUDGE_CONCURRENCY": "64",
                "OPENAI_API_KEY": "bench",
            }
        )
    if args.home and args.home.exists():
        sys.exit(f"{args.home} exists: the benchmark starts from an empty home")
    tmp = None if args.home else tempfile.TemporaryDirectory()
    home = args.home or Path(tmp.name) / "home"
    try:
        cold = run_demo(home, env, args.source)
        cold_requests = server.request_count() if server else fresh_ratings(home)
        warm = run_demo(home, env, args.source)
        warm_requests = (server.request_count() - cold_requests) if server else fresh_ratings(home)
    finally:
        if server:
            server.stop()
        if tmp:
            tmp.cleanup()
    print(f"judge={args.judge}")
    report("cold", cold, cold_requests)
    report("warm", warm, warm_requests)
    print(f"warm_over_cold={warm['seconds'] / cold['seconds']:.2f}")
    # What a person reads at the end of the cold run: the funnel, the training sets, the report with intervals.
    summary = cold["stdout"].split("\ndone in ", 1)
    if len(summary) == 2:
        print("demo_cold_summary:\n" + summary[1].split("\n", 1)[1] if "\n" in summary[1] else summary[1])


if __name__ == "__main__":
    main()
