"""Every `dg`, `dagster`, `duckdb` and `python -m lm_mixup_assets.cli` command README.md prints works as printed.

The fast tests parse each command with the real CLI's own option parser (click
for `dg`/`dagster`, argparse for ours) and validate what it names against
``definitions.defs``: assets, jobs, partitions, the asset subset the command
builds (this is where `dg launch --assets raw_pool,rated_pool` used to fail
with DagsterInvalidSubsetError) and run config. The slow tests run the cheap
ones for real on a temporary home. Commands only validated, never run, are
listed in SKIPPED with the reason.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import dagster as dg
import duckdb
import pytest

import definitions

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PREFIXES = ("dg ", "dagster ", "duckdb ", "python -m lm_mixup_assets.cli", ".venv/bin/python -c")
# A query of the warehouse as the README prints it (the duckdb package's own Python API: a `duckdb`
# CLI from PyPI may be older than the package and then cannot open the file).
QUERY = re.compile(r"""import duckdb; duckdb\.connect\('([^']+)', read_only=True\)\.sql\('([^']+)'\)\.show\(\)$""")

# Tool names in prose ("run `dg launch` in parallel"), not commands to run: listed, not checked.
MENTIONS = {"dg launch", "dagster asset materialize", "dagster job backfill"}
# Validated here but not run by the fast suite, and why.
SKIPPED = {
    "dg dev": "starts the UI server and keeps running (`make ui`, test_live_ui.py); options parsed",
    "dg launch --job": "runs every per-source stage (embedding, clustering): minutes; job and partition validated",
    "dagster job backfill": "executing a backfill needs the daemon (`make ui`); options, job and partitions validated, "
    "submission run in the slow test",
    "dagster asset materialize": "materialises with the user's data (e.g. /data/MIXTURE); selection and run config validated",
    "duckdb": "a `duckdb` CLI is not part of the project (PyPI's is older than the package); path and SQL validated",
    "python -m lm_mixup_assets.cli demo": "the whole demo takes minutes; arguments parsed by the CLI's own parser",
}


def readme_commands() -> list[str]:
    """Commands in fenced code blocks (one per line) and in inline code spans (which may wrap lines)."""
    text = README.read_text(encoding="utf-8")
    commands = []
    fenced = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    for block in fenced.findall(text):
        commands += [line.strip() for line in block.splitlines()]
    for span in re.findall(r"`([^`]+)`", fenced.sub("", text)):
        commands.append(" ".join(span.split()))
    return sorted({c for c in commands if c.startswith(PREFIXES) and c not in MENTIONS})


def expand_optional(command: str) -> list[str]:
    """`demo [--source humaneval]` is two commands: without and with the optional part."""
    match = re.search(r"\s*\[([^\[\]]+)\]", command)
    if not match:
        return [command]
    without = command[: match.start()] + command[match.end() :]
    with_it = command[: match.start()] + " " + match.group(1) + command[match.end() :]
    return expand_optional(without) + expand_optional(with_it)


def click_params(group: click.Group, argv: list[str]) -> dict:
    """Parse ``argv`` with the CLI's own click commands (a usage error raises), without running anything."""
    cmd, args = group, list(argv)
    while isinstance(cmd, click.Group):
        ctx = cmd.make_context(cmd.name, list(args), resilient_parsing=True)
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        _, cmd, args = cmd.resolve_command(ctx, rest)
    return cmd.make_context(cmd.name, list(args)).params


def dg_cli() -> click.Group:
    from dagster_dg_cli.cli import cli

    return cli


def dagster_cli() -> click.Group:
    from dagster._cli import create_dagster_cli

    return create_dagster_cli()


def asset_keys(selection: str) -> set:
    keys = {dg.AssetKey.from_user_string(k.strip()) for k in selection.split(",") if k.strip()}
    known = definitions.defs.resolve_asset_graph().get_all_asset_keys()
    assert keys <= known, f"unknown assets {sorted(k.to_user_string() for k in keys - known)}"
    return keys


def subset_job(keys: set) -> dg.JobDefinition:
    # The same subsetting dg launch / dagster asset materialize do: a multi-asset that cannot be split fails here.
    return definitions.defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=keys)


def check_partition(keys: set, partition: str | None) -> None:
    if partition is None:
        return
    graph = definitions.defs.resolve_asset_graph()
    for key in keys:
        parts = graph.get(key).partitions_def
        assert parts is not None and partition in parts.get_partition_keys(), (key, partition)


def validate_dg(argv: list[str]) -> str:
    params = click_params(dg_cli(), argv)
    if argv[0] == "dev":
        return "dg dev"
    assert argv[0] == "launch", f"no check for `dg {' '.join(argv)}`: add one to tests/test_readme_commands.py"
    if params["assets"]:
        keys = asset_keys(params["assets"])
        subset_job(keys)
        check_partition(keys, params["partition"])
        return "dg launch --assets"
    job = definitions.defs.resolve_job_def(params["job"])
    if params["partition"]:
        assert params["partition"] in job.partitions_def.get_partition_keys()
    return "dg launch --job"


def validate_dagster(argv: list[str]) -> str:
    params = click_params(dagster_cli(), argv)
    if argv[:2] == ["job", "backfill"]:
        assert params["module_name"] == ("definitions",)
        job = definitions.defs.resolve_job_def(params["job_name"])
        wanted = params["partitions"].split(",")
        assert set(wanted) <= set(job.partitions_def.get_partition_keys()), wanted
        return "dagster job backfill"
    if argv[:2] == ["asset", "materialize"]:
        assert params["module_name"] == "definitions"
        job = subset_job(asset_keys(params["select"]))
        run_config = json.loads(params["config_json"]) if params["config_json"] else {}
        dg.validate_run_config(job, run_config)
        return "dagster asset materialize"
    raise AssertionError(f"no check for `dagster {' '.join(argv)}`: add one to tests/test_readme_commands.py")


def validate_duckdb(argv: list[str]) -> str:
    path, sql = argv
    assert path == ".lm_mixup/warehouse.duckdb", "the README's warehouse is the default LM_MIXUP_HOME's"
    statements = duckdb.extract_statements(sql)
    assert len(statements) == 1
    tables = set(re.findall(r"\bfrom\s+([A-Za-z_][A-Za-z0-9_]*)", sql, re.I))
    code = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "lm_mixup_assets").rglob("*.py"))
    assets = {k.to_user_string() for k in definitions.defs.resolve_asset_graph().get_all_asset_keys()}
    for table in tables:  # an asset's table, or one the code writes by name
        assert table in assets or re.search(rf"[\"']{table}[\"']", code), f"no table {table!r} is written"
    return "duckdb"


def run_query(argv: list[str], tmp_path: Path) -> str:
    """Run the printed query for real, in a folder whose warehouse holds the tables it names (empty)."""
    code = argv[1]
    match = QUERY.search(code)
    assert argv[0] == "-c" and match, f"no check for `.venv/bin/python {' '.join(argv)}`"
    path, sql = match.groups()
    validate_duckdb([path, sql])
    (tmp_path / ".lm_mixup").mkdir(exist_ok=True)
    con = duckdb.connect(str(tmp_path / path))
    for table in set(re.findall(r"\bfrom\s+([A-Za-z_][A-Za-z0-9_]*)", sql, re.I)):
        con.execute(f"create or replace table {table} (source varchar, status varchar)")
    con.execute("insert into distilled_pool values ('humaneval', 'ok')") if "distilled_pool" in sql else None
    con.close()
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return "query"


def validate_cli(argv: list[str], monkeypatch) -> str:
    from lm_mixup_assets import cli

    called = []
    # Only the long-running actions are replaced: the arguments still go through the CLI's own parser.
    monkeypatch.setattr(cli, "run_demo", lambda sources: called.append(("demo", sources)) or 0)
    monkeypatch.setattr(cli, "run_ui", lambda host, port: called.append(("ui", host, port)) or 0)
    try:
        assert cli.main(argv) == 0
    except SystemExit as exc:  # argparse exits 2 on an unknown option
        raise AssertionError(f"`python -m lm_mixup_assets.cli {' '.join(argv)}` does not parse") from exc
    if argv[0] == "demo":
        sources = called[-1][1] or []
        parts = definitions.defs.resolve_asset_graph().get(dg.AssetKey("raw_pool")).partitions_def.get_partition_keys()
        assert set(sources) <= set(parts), sources
        return "python -m lm_mixup_assets.cli demo"
    return f"python -m lm_mixup_assets.cli {argv[0]}"


def test_readme_prints_the_commands_this_test_knows():
    commands = readme_commands()
    # The README's known commands are all found (the span wraps lines in the markdown).
    assert 'dg launch --assets "raw_pool,rated_pool" --partition humaneval' in commands
    assert any(c.startswith("dagster job backfill -m definitions -j per_source_job") for c in commands)
    assert any(c.startswith(".venv/bin/python -c") and "from pool_summary" in c for c in commands)


@pytest.mark.parametrize("command", [c for printed in readme_commands() for c in expand_optional(printed)])
def test_every_readme_command_parses_and_names_real_things(command, monkeypatch, tmp_path):
    monkeypatch.setenv("LM_MIXUP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    if command.startswith("python -m lm_mixup_assets.cli"):
        kind = validate_cli(shlex.split(command)[3:], monkeypatch)
    elif command.startswith(".venv/bin/python -c"):
        kind = run_query(shlex.split(command)[1:], tmp_path)
    else:
        program, *argv = shlex.split(command)
        kind = {"dg": validate_dg, "dagster": validate_dagster, "duckdb": validate_duckdb}[program](argv)
    done = {
        "query": "run for real on a warehouse holding the tables it names",
        "dg launch --assets": "validated; also run for real in the slow tests",
        "python -m lm_mixup_assets.cli sql": "run for real on an empty home (tests/test_warehouse.py: on tables)",
    }
    print(f"{command}: {done.get(kind) or 'validated, not run: ' + SKIPPED[kind]}")


def _run_printed(command: str, home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LM_MIXUP_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    return subprocess.run(shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_dg_launch_of_raw_and_rated_pool_runs_as_printed(tmp_path):
    command = 'dg launch --assets "raw_pool,rated_pool" --partition humaneval'
    assert command in readme_commands()
    out = _run_printed(command, tmp_path / "home")
    assert out.returncode == 0, out.stderr[-3000:]
    con = duckdb.connect(str(tmp_path / "home" / "warehouse.duckdb"), read_only=True)
    try:
        assert con.execute("select count(*) from rated_pool where source = 'humaneval'").fetchone()[0] == 164
    finally:
        con.close()


@pytest.mark.slow
def test_dagster_job_backfill_is_accepted_as_printed(tmp_path):
    command = next(c for c in readme_commands() if c.startswith("dagster job backfill"))
    out = _run_printed(command, tmp_path / "home")
    # Without a daemon the backfill is only submitted; that it was accepted is what the command can show here.
    assert out.returncode == 0 and "Launched backfill" in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]
