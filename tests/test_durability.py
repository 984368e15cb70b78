"""Pay once, even under ``kill -9``: a judge answer is committed to judge_cache within a second of arriving.

A rating runs in a child process (the real path: JudgeResource.rate_pairs, openai
backend, the local OpenAI-compatible server of tests/openai_server.py with a
per-request delay so the run is slow). The test SIGKILLs it mid-way, re-rates
the same rows against a fresh server, and checks what the re-run sent again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lm_mixup_assets.lib.cache import CacheWriter
from tests.openai_server import OpenAICompatServer, default_answer, prompt_hash

REPO = Path(__file__).resolve().parents[1]
API_KEY = "sk-durability-test-key"
CONCURRENCY = 4
LATENCY_S = 0.4  # 4 in flight / 0.4 s = 10 answers per second
ROWS = 60

# The child: one rating of every row, as an asset would run it. argv: rows.json home base_url
CHILD = f"""
import json, sys
from resources import JudgeResource, WarehouseResource
rows = json.load(open(sys.argv[1]))
judge_fields = dict(backend="openai", model="durability-judge", base_url=sys.argv[3], concurrency={CONCURRENCY},
                    timeout_s=30.0, max_retries=0)
if "api_key" in JudgeResource.model_fields:  # older resources took the key as a field
    judge_fields["api_key"] = {API_KEY!r}
JudgeResource(**judge_fields).rate_pairs([r[0] for r in rows], [r[1] for r in rows], WarehouseResource(home=sys.argv[2]))
print("finished", flush=True)
"""


def rows() -> list[list[str]]:
    return [
        [f"Question {i}: why is the number {i} interesting?", f"Because {i} has {i % 7} friends."] for i in range(ROWS)
    ]


def judge(base_url: str):
    from resources import JudgeResource

    fields = {
        "backend": "openai",
        "model": "durability-judge",
        "base_url": base_url,
        "concurrency": CONCURRENCY,
        "timeout_s": 30.0,
        "max_retries": 0,
    }
    if "api_key" in JudgeResource.model_fields:
        fields["api_key"] = API_KEY
    return JudgeResource(**fields)


def test_a_killed_rating_keeps_every_answer_older_than_a_second(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(rows()))
    answered: list[tuple[float, str]] = []  # (when the server answered, prompt hash)
    lock = threading.Lock()

    def recording_answer(user_message: str) -> str:
        with lock:
            answered.append((time.monotonic(), prompt_hash(user_message)))
        return default_answer(user_message)

    with OpenAICompatServer(latency_s=LATENCY_S, mode="thread", answer_fn=recording_answer) as slow:
        env = {**os.environ, "OPENAI_API_KEY": API_KEY, "LM_MIXUP_HOME": str(tmp_path)}
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(rows_file), str(tmp_path), slow.base_url],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while len(answered) < 20:  # ~2 s of answers: some are well over a second old
                assert child.poll() is None, f"the rating died before the kill: {child.communicate()}"
                assert time.monotonic() < deadline, "the server never answered 20 rows"
                time.sleep(0.01)
            child.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == -signal.SIGKILL
        sent_before_kill = set(slow.stats()["per_prompt"])
    with lock:
        old_enough = {h for t, h in answered if t < killed_at - 1.0}
        answered_hashes = {h for _, h in answered}
    assert 5 <= len(old_enough) < len(answered_hashes) < ROWS  # killed mid-way, with history to check

    with OpenAICompatServer(latency_s=0.0, mode="thread") as fast:
        from resources import WarehouseResource

        rating, _ = judge(fast.base_url).rate_pairs(
            [r[0] for r in rows()], [r[1] for r in rows()], WarehouseResource(home=str(tmp_path))
        )
        sent_again = set(fast.stats()["per_prompt"])
    assert all(o.status == "ok" for o in rating.outcomes)
    assert sum(rating.from_cache) == ROWS - len(sent_again)
    # Every answer older than a second was a cache hit.
    assert not (old_enough & sent_again)
    # What was paid twice: answers of the last moment, at most one commit batch (= concurrency) plus
    # the batch being committed when the kill came; plus the requests that were in flight.
    assert len(answered_hashes & sent_again) <= 2 * CONCURRENCY
    assert len(sent_before_kill & sent_again) <= 3 * CONCURRENCY
    assert sent_again >= set(sent_before_kill) - answered_hashes  # unanswered rows are asked again


def test_cache_writer_commits_by_count_and_by_age_and_keeps_the_rest_on_close():
    batches: list[list[int]] = []
    writer = CacheWriter(lambda b: batches.append(list(b)), max_rows=3, max_delay_s=0.2, min_interval_s=0.0)
    for i in range(3):
        writer.add(i)
    deadline = time.monotonic() + 2
    while not batches and time.monotonic() < deadline:
        time.sleep(0.005)
    assert batches == [[0, 1, 2]]  # a full batch goes at once
    writer.add(3)
    time.sleep(0.05)
    assert batches == [[0, 1, 2]]  # one answer waits...
    deadline = time.monotonic() + 2
    while len(batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert batches == [[0, 1, 2], [3]]  # ...until it is max_delay_s old
    writer.add(4)
    writer.close()  # the tail is written on close
    assert batches == [[0, 1, 2], [3], [4]]
    assert (writer.writes, writer.rows_written) == (3, 5)


def test_cache_writer_failure_stops_intake_and_close_retries_then_raises():
    attempts: list[list[int]] = []

    def always_locked(batch):
        attempts.append(list(batch))
        raise OSError("database is locked")

    writer = CacheWriter(always_locked, max_rows=1, max_delay_s=0.1, min_interval_s=0.0)
    writer.add(1)
    deadline = time.monotonic() + 2
    while not attempts and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.02)
    with pytest.raises(RuntimeError, match="cache writer failed: database is locked"):
        writer.add(2)  # no more paid answers that could not be stored
    with pytest.raises(OSError, match="database is locked"):
        writer.close()  # one last try of what is pending, then the real cause
    assert attempts == [[1], [1]]


def test_cache_writer_spaces_commits_so_fast_answers_share_one():
    batches: list[tuple[float, list[int]]] = []
    writer = CacheWriter(
        lambda b: batches.append((time.monotonic(), list(b))), max_rows=1, max_delay_s=0.5, min_interval_s=0.3
    )
    writer.add(0)
    deadline = time.monotonic() + 2
    while not batches and time.monotonic() < deadline:
        time.sleep(0.005)
    for i in (1, 2, 3):  # each alone would be a full batch; they arrive within the interval
        writer.add(i)
    time.sleep(0.1)
    assert [b for _, b in batches] == [[0]]
    deadline = time.monotonic() + 2
    while len(batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    writer.close()
    assert [b for _, b in batches] == [[0], [1, 2, 3]]
    assert batches[1][0] - batches[0][0] >= 0.29
