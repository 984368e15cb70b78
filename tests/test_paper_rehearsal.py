"""benchmarks/paper_rehearsal.py end to end at 2,000 rows: every stage line parses and the counts add up."""

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


@pytest.mark.slow  # a benchmark's smoke run (15 s): make test-all
def test_rehearsal_at_2000_rows(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "paper_rehearsal.py"), "--rows", "2000", "--targets", "3000"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        check=True,
    ).stdout.splitlines()
    stages = {}
    for line in out:
        if m := LINE.match(line):
            extra = dict(kv.split("=", 1) for kv in m["rest"].split())
            stages[m["name"]] = {"rows": int(m["rows"]), "seconds": float(m["seconds"]), "rss": int(m["rss"]), **extra}
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
