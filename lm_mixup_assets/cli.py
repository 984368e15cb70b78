"""``lm-mixup``: run the demo end to end, open the UI, or show where things are.

    lm-mixup init     create and migrate the home (DAGSTER_HOME storage) and nothing else
    lm-mixup demo     materialise every stage built so far, source by source
    lm-mixup ui       the Dagster UI on 127.0.0.1 with history under LM_MIXUP_HOME
    lm-mixup where    paths and table counts
    lm-mixup sql "…"  run SQL on the warehouse (either backend; --snapshot N reads a lake as it was)
    lm-mixup config   every step's settings for the active profile, and where each value comes from

Every command initialises the home first (see :func:`prepare_home`), so Dagster's
own commands (``dg launch``, ``dagster asset materialize``) are safe to start in
parallel once any lm-mixup command or ``make`` target has run in that home.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

DAGSTER_YAML = """\
# Written by lm-mixup init. Run history and event logs live next to this file.
telemetry:
  enabled: false
# Needs the daemon (`dg dev` / `make ui` runs it): runs stuck in STARTING or CANCELING are
# failed after the timeouts. The default run launcher cannot check or resume a run worker,
# so max_resume_run_attempts must stay 0; a run whose worker was killed is marked FAILURE
# by the code server that launched it, or by `lm-mixup init` (any lm-mixup command) when
# its process is gone (see lm_mixup_assets/cli.py, fail_orphaned_runs).
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_resume_run_attempts: 0
  poll_interval_seconds: 30
"""
INIT_MARKER = ".lm-mixup-initialised"  # holds the Dagster version whose migrations last ran here
RUN_STORAGE_DB = Path("history") / "runs.db"


def repair_alembic_heads(dagster_home: Path) -> list[str]:
    """Drop the extra rows that concurrent first runs leave in runs.db's ``alembic_version``.

    Several processes creating the run storage at once each stamp a revision, and
    alembic then refuses the home for good ("more than one head present"). The
    tables themselves were created complete, from the current schema, so keeping
    only the newest revision the installed Dagster knows is the state a single
    creation leaves. Returns the revisions removed (none when the table is sane).
    """
    db = dagster_home / RUN_STORAGE_DB
    if not db.exists():
        return []
    from alembic.script import ScriptDirectory
    from dagster._core.storage.runs.sqlite import sqlite_run_storage
    from dagster._core.storage.sql import get_alembic_config

    with sqlite3.connect(db) as con:
        if not con.execute("select 1 from sqlite_master where type='table' and name='alembic_version'").fetchall():
            return []
        revisions = [r[0] for r in con.execute("select version_num from alembic_version").fetchall()]
        if len(revisions) <= 1:
            return []
        script = ScriptDirectory.from_config(get_alembic_config(sqlite_run_storage.__file__))
        known = [rev.revision for rev in script.walk_revisions()]  # newest first
        keep = next((r for r in known if r in revisions), None)
        if keep is None:
            raise RuntimeError(
                f"{db}: alembic_version holds {revisions}, none of them known to Dagster; "
                "move this DAGSTER_HOME aside and run `lm-mixup init` for a fresh one"
            )
        removed = [r for r in revisions if r != keep]
        con.execute("delete from alembic_version where version_num != ?", [keep])
        con.execute("delete from alembic_version where rowid not in (select min(rowid) from alembic_version)")
    return removed


def _process_alive(pid: int, since: float) -> bool:
    """Whether process ``pid`` exists and is the one that was running at ``since`` (not a reused pid)."""
    try:
        import psutil
    except ImportError:  # psutil is a dev extra; without it a reused pid counts as alive (the safe side)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        return psutil.Process(pid).create_time() <= since + 1.0
    except psutil.NoSuchProcess:
        return False


def fail_orphaned_runs(instance) -> list[str]:
    """Mark FAILURE the runs still STARTING/STARTED whose run-worker process on this machine is gone.

    A run executed in-process (``lm-mixup demo``, ``dagster asset materialize``) that
    is killed with -9 leaves nobody to record its end; Dagster's run monitoring cannot
    see it either with the default run launcher. Its "Executing steps in process
    (pid: N)" event names the process; if no such process lives (or a newer one reused
    the pid), the run is over. Homes are per machine here, so the pid is this host's.
    """
    import dagster as dg
    from dagster._core.events import DagsterEventType

    failed = []
    for record in instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    ):
        run = record.dagster_run
        pids = []
        for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
            data = entry.dagster_event.engine_event_data if entry.dagster_event else None
            pid = data.metadata.get("pid") if data and data.metadata else None
            if pid is not None:
                pids.append((int(pid.value), entry.timestamp))
        if not pids:
            continue  # launched elsewhere or not started yet: the daemon's start timeout covers it
        pid, since = pids[-1]
        if not _process_alive(pid, since):
            instance.report_run_failed(
                run, f"run worker process {pid} is gone (killed?); marked failed by lm-mixup init"
            )
            failed.append(run.run_id)
    return failed


def prepare_home(verbose: bool = False) -> Path:
    """Create LM_MIXUP_HOME and DAGSTER_HOME and make the Dagster storage ready; export both.

    Writes ``dagster.yaml`` (telemetry off, run monitoring on), creates and migrates
    the run, event and schedule storage, repairs a home broken by concurrent first
    runs, and fails runs whose worker was killed. Under an OS file lock, so any
    number of processes may call it at once; the migration runs once per Dagster
    version (a marker file records it).
    """
    from resources.profiles import lm_mixup_home

    home = lm_mixup_home()
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster").resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["LM_MIXUP_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    say = print if verbose else (lambda *_: None)
    import dagster as dg
    from filelock import (
        FileLock,  # a Dagster dependency; an OS lock, released if the holder dies
    )

    with FileLock(dagster_home / ".lm-mixup-init.lock"):
        cfg = dagster_home / "dagster.yaml"
        if not cfg.exists():
            tmp = cfg.with_suffix(".yaml.tmp")
            tmp.write_text(DAGSTER_YAML)
            os.replace(tmp, cfg)  # never a half-written file for a process that does not take the lock
            say(f"wrote {cfg}")
        removed = repair_alembic_heads(dagster_home)
        if removed:
            print(
                f"repaired {dagster_home / RUN_STORAGE_DB}: dropped extra alembic revisions {removed}", file=sys.stderr
            )
        marker = dagster_home / INIT_MARKER
        migrated = (
            marker.exists()
            and marker.read_text().strip() == dg.__version__
            and (dagster_home / RUN_STORAGE_DB).exists()
        )
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:  # creates the storage when new
            if not migrated:
                instance.upgrade()
                marker.write_text(dg.__version__ + "\n")
                say(f"storage of {dagster_home} created/migrated for Dagster {dg.__version__}")
            for run_id in fail_orphaned_runs(instance):
                print(f"run {run_id}: its worker process is gone; marked FAILURE", file=sys.stderr)
    return home


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def run_demo(sources: list[str] | None = None) -> int:
    home = prepare_home()
    import dagster as dg

    import definitions
    from lm_mixup_assets import jobs
    from lm_mixup_assets.partitions import arm_partitions, source_partitions

    instance = dg.DagsterInstance.get()
    keys = sources or source_partitions.get_partition_keys()
    print(
        f"lm-mixup demo: profile {os.environ.get('LM_MIXUP_PROFILE', 'demo')}, home {home}, sources {keys}", flush=True
    )
    started = time.monotonic()

    def run(job: str, partition: str | None = None) -> bool:
        t = time.monotonic()
        result = definitions.defs.resolve_job_def(job).execute_in_process(
            partition_key=partition, instance=instance, raise_on_error=False
        )
        failed_checks = [
            e.asset_check_key.to_user_string() for e in result.get_asset_check_evaluations() if not e.passed
        ]
        reused = [
            e.asset_key.to_user_string()
            for e in result.get_asset_materialization_events()
            if (e.materialization.metadata.get("reused") or dg.MetadataValue.bool(False)).value is True
        ]
        # The format benchmarks/demo_e2e.py parses: job, partition, status, seconds, peak memory so far.
        print(
            f"  {job}{f'[{partition}]' if partition else ''}: {'ok' if result.success else 'FAILED'} in {time.monotonic() - t:.1f}s"
            f" (peak memory so far {_gb(peak_rss_bytes())})"
            + (f"; reused {', '.join(reused)}" if reused else "")
            + (f"; checks not passing: {failed_checks}" if failed_checks else ""),
            flush=True,
        )
        if not result.success:
            print(f"run {result.run_id} failed; open the UI (make ui) to see why", file=sys.stderr)
        return result.success

    # The method's order (see lm_mixup_assets/jobs.py): per source, across sources, distil per source, select per arm.
    steps = [
        *[(jobs.PER_SOURCE_JOB, k) for k in keys],
        (jobs.ALL_SOURCES_JOB, None),
        *[(jobs.DISTILL_JOB, k) for k in keys],
        (jobs.LONG_TAIL_JOB, None),
        *[(jobs.PER_ARM_JOB, a) for a in arm_partitions.get_partition_keys()],
        (jobs.REPORT_JOB, None),
    ]
    for job, partition in steps:
        if not run(job, partition):
            return 1
    print(f"done in {time.monotonic() - started:.0f}s, peak memory {_gb(peak_rss_bytes())}\n")
    show_where(tables=False)
    return 0


def demo_summary(db: Path, artifacts: Path) -> str:
    """What a person reads after a run: the funnel per source, the training sets, the report, the judge's
    known bias, and where to look next (the UI, one SQL query, the exported JSONL)."""
    import duckdb

    from lm_mixup_assets.lib.summary import (
        arm_origins,
        funnel_text,
        pool_length_correlation,
        report_intervals,
        source_funnel,
    )
    from lm_mixup_assets.lib.warehouse import table_exists

    lines: list[str] = []
    if db.exists():
        con = duckdb.connect(str(db), read_only=True)
        try:
            lines += [
                "What flowed where, rows per stage and source (input -> rejected / duplicates -> rated ok -> "
                "high / low -> clusters of low rows -> distilled -> parsed -> accepted by the re-rating -> "
                "distinct rows in the training sets):",
                funnel_text(source_funnel(con)),
                "",
            ]
            arms = arm_origins(con)
            if len(arms):
                lines += [
                    "Training sets (rows; distilled rows; rows the recipe wanted but its pools did not have):",
                    arms.to_string(index=False),
                    "",
                ]
            if table_exists(con, "benchmark_report"):
                smoke = (
                    table_exists(con, "benchmark_scores")
                    and con.execute(
                        "select bool_or(task_set = 'smoke' and starts_with(task, 'smoke_')) from benchmark_scores"
                    ).fetchone()[0]
                )
                report = report_intervals(con)
                lines += [
                    "Benchmark report"
                    + (
                        " (smoke-level items from the lm-eval package; not comparable with published scores)"
                        if smoke
                        else ""
                    )
                    + ": each score with its 95% bootstrap interval over the items; 'vs base' / 'vs full_low' = "
                    "the paired difference on the same items, 'differs' when its interval excludes 0. "
                    "heldout_instruct = mean per-token log-likelihood (nats, higher is better) of held-out "
                    "high-quality answers no training set contains.",
                    report.to_string(index=False)
                    if len(report)
                    else con.execute("select * from benchmark_report").df().round(3).to_string(index=False),
                    "",
                ]
            if table_exists(con, "rated_pool"):
                judges = sorted(
                    r[0]
                    for r in con.execute(
                        "select distinct judge_backend || ':' || judge_model from rated_pool where status = 'ok'"
                    ).fetchall()
                )
                bias = pool_length_correlation(con)
                lines += [
                    f"Judge {', '.join(judges)}: Overall vs log(answer length) Pearson {bias['pearson']:.2f}, "
                    f"Spearman {bias['spearman']:.2f} over {bias['n']} rows"
                    + (
                        " (the heuristic judge is mostly a length meter)."
                        if any(j.startswith("heuristic") for j in judges)
                        else "."
                    ),
                    "",
                ]
        finally:
            con.close()
    # The project's own duckdb package: a separately installed duckdb CLI may be too old to open the file.
    query = (
        f"import duckdb; duckdb.connect('{db}', read_only=True).sql("
        "'select source, status, count(*) from distilled_pool group by all order by all').show()"
    )
    exports = sorted((artifacts / "training_sets").glob("*.jsonl"))
    lines += [
        "Look next:",
        "  UI     : make ui, then http://127.0.0.1:3000 (Assets; benchmark_report shows the funnel plot and "
        "the scores with their intervals)",
        f'  SQL    : {sys.executable} -c "{query}"',
        f"  JSONL  : {exports[0] if exports else artifacts / 'training_sets' / '<arm>.jsonl'}"
        + (f" (and {len(exports) - 1} more arms)" if len(exports) > 1 else ""),
    ]
    return "\n".join(lines)


def show_where(tables: bool = True) -> None:
    home = prepare_home()
    import duckdb

    from lm_mixup_assets.lib.warehouse import current_snapshot, extension_path
    from lm_mixup_assets.lib.warehouse import redact as wh_redact
    from resources import warehouse_resource

    warehouse = warehouse_resource(home=str(home))
    lake = warehouse.lake
    print(f"warehouse : {warehouse.backend}: {warehouse.location}")
    print(f"artifacts : {home / 'artifacts'}")
    print(f"history   : {os.environ['DAGSTER_HOME']}")
    db = warehouse.database_path
    if tables and (lake is not None or db.exists()):
        with warehouse.connect(read_only=True) as con:
            names = [
                r[0]
                for r in con.execute(
                    "select table_name from information_schema.tables where table_catalog = "
                    "current_database() and table_schema='main' order by 1"
                ).fetchall()
            ]
            for t in names:
                count = con.execute(f'select count(*) from "{t}"').fetchall()[0][0]
                print(f"  {t:<26} {count:>8} rows")
            if lake is not None:
                print(f'snapshot  : {current_snapshot(con)} (lm-mixup sql --snapshot N "..." reads an earlier one)')
    print()
    if lake is None:
        print(demo_summary(db, home / "artifacts"))
    print('query it : python -m lm_mixup_assets.cli sql "select * from pool_summary"')
    if lake is not None:
        print(f"or, in a duckdb CLI of the same version (pip install duckdb-cli=={duckdb.__version__}):")
        for name in lake.extensions():
            print(f"  LOAD '{extension_path(name)}';")
        print(f"  {wh_redact(lake.attach_sql())};\n  USE {lake.name};")


def run_sql(sql: str, snapshot: int | None, output: str) -> int:
    """Run ``sql`` on the active warehouse and print the result (``--snapshot``: a lake as that snapshot left it)."""
    import duckdb

    from resources import warehouse_resource
    from resources.profiles import lm_mixup_home

    home = lm_mixup_home()  # no Dagster storage needed: stdout is the query's alone

    warehouse = warehouse_resource(home=str(home))
    try:
        with warehouse.connect(snapshot=snapshot) as con:
            result = con.sql(sql)
            df = result.df() if result is not None else None
    except (duckdb.Error, ValueError) as exc:
        print(f"{warehouse.backend} ({warehouse.location}): {exc}", file=sys.stderr)
        return 1
    if df is None:
        return 0
    if output == "csv":
        print(df.to_csv(index=False), end="")
    else:
        print(df.to_string(index=False, max_colwidth=80) if len(df) else f"(no rows; columns {list(df.columns)})")
    return 0


def show_config(profile: str | None, show_all: bool) -> int:
    """Resolve every step's settings now (profile preset, then environment) and print them: a bad
    value fails here, before any run, naming the field and the variable it came from."""
    if profile:
        os.environ["LM_MIXUP_PROFILE"] = profile
    import definitions  # noqa: F401  (loads every stage module, so every settings model is registered)
    from lm_mixup_assets.config import STAGE_SETTINGS, resolved_settings
    from lm_mixup_assets.lib.settings.base import SettingsError
    from resources.profiles import RESOURCE_SECTIONS, active_profile

    print(f"profile {active_profile()}; precedence: default < profile < LM_MIXUP_<PRESET>_<FIELD> < launchpad")
    failed = False
    for preset, model in sorted(STAGE_SETTINGS.items()):
        if not model.model_fields:
            continue
        try:
            settings, sources = resolved_settings(model)
        except SettingsError as exc:
            print(f"\n[{preset}] INVALID: {exc}", file=sys.stderr)
            failed = True
            continue
        rows = [(k, v, sources[k]) for k, v in settings.values().items() if show_all or sources[k] != "default"]
        print(f"\n[{preset}] {model.__name__}" + ("" if rows else "  (all defaults)"))
        for k, v, src in rows:
            print(f"  {k:<30} {v!r:<40} {src}")
    for key, resource in definitions.defs.resources.items():
        if key in RESOURCE_SECTIONS:
            print(f"\n[{key}] {type(resource).__name__} (resource)")
            for k, v in resource.__dict__.items():
                if not k.startswith("_") and isinstance(v, (str, int, float, bool)):
                    print(f"  {k:<30} {v!r}")
    return 1 if failed else 0


def run_ui(host: str, port: int) -> int:
    prepare_home()
    dg_bin = Path(sys.executable).with_name("dg")  # the venv's, even when it is not on PATH
    cmd = [str(dg_bin) if dg_bin.exists() else "dg", "dev", "--host", host, "--port", str(port)]
    print(f"starting {' '.join(cmd)} with DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    return subprocess.call(cmd, cwd=Path(__file__).resolve().parent.parent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lm-mixup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create and migrate the home (run history storage); safe to run in parallel")
    demo = sub.add_parser("demo", help="materialise every stage built so far")
    demo.add_argument("--source", action="append", help="only this source partition (repeatable)")
    ui = sub.add_parser("ui", help="start the Dagster UI")
    ui.add_argument("--host", default=os.environ.get("LM_MIXUP_UI_HOST", "127.0.0.1"))
    ui.add_argument("--port", type=int, default=int(os.environ.get("LM_MIXUP_UI_PORT", "3000")))
    sub.add_parser("where", help="print paths and table counts")
    sql = sub.add_parser("sql", help="run SQL on the warehouse (either backend) and print the result")
    sql.add_argument("query", help='the SQL, e.g. "select * from pool_summary"')
    sql.add_argument("--snapshot", type=int, help="ducklake: read the lake as this snapshot left it")
    sql.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    config = sub.add_parser("config", help="print every step's resolved settings and where each value comes from")
    config.add_argument("--profile", help="resolve for this profile instead of LM_MIXUP_PROFILE")
    config.add_argument("--all", action="store_true", help="also list the fields at their default")
    args = parser.parse_args(argv)
    if args.command == "init":
        home = prepare_home(verbose=True)
        print(f"home ready: LM_MIXUP_HOME={home} DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
        return 0
    if args.command == "demo":
        return run_demo(args.source)
    if args.command == "ui":
        return run_ui(args.host, args.port)
    if args.command == "config":
        return show_config(args.profile, args.all)
    if args.command == "sql":
        return run_sql(args.query, args.snapshot, "csv" if args.csv else "table")
    show_where()
    return 0


if __name__ == "__main__":
    sys.exit(main())
