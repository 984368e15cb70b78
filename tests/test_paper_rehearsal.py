"""benchmarks/paper_rehearsal.py end to end at 2,000 rows: every stage line parses and the counts add up,
online and through the Batch API path (which must rate every row to the same split)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(
    r"^stage (?P<name>\w+) rows=(?P<rows>\d+) seconds=(?P<seconds>[\d.]+) peak_rss_mb=(?P<rss>\d+)(?P<rest>.*)$"
)
LAST = re.compile(r"^rehearsal rows=(\d+) seconds=([\d.]+) peak_rss_mb=(\d+)$")
STAGES = [
    "sources",
    "judge",
    "quality_split",
    "embed_low",
    "clusters",
    "distilled_stand_in",
    "embed_targets",
    "mixture_pairing",
    "long_tail",
    "training_sets",
]


def run_rehearsal(cwd: Path, *flags: str) -> tuple[dict[str, dict], list[str]]:
    """The stage lines by name (rows, seconds, rss and the line's key=value details) and all stdout lines."""
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "paper_rehearsal.py"), "--rows=2000", "--targets=3000", *flags],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
        check=True,
    ).stdout.splitlines()
    stages = {}
    for line in out:
        if m := LINE.match(line):
            extra = dict(kv.split("=", 1) for kv in m["rest"].split())
            stages[m["name"]] = {"rows": int(m["rows"]), "seconds": float(m["seconds"]), "rss": int(m["rss"]), **extra}
    return stages, out


@pytest.fixture(scope="module")
def online_rehearsal(tmp_path_factory):
    return run_rehearsal(tmp_path_factory.mktemp("online"))


@pytest.mark.slow  # a benchmark's smoke run (15 s): make test-all
def test_rehearsal_at_2000_rows(online_rehearsal):
    stages, out = online_rehearsal
    assert list(stages) == STAGES
    s = stages
    assert s["sources"]["rows"] == s["judge"]["rows"] == s["quality_split"]["rows"] == 2000
    assert int(s["sources"]["sources"]) == 5
    # every row rated once, ok or failed; the split: rows in = high + low + judge failures
    assert int(s["judge"]["requests"]) >= 2000 and int(s["judge"]["ok"]) + int(s["judge"]["failed"]) == 2000
    split = s["quality_split"]
    assert int(split["high"]) + int(split["low"]) + int(split["failed"]) == 2000
    assert int(split["high"]) > 0 and int(split["low"]) > 0
    assert s["embed_low"]["rows"] == s["clusters"]["rows"] == int(split["low"])
    # capacity-constrained clusters of 2-5 rows: one distilled stand-in per cluster
    clusters = int(s["clusters"]["clusters"])
    assert s["distilled_stand_in"]["rows"] == clusters and 2 * clusters <= int(split["low"]) <= 5 * clusters
    assert s["embed_targets"]["rows"] == s["mixture_pairing"]["rows"] == 3000
    assert float(s["mixture_pairing"]["partners_per_target"]) == int(s["mixture_pairing"]["k"])
    assert s["long_tail"]["rows"] == int(split["high"]) + int(s["distilled_stand_in"]["distilled_high"])
    sets = s["training_sets"]
    assert sets["rows"] + int(sets["shortfall"]) == int(sets["arms"]) * int(sets["size"])  # rows wanted = taken + short
    m = LAST.match(out[-1])
    assert m and int(m[1]) == 2000 and int(m[3]) >= max(st["rss"] for st in stages.values())


@pytest.mark.slow  # a benchmark's smoke run (15 s): make test-all
def test_batch_rehearsal_rates_every_row_to_the_online_split(online_rehearsal, tmp_path):
    stages, out = run_rehearsal(tmp_path, "--judge-batch")
    assert list(stages) == STAGES
    judge = stages["judge"]
    # one batch or more per source (its own rate_pairs call), every row one batch line, no online re-ask
    assert int(judge["batches"]) >= 5 and int(judge["batch_lines"]) == 2000 and int(judge["online_reasks"]) == 0
    assert int(judge["ok"]) == 2000 and int(judge["failed"]) == 0
    online = online_rehearsal[0]
    for key in ("high", "low", "failed"):  # same answers, same parser: the same rows high and low
        assert stages["quality_split"][key] == online["quality_split"][key]
    assert stages["clusters"]["clusters"] == online["clusters"]["clusters"]
    assert LAST.match(out[-1])
