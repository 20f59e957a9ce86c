"""kill -9 of a persist worker mid-run, then a restart: nothing lost, nothing stored twice,
every session's counters equal to what its stored chunks really hold."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy.stack import sessionvault_argv
from sessionvault.settings import Settings
from tests.integration.persist_helpers import (
    Session,
    build_session,
    drained,
    fetch_all,
    produce_sessions,
    stored_payloads,
    stored_sessions,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SESSIONS = 200
CHUNKS = 20


def start_worker(env: dict[str, str], log: Path, group: str = "persist") -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*sessionvault_argv(), "worker", "persist", "--group", group, "--status-every", "0.5"],
            env={**env, "SESSIONVAULT_PERSIST_BATCH_MAX_RECORDS": "100"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def chunk_count(dsn: str) -> int:
    return int(asyncio.run(fetch_all(dsn, "SELECT count(*) AS n FROM chunks"))[0]["n"])


def test_kill_9_mid_run_then_restart_loses_nothing_and_duplicates_nothing(
    settings: Settings, sv_env: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(42)
    sessions = [
        build_session(
            settings.tenant, f"crash-{i:03d}", CHUNKS, rng, sizes=(1, 80, 900, 4000, 30000)
        )
        for i in range(SESSIONS)
    ]
    total = produce_sessions(settings, sessions)
    assert total == SESSIONS * CHUNKS
    dsn = settings.postgres_dsn.get()
    log = tmp_path / "worker.log"

    first = start_worker(sv_env, log)
    try:
        deadline = time.monotonic() + 120
        stored_at_kill = 0
        while time.monotonic() < deadline and first.poll() is None:
            stored_at_kill = chunk_count(dsn)
            if stored_at_kill >= total // 5:
                break
            time.sleep(0.05)
        first.kill()  # SIGKILL: no chance to finish the batch or commit
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert total // 5 <= stored_at_kill < total, "the kill must land in the middle of the run"

    second = start_worker(sv_env, log)
    try:
        deadline = time.monotonic() + 180
        while not drained(settings, [settings.topic_chunks]):
            assert second.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "lag not 0 after restart"
            time.sleep(1)
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, log.read_text()[-3000:]
    assert "stopped after" in log.read_text()

    assert_exactly_once(dsn, sessions, total)


def assert_exactly_once(dsn: str, sessions: list[Session], total: int) -> None:
    """Every chunk stored once, byte-exact, and every session's counters equal to what its
    stored chunks really hold (a counter applied twice by a redelivered batch shows here)."""
    assert chunk_count(dsn) == total
    stored = asyncio.run(stored_payloads(dsn))
    rows = asyncio.run(stored_sessions(dsn))
    real = {
        r["sid"]: r
        for r in asyncio.run(
            fetch_all(
                dsn,
                "SELECT sid, count(*) AS chunks, sum(raw_len) AS bytes,"
                " sum(octet_length(payload)) AS stored FROM chunks GROUP BY sid",
            )
        )
    }
    assert len(rows) == SESSIONS
    for s in sessions:
        seqs, payload, frames = stored[s.sid]
        assert seqs == list(range(CHUNKS)), s.sid
        assert payload == s.payload, s.sid
        assert frames == s.frames, s.sid
        row = rows[s.sid]
        # A counter applied twice (batch redelivered after the kill) would show here.
        assert row["chunks"] == real[s.sid]["chunks"] == CHUNKS, s.sid
        assert row["bytes"] == real[s.sid]["bytes"] == len(s.payload), s.sid
        assert row["stored_bytes"] == real[s.sid]["stored"], s.sid
        assert (row["last_seq"], row["last_hash"]) == (CHUNKS - 1, s.chunks[-1].hash)
        assert (row["status"], row["integrity"]) == ("closed", "ok"), s.sid


def joined(log: Path) -> bool:
    """The worker's status line shows a lag (it has joined the group and has partitions)."""
    return any(" lag " in line and " lag ?" not in line for line in log.read_text().splitlines())


def stored_by(log: Path) -> int:
    """Records a stopped worker says it handled (its last line: ``stopped after N records``)."""
    m = re.search(r"stopped after (\d+) records", log.read_text())
    assert m is not None, log.read_text()[-3000:]
    return int(m.group(1))


def test_members_joining_and_leaving_while_batches_are_prefetched_lose_and_duplicate_nothing(
    settings: Settings, sv_env: dict[str, str], tmp_path: Path
) -> None:
    """With prefetch on (the default) a rebalance can land inside the poll that runs while a
    batch is written: the member then commits a batch whose partitions moved, or is handed
    back the batch it is writing. A member joins mid-run, then the first one leaves; each wave
    of sessions is produced only once the group has changed, so both changes meet work."""
    rng = random.Random(7)
    sessions = [
        build_session(settings.tenant, f"churn-{i:03d}", CHUNKS, rng, sizes=(1, 80, 900, 4000))
        for i in range(SESSIONS)
    ]
    waves = [sessions[i::3] for i in range(3)]
    dsn = settings.postgres_dsn.get()
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    deadline = time.monotonic() + 180

    def wait_for(done: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
        while not done():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)

    total = produce_sessions(settings, waves[0])
    group = f"persist-{settings.tenant}"  # its own: no member of another test can hold it
    a = start_worker(sv_env, log_a, group)
    b: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: chunk_count(dsn) >= total // 4, a, log_a)
        b = start_worker(sv_env, log_b, group)
        wait_for(lambda: joined(log_b), b, log_b)
        total += produce_sessions(settings, waves[1])
        wait_for(lambda: chunk_count(dsn) >= total * 3 // 4, b, log_b)
        a.send_signal(signal.SIGTERM)
        assert a.wait(30) == 0, log_a.read_text()[-3000:]
        total += produce_sessions(settings, waves[2])
        wait_for(lambda: drained(settings, [settings.topic_chunks], group), b, log_b)
        b.send_signal(signal.SIGTERM)
        assert b.wait(30) == 0, log_b.read_text()[-3000:]
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
    assert stored_by(log_a) > 0, "the first member must have had work"
    assert stored_by(log_b) > 0, "the member that joined must have had work"
    assert_exactly_once(dsn, sessions, total)
