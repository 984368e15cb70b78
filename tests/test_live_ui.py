"""Live UI: start the real webserver, read the definitions over GraphQL, and
materialise one source partition by clicking through the UI in headless chromium.

Needs Debian's chromium (``apt-get install chromium``) and the ``playwright``
package; skips with the reason otherwise. ``playwright install`` is never used:
the browser is the system one, at ``$LM_MIXUP_CHROMIUM`` (default
/usr/bin/chromium).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("LM_MIXUP_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SOURCES = ["chatterbot", "chitchat", "humaneval"]
# Every asset, its group and its partitions, as the reviewed graph snapshot has them.
_SNAPSHOT = json.loads((Path(__file__).parent / "snapshots" / "asset_graph.json").read_text())
EXPECTED_ASSETS = {key: (node["group"], node["partitions"]) for key, node in _SNAPSHOT.items()}
EXPECTED_JOBS = {"per_source_job", "all_sources_job", "distill_job", "long_tail_job", "per_arm_job", "report_job"}
PARTITION = "humaneval"

STARTUP_TIMEOUT_S = 120
RUN_TIMEOUT_S = 180
UI_TIMEOUT_MS = 60_000

pytestmark = pytest.mark.timeout(480)


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no server log: {exc}>"
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Dagster colours its log lines
    return "\n".join(text.splitlines()[-lines:])


def _server_command(port: int) -> list[str]:
    """`dg dev`, as `make ui` runs it; `dagster dev -m definitions` where dg is missing."""
    dg_bin = Path(sys.executable).with_name("dg")  # the venv's, even when it is not on PATH
    if dg_bin.exists():
        return [str(dg_bin), "dev", "--host", "127.0.0.1", "--port", str(port)]
    return [
        str(Path(sys.executable).with_name("dagster")),
        "dev",
        "-m",
        "definitions",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]


def _restore_default_signals() -> None:
    # A process started from a non-interactive shell inherits SIGINT/SIGTERM as
    # ignored, and `dagster dev` then never shuts down on them: undo that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes in session ``sid`` (the server's own session)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil ships with the dev env
        try:
            os.killpg(sid, 0)
        except ProcessLookupError:
            return []
        return [sid]
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getsid(proc.info["pid"]) == sid:
                members.append(proc.info["pid"])
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


class Server:
    def __init__(self, port: int, proc: subprocess.Popen, log_path: Path):
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.base = f"http://127.0.0.1:{port}"

    def tail(self) -> str:
        return f"--- server log tail ({self.log_path}) ---\n{_log_tail(self.log_path)}"

    def gql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.base}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = json.load(resp)
        assert not payload.get("errors"), f"GraphQL errors for {query!r}: {payload['errors']}"
        return payload["data"]


@pytest.fixture
def sync_api():
    """Skip (before starting anything) unless chromium and playwright are there."""
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed: apt-get install chromium")
    return pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install playwright")


@pytest.fixture
def server(sync_api, tmp_path):
    home = tmp_path / "lm_mixup_home"
    dagster_home = tmp_path / "dagster_home"
    home.mkdir()
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LM_MIXUP_")}
    env.update(
        LM_MIXUP_HOME=str(home),
        LM_MIXUP_PROFILE="demo",
        DAGSTER_HOME=str(dagster_home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        # dg warns unless the project's venv is the active one.
        VIRTUAL_ENV=str(Path(sys.executable).parent.parent),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    port = _free_port()
    log_path = tmp_path / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        _server_command(port),
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own session and process group: one signal reaches every child
        preexec_fn=_restore_default_signals,
    )
    srv = Server(port, proc, log_path)
    try:
        _wait_until_ready(srv)
        yield srv
    finally:
        leftovers = _stop(proc)
        log.close()
        assert not leftovers, f"processes of the webserver still alive after teardown: {leftovers}\n{srv.tail()}"


def _wait_until_ready(srv: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            pytest.fail(f"webserver exited with {srv.proc.returncode} before answering\n{srv.tail()}")
        try:
            with urllib.request.urlopen(f"{srv.base}/server_info", timeout=5) as resp:
                json.load(resp)
            entries = srv.gql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }")[
                "workspaceOrError"
            ]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return
            last = f"locations {entries}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, AssertionError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"webserver not ready on port {srv.port} after {STARTUP_TIMEOUT_S}s ({last})\n{srv.tail()}")


def _stop(proc: subprocess.Popen) -> list[int]:
    """SIGINT the server's process group, wait, SIGKILL what is left; return survivors."""
    sid = proc.pid
    for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(sid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + wait_s
        while _session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.25)
        if proc.poll() is not None and not _session_members(sid):
            return []
    # Children that made their own process group but kept the session.
    for pid in _session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(1)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    return _session_members(sid)


RUNS_QUERY = """
query Runs($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
    ... on PythonError { message }
  }
}
"""


def _runs_for(srv: Server, partition: str) -> list[dict]:
    data = srv.gql(RUNS_QUERY, {"tags": [{"key": "dagster/partition", "value": partition}]})["runsOrError"]
    assert data["__typename"] == "Runs", f"runsOrError: {data}"
    return data["results"]


def _run_errors(srv: Server, run_id: str) -> str:
    try:
        data = srv.gql(
            """query Logs($runId: ID!) { logsForRun(runId: $runId) { __typename
                 ... on EventConnection { events { __typename ... on MessageEvent { message level } } } } }""",
            {"runId": run_id},
        )["logsForRun"]
        events = data.get("events") or []
        return "\n".join(e.get("message", "") for e in events if e.get("level") in ("ERROR", "CRITICAL"))[-4000:]
    except Exception as exc:  # diagnostics only
        return f"<could not read run logs: {exc}>"


def _select_only_partition(page, dialog, title, partition: str) -> None:
    """In the launch dialog, switch to "Custom" and tick exactly ``partition``."""
    dialog.get_by_role("button", name=re.compile(r"Custom$")).click()
    items = page.get_by_role("menuitem").filter(visible=True)
    if not items.count():
        dialog.get_by_role("img", name="expand_more").click()  # opens the partition menu
        items.first.wait_for(state="visible")
    for key in SOURCES:
        item = page.get_by_role("menuitem", name=key).filter(visible=True).first
        box = item.get_by_role("checkbox")
        if box.is_checked() != (key == partition):
            item.click()
            page.wait_for_timeout(200)
    title.click()  # closes the menu (Escape could close the dialog instead)


# --------------------------------------------------------------------------- the test


@pytest.fixture
def browser(sync_api, server):
    """Set up after the server, so it is closed before the server is stopped."""
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_live_ui_materialises_one_partition(server, browser, tmp_path):
    from playwright.sync_api import TimeoutError as PWTimeout

    page = None
    started = time.monotonic()

    def phase(name: str) -> None:  # shown with -s, or with the output of a failure
        print(f"[live-ui +{time.monotonic() - started:5.1f}s] {name}", flush=True)

    try:
        # ---- definitions over GraphQL -------------------------------------------------
        nodes = server.gql("{ assetNodes { assetKey { path } groupName isPartitioned partitionKeys } }")["assetNodes"]
        by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        missing = sorted(set(EXPECTED_ASSETS) - set(by_key))
        assert not missing, f"assets missing from the webserver: {missing}; it has {sorted(by_key)}"
        for key, (group, partitions) in EXPECTED_ASSETS.items():
            node = by_key[key]
            assert node["groupName"] == group, f"{key}: group {node['groupName']!r}, expected {group!r}"
            assert node["isPartitioned"] is (partitions is not None), f"{key}: isPartitioned={node['isPartitioned']}"
            if partitions is not None:
                assert node["partitionKeys"] == partitions, f"{key}: partitions {node['partitionKeys']}"

        locations = server.gql(
            """{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError {
                 __typename ... on RepositoryLocation { repositories { name pipelines { name } } }
                 ... on PythonError { message } } } } } }"""
        )["workspaceOrError"]["locationEntries"]
        assert len(locations) == 1, f"expected one code location, got {locations}"
        location = locations[0]
        assert location["locationOrLoadError"]["__typename"] == "RepositoryLocation", location
        jobs = {p["name"] for r in location["locationOrLoadError"]["repositories"] for p in r["pipelines"]}
        assert EXPECTED_JOBS <= jobs, f"jobs missing: {sorted(EXPECTED_JOBS - jobs)}; have {sorted(jobs)}"

        phase("definitions checked over GraphQL")
        # ---- the browser ---------------------------------------------------------------
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(UI_TIMEOUT_MS)
        skip = page.get_by_role("button", name="Skip", exact=True)
        # The first-visit "Join the Dagster community" dialog; whenever it covers something we click.
        page.add_locator_handler(skip, lambda loc: loc.click())

        # Lineage of group `pool` (the group page's default tab).
        page.goto(f"{server.base}/locations/{location['name']}/asset-groups/pool", wait_until="domcontentloaded")
        try:
            skip.wait_for(state="visible", timeout=15_000)
            skip.click()
            skip.wait_for(state="hidden")
        except PWTimeout:
            pass  # dialog already dismissed for this DAGSTER_HOME, or never shown
        for key in ("raw_pool", "rated_pool", "low_quality_pool", "pool_summary"):
            page.get_by_text(key, exact=True).first.wait_for(state="visible")
        page.wait_for_timeout(1000)  # let the graph finish laying out
        shots = {"lineage": tmp_path / "01_pool_lineage.png"}
        page.screenshot(path=shots["lineage"])
        phase("pool lineage rendered")

        # raw_pool's page -> Materialize… -> (confirm the multi-asset) -> pick `humaneval`.
        page.goto(f"{server.base}/assets/raw_pool", wait_until="domcontentloaded")
        page.get_by_role("button", name=re.compile(r"Materialize(…|\.\.\.)$")).click()
        dialog = page.get_by_role("dialog")
        launch_title = dialog.get_by_text(re.compile(r"^\s*Launch runs? to materialize"))
        confirm_title = dialog.get_by_text("Additional assets will be materialized")
        launch_title.or_(confirm_title).first.wait_for(state="visible")
        if confirm_title.is_visible():
            # raw_pool and rejected_rows are one multi-asset that cannot be subset.
            dialog.get_by_role("button", name=re.compile(r"Confirm$")).click()
            launch_title.wait_for(state="visible")

        # The dialog may open on "Custom" with nothing picked and then switch to "All" once
        # partition health has loaded, so pick exactly {humaneval} and re-check it has held.
        launch = dialog.get_by_role("button", name=re.compile(r"Launch 1 run$"))
        one_partition = dialog.get_by_text(re.compile(r"^\s*1 partition\s*$"))
        for _attempt in range(3):
            _select_only_partition(page, dialog, launch_title, PARTITION)
            page.wait_for_timeout(1500)
            if launch.is_visible() and one_partition.is_visible():
                break
        else:
            pytest.fail(f"could not select only {PARTITION!r} in the launch dialog:\n{dialog.inner_text()}")
        shots["dialog"] = tmp_path / "02_launch_dialog.png"
        page.screenshot(path=shots["dialog"])
        launched_at = time.monotonic()
        launch.click()
        phase(f"launched {PARTITION} from the dialog")

        # ---- wait for the run over GraphQL ---------------------------------------------
        deadline = launched_at + RUN_TIMEOUT_S
        run, status = None, None
        while time.monotonic() < deadline:
            runs = _runs_for(server, PARTITION)
            if runs:
                assert len(runs) == 1, f"one click should launch one run, got {runs}"
                run = runs[0]
                status = run["status"]
                if status in ("SUCCESS", "FAILURE", "CANCELED"):
                    break
            time.sleep(1)
        assert run is not None, f"no run for partition {PARTITION} within {RUN_TIMEOUT_S}s\n{server.tail()}"
        assert status == "SUCCESS", (
            f"run {run['runId']} ended {status} (or still running after {RUN_TIMEOUT_S}s)\n"
            f"{_run_errors(server, run['runId'])}\n{server.tail()}"
        )
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags.get("dagster/partition") == PARTITION, tags
        for other in SOURCES:
            if other != PARTITION:
                assert not _runs_for(server, other), f"a run was launched for {other} too"

        mats = server.gql(
            """{ assetOrError(assetKey: {path: ["raw_pool"]}) { ... on Asset {
                 assetMaterializations(partitions: ["humaneval"]) { partition runId } } } }"""
        )["assetOrError"]["assetMaterializations"]
        assert [m["runId"] for m in mats] == [run["runId"]], f"raw_pool[{PARTITION}] materialisations: {mats}"

        phase(f"run {run['runId']} SUCCESS")
        # ---- the finished run's page ---------------------------------------------------
        page.goto(f"{server.base}/runs/{run['runId']}", wait_until="domcontentloaded")
        page.get_by_text("Success", exact=True).first.wait_for(state="visible")
        page.wait_for_timeout(1000)
        shots["run"] = tmp_path / "03_run_success.png"
        page.screenshot(path=shots["run"])
        page.close()
        phase("run page captured")

        for name, path in shots.items():
            assert path.exists(), f"{name} screenshot not written: {path}"
            assert path.stat().st_size > 10_000, f"{name} screenshot suspiciously small: {path.stat().st_size} bytes"
    except BaseException:
        if page is not None and not page.is_closed():
            try:
                page.screenshot(path=tmp_path / "failure.png")
                print(f"failure screenshot: {tmp_path / 'failure.png'} (url {page.url})")
            except Exception as exc:
                print(f"no failure screenshot: {exc}")
        print(server.tail())
        raise
