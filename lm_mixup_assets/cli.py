"""``lm-mixup``: run the demo end to end, open the UI, or show where things are.

    lm-mixup demo     materialise every stage built so far, source by source
    lm-mixup ui       the Dagster UI on 127.0.0.1 with history under LM_MIXUP_HOME
    lm-mixup where    paths and table counts
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

DAGSTER_YAML = """\
# Written by lm-mixup. Run history and event logs live next to this file.
telemetry:
  enabled: false
"""


def prepare_home() -> Path:
    """Create LM_MIXUP_HOME and DAGSTER_HOME (with telemetry off); export both for Dagster."""
    from resources.profiles import lm_mixup_home

    home = lm_mixup_home()
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster").resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    cfg = dagster_home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(DAGSTER_YAML)
    os.environ["LM_MIXUP_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return home


def run_demo(sources: list[str] | None = None) -> int:
    home = prepare_home()
    import dagster as dg

    import definitions
    from lm_mixup_assets import jobs
    from lm_mixup_assets.partitions import arm_partitions, source_partitions

    instance = dg.DagsterInstance.get()
    keys = sources or source_partitions.get_partition_keys()
    print(f"lm-mixup demo: profile {os.environ.get('LM_MIXUP_PROFILE', 'demo')}, home {home}, sources {keys}", flush=True)
    started = time.monotonic()

    def run(job: str, partition: str | None = None) -> bool:
        t = time.monotonic()
        result = definitions.defs.resolve_job_def(job).execute_in_process(partition_key=partition, instance=instance,
                                                                          raise_on_error=False)
        failed_checks = [e.asset_check_key.to_user_string() for e in result.get_asset_check_evaluations() if not e.passed]
        print(f"  {job}{f'[{partition}]' if partition else ''}: {'ok' if result.success else 'FAILED'} in {time.monotonic() - t:.1f}s"
              + (f"; checks not passing: {failed_checks}" if failed_checks else ""), flush=True)
        if not result.success:
            print(f"run {result.run_id} failed; open the UI (make ui) to see why", file=sys.stderr)
        return result.success

    # The method's order (see lm_mixup_assets/jobs.py): per source, across sources, distil per source, select per arm.
    steps = [*[(jobs.PER_SOURCE_JOB, k) for k in keys], (jobs.ALL_SOURCES_JOB, None),
             *[(jobs.DISTILL_JOB, k) for k in keys], (jobs.LONG_TAIL_JOB, None),
             *[(jobs.PER_ARM_JOB, a) for a in arm_partitions.get_partition_keys()], (jobs.REPORT_JOB, None)]
    for job, partition in steps:
        if not run(job, partition):
            return 1
    print(f"done in {time.monotonic() - started:.0f}s\n")
    show_where()
    return 0


def show_where() -> None:
    home = prepare_home()
    db = home / "warehouse.duckdb"
    print(f"warehouse : {db}")
    print(f"artifacts : {home / 'artifacts'}")
    print(f"history   : {os.environ['DAGSTER_HOME']}")
    if db.exists():
        import duckdb

        con = duckdb.connect(str(db), read_only=True)
        tables = [r[0] for r in con.execute("select table_name from information_schema.tables where table_schema='main' order by 1").fetchall()]
        for t in tables:
            count = con.execute(f'select count(*) from "{t}"').fetchall()[0][0]
            print(f"  {t:<22} {count:>8} rows")
        if "pool_summary" in tables:
            print(con.execute("select source, input_rows, rejected, duplicates, raw, rated_ok, rated_failed, high, low from pool_summary").df().to_string(index=False))
        if "benchmark_report" in tables:
            print(con.execute("select * from benchmark_report").df().round(3).to_string(index=False))
        if "training_set_composition" in tables:
            print(con.execute("select arm, pool, wanted, taken, shortfall from training_set_composition order by arm, pool").df().to_string(index=False))
        con.close()
    print(f'query it : duckdb {db} "select * from pool_summary"')
    print("open UI  : make ui   (then http://127.0.0.1:3000)")


def run_ui(host: str, port: int) -> int:
    prepare_home()
    dg_bin = Path(sys.executable).with_name("dg")  # the venv's, even when it is not on PATH
    cmd = [str(dg_bin) if dg_bin.exists() else "dg", "dev", "--host", host, "--port", str(port)]
    print(f"starting {' '.join(cmd)} with DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    return subprocess.call(cmd, cwd=Path(__file__).resolve().parent.parent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lm-mixup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialise every stage built so far")
    demo.add_argument("--source", action="append", help="only this source partition (repeatable)")
    ui = sub.add_parser("ui", help="start the Dagster UI")
    ui.add_argument("--host", default=os.environ.get("LM_MIXUP_UI_HOST", "127.0.0.1"))
    ui.add_argument("--port", type=int, default=int(os.environ.get("LM_MIXUP_UI_PORT", "3000")))
    sub.add_parser("where", help="print paths and table counts")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return run_demo(args.source)
    if args.command == "ui":
        return run_ui(args.host, args.port)
    show_where()
    return 0


if __name__ == "__main__":
    sys.exit(main())
