"""The two warehouse backends side by side: a DuckDB file vs a DuckLake (SQLite catalog; Postgres too with --postgres).

    python benchmarks/warehouse_bench.py [--rows 300000] [--small-writes 1000] [--writers 3 --rounds 5]
                                         [--postgres postgresql://user@127.0.0.1:5432/db]

For each backend, in a fresh temporary home: replace one 300k-row ``rated_pool``
partition (next to another one) and replace it again, read it back, commit
``--small-writes`` single-row judge-cache writes one after another (each its own
connection and commit, as the cache writer does), and ``--writers`` processes each
replacing its own partition of one table ``--rounds`` times at once (on DuckDB they
queue for the file lock; on a lake they commit concurrently and a conflicting commit
is retried). Prints one figure per line, then each lake figure as a ratio to DuckDB's
(< 1: the lake is faster). ``--postgres`` (or LM_MIXUP_TEST_POSTGRES_DSN) adds a
lake whose catalog is that Postgres database (in a schema of its own, dropped after).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lm_mixup_assets.lib import warehouse as wh  # noqa: E402
from lm_mixup_assets.lib.judging import JUDGE_CACHE  # noqa: E402

# One writer process: replaces its partition `rounds` times; prints its wall time and retries.
WRITER = """
import json, sys, time, pandas as pd
from pathlib import Path
from lm_mixup_assets.lib import warehouse as wh
spec, part, rounds, rows = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
where = wh.Lake(**spec["lake"]) if spec.get("lake") else Path(spec["path"])
started = time.perf_counter()
for k in range(rounds):
    frame = pd.DataFrame({"source": part, "round": k, "i": range(rows), "text": "x" * 200})
    wh.write_transaction(lambda: wh.connect(where), lambda con: wh.replace_partition(
        con, "shared", frame, "source", part, in_transaction=True))
print("RESULT", time.perf_counter() - started, wh.conflicts_retried.retries)
"""


def rated_pool_frame(source: str, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    scores = rng.integers(1, 11, size=(n, 4))
    return pd.DataFrame(
        {
            "source": source,
            "sample_id": [f"{source}-{i}" for i in range(n)],
            "prompt": [f"Question {i}: explain item {i % 977} in a few words." for i in range(n)],
            "completion": [f"Answer {i}: it is the {i % 31}th kind of thing." for i in range(n)],
            "rarity": scores[:, 0],
            "complexity": scores[:, 1],
            "informativeness": scores[:, 2],
            "overall": scores[:, 3],
            "overall_compressed": np.clip(scores[:, 3], 4, 9) - 4,
            "status": "ok",
            "judge_model": "bench",
            "prompt_tokens": 120,
            "completion_tokens": 20,
        }
    )


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench(name: str, where, spec: dict, args) -> dict:
    def connect():
        return wh.connect(where)

    big, other = rated_pool_frame("big", args.rows), rated_pool_frame("other", 1000)

    def replace(frame, source):
        wh.write_transaction(
            connect, lambda con: wh.replace_partition(con, "rated_pool", frame, "source", source, in_transaction=True)
        )

    replace(other, "other")
    out = {"replace_first_s": timed(lambda: replace(big, "big")), "replace_again_s": timed(lambda: replace(big, "big"))}

    def read():
        with connect() as con:
            assert len(wh.read_partition(con, "rated_pool", "source", "big")) == args.rows

    out["read_back_s"] = timed(read)
    rows = [
        {
            "cache_key": f"k{i}",
            "backend": "bench",
            "model": "m",
            "rubric_version": "v",
            "rarity": 5,
            "complexity": 5,
            "informativeness": 5,
            "overall": 5,
            "raw_answer": "{}",
            "prompt_tokens": 1,
            "completion_tokens": 1,
        }
        for i in range(args.small_writes)
    ]
    JUDGE_CACHE.lookup(connect, ["k"])  # creates the table, as a rating does first
    seconds = timed(lambda: [JUDGE_CACHE.store(connect, [row], ensure_table=False) for row in rows])
    out["small_write_ms"] = 1000 * seconds / max(1, args.small_writes)

    def parallel():
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, json.dumps(spec), f"w{k}", str(args.rounds), str(args.writer_rows)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for k in range(args.writers)
        ]
        results = [p.communicate(timeout=1800)[0] for p in procs]
        for p, text in zip(procs, results):
            if p.returncode != 0:
                sys.exit(f"{name}: a writer failed:\n{text[-3000:]}")
        return [line.split()[1:] for text in results for line in text.splitlines() if line.startswith("RESULT")]

    empty = pd.DataFrame(
        {
            "source": pd.Series(dtype=object),
            "round": pd.Series(dtype="int64"),
            "i": pd.Series(dtype="int64"),
            "text": pd.Series(dtype=object),
        }
    )
    wh.write_transaction(connect, lambda con: wh.replace_partition(con, "shared", empty, in_transaction=True))
    started = time.perf_counter()
    results = parallel()
    out["parallel_wall_s"] = time.perf_counter() - started
    out["parallel_commits_per_s"] = args.writers * args.rounds / out["parallel_wall_s"]
    out["conflicts_retried"] = sum(int(r[1]) for r in results)
    with connect() as con:
        counts = con.execute("select source, count(*) from shared group by 1").fetchall()
    assert sorted(counts) == [(f"w{k}", args.writer_rows) for k in range(args.writers)], counts
    if isinstance(where, wh.Lake):
        with connect() as con:
            out["snapshots"] = con.execute("select count(*) from lake.snapshots()").fetchone()[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--small-writes", type=int, default=1000)
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--writer-rows", type=int, default=20_000)
    ap.add_argument("--postgres", default=os.environ.get("LM_MIXUP_TEST_POSTGRES_DSN", ""))
    args = ap.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "duckdb" / "warehouse.duckdb"
        backends = [("duckdb", path, {"path": str(path)})]
        lake = wh.Lake(str(Path(tmp) / "lake" / "catalog.sqlite"), str(Path(tmp) / "lake" / "data"))
        backends.append(("ducklake-sqlite", lake, {"lake": dataclasses.asdict(lake)}))
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        if args.postgres:
            pg = wh.Lake(args.postgres, str(Path(tmp) / "pg" / "data"), metadata_schema=schema)
            backends.append(("ducklake-postgres", pg, {"lake": dataclasses.asdict(pg)}))
        try:
            for name, where, spec in backends:
                results[name] = bench(name, where, spec, args)
                for key, value in results[name].items():
                    print(
                        f"{name} {key}: {value:.3f}" if isinstance(value, float) else f"{name} {key}: {value}",
                        flush=True,
                    )
        finally:
            wh.close_lakes()
            if args.postgres:
                wh.drop_postgres_schema(args.postgres, schema)
    base = results["duckdb"]
    for name, figures in results.items():
        if name == "duckdb":
            continue
        for key in ("replace_first_s", "replace_again_s", "read_back_s", "small_write_ms", "parallel_wall_s"):
            print(f"{name} / duckdb {key}: {figures[key] / base[key]:.2f}")


if __name__ == "__main__":
    main()
