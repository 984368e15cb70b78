"""A fresh home is initialised once, safely in parallel; a home broken by parallel first runs is repaired.

Without `lm-mixup init`, three Dagster commands started at once on a new
DAGSTER_HOME race to create runs.db and leave two alembic revisions in it; every
later command in that home then fails ("more than one head present").
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from lm_mixup_assets import cli

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def home_env(home: Path) -> dict:
    return {**os.environ, "LM_MIXUP_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "LM_MIXUP_PROFILE": "demo"}


def start_all(cmds: list[list[str]], env: dict) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in cmds
    ]
    out = []
    for c, p in zip(cmds, procs):
        try:
            stdout, _ = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
        out.append(subprocess.CompletedProcess(c, p.returncode, stdout))
    return out


def alembic_rows(dagster_home: Path) -> list[str]:
    with sqlite3.connect(dagster_home / "history" / "runs.db") as con:
        return [r[0] for r in con.execute("select version_num from alembic_version")]


def test_parallel_init_then_three_parallel_runs_on_a_new_home(tmp_path):
    env = home_env(tmp_path)
    inits = start_all([[sys.executable, "-m", "lm_mixup_assets.cli", "init"]] * 3, env)
    assert [r.returncode for r in inits] == [0, 0, 0], [r.stdout[-2000:] for r in inits]
    dagster_home = tmp_path / "dagster"
    assert len(alembic_rows(dagster_home)) == 1
    cfg = (dagster_home / "dagster.yaml").read_text()
    assert "telemetry:\n  enabled: false" in cfg and "run_monitoring:\n  enabled: true" in cfg

    # Dagster's own CLI, three at once: the cheapest asset of the smallest demo source.
    materialize = [
        str(BIN / "dagster"),
        "asset",
        "materialize",
        "-m",
        "definitions",
        "--select",
        "raw_pool,rejected_rows",
        "--partition",
        "chatterbot",
    ]
    runs = start_all([materialize] * 3, env)
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stdout[-3000:] for r in runs]
    assert len(alembic_rows(dagster_home)) == 1
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        statuses = [r.dagster_run.status for r in instance.get_run_records()]
    assert statuses == [dg.DagsterRunStatus.SUCCESS] * 3


def test_init_repairs_a_home_left_with_two_alembic_heads(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_MIXUP_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    cli.prepare_home()
    dagster_home = tmp_path / "dagster"
    [head] = alembic_rows(dagster_home)
    # What a lost race leaves (measured): the head plus the revision a second creator stamps.
    from dagster._core.storage.runs.sqlite.sqlite_run_storage import (
        LAST_KNOWN_STAMPED_SQLITE_ALEMBIC_REVISION as older,
    )

    with sqlite3.connect(dagster_home / "history" / "runs.db") as con:
        con.execute("insert into alembic_version values (?)", [older])
    with pytest.raises(Exception, match="more than one head"):
        dg.DagsterInstance.from_config(str(dagster_home))

    (dagster_home / cli.INIT_MARKER).unlink()  # also the migration path, not only the fast one
    cli.prepare_home()
    assert alembic_rows(dagster_home) == [head]
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert instance.get_run_records() == []


SLOW_RUN = """
import time, dagster as dg

@dg.asset
def waits_forever():
    time.sleep(120)

dg.materialize([waits_forever], instance=dg.DagsterInstance.get())
"""


@contextlib.contextmanager
def a_started_run(tmp_path, monkeypatch):
    """A fresh home and a child process whose run is STARTED (it sleeps); yields (instance, child)."""
    monkeypatch.setenv("LM_MIXUP_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    cli.prepare_home()
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN],
        cwd=REPO,
        env=home_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
            deadline = time.monotonic() + 60
            while not instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
                assert child.poll() is None and time.monotonic() < deadline, "the run never started"
                time.sleep(0.1)
            time.sleep(0.5)  # its "Executing steps in process (pid: N)" event is written
            yield instance, child
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_init_fails_a_run_whose_worker_was_killed(tmp_path, monkeypatch):
    with a_started_run(tmp_path, monkeypatch) as (instance, child):
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        [record] = instance.get_run_records()
        assert record.dagster_run.status == dg.DagsterRunStatus.STARTED  # nobody recorded the end

        cli.prepare_home()
        [record] = instance.get_run_records()
        assert record.dagster_run.status == dg.DagsterRunStatus.FAILURE
        cli.prepare_home()  # idempotent: nothing left to fail


def test_a_live_run_is_left_alone(tmp_path, monkeypatch):
    with a_started_run(tmp_path, monkeypatch) as (instance, _child):
        cli.prepare_home()
        [record] = instance.get_run_records()
        assert record.dagster_run.status == dg.DagsterRunStatus.STARTED
