"""A worker that cannot make progress says so: its health file (what ``status`` reads) and its
status lines turn ``stalled`` with the failing operation, and back once it goes through.

A real persist worker process, the real broker; PostgreSQL made unreachable for that worker by
pointing it at a closed port, then restored by restarting it on the real one.
"""

from __future__ import annotations

import dataclasses
import random
import re
import signal
import socket
import subprocess
import time
import uuid
from typing import Any

import httpx

from deploy.stack import ServerStatus, StackStatus
from ingest.health import read_health
from schemas import encode_chunk
from sessionvault.cli.stack import format_status
from sessionvault.settings import Secret, Settings
from tests.integration.conftest import env_for
from tests.integration.import_support import SESSIONVAULT
from tests.integration.persist_helpers import build_session, drained, produce


def _report(settings: Settings, pid: int, deadline_s: float, want: str) -> dict[str, Any]:
    deadline = time.monotonic() + deadline_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = read_health(settings.home).get(pid, {})
        if last.get("state") == want:
            return last
        time.sleep(0.2)
    raise AssertionError(f"worker {pid} never reported {want!r}; last report {last}")


def _start(settings: Settings, metrics_port: int = 0) -> subprocess.Popen[bytes]:
    env = {**env_for(settings), "SESSIONVAULT_METRICS_PORT": str(metrics_port)}
    return subprocess.Popen(
        [SESSIONVAULT, "worker", "persist", "--status-every", "0.5"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err.decode(errors="replace")


def test_a_persist_worker_that_cannot_write_reports_stalled_and_recovers(
    settings: Settings,
) -> None:
    s = dataclasses.replace(settings, worker_stall_after_ms=1000)
    dead_pg = dataclasses.replace(
        s, postgres_dsn=Secret("postgresql://sv@127.0.0.1:9/sv?connect_timeout=1")
    )
    session = build_session(s.tenant, str(uuid.uuid4()), 3, random.Random(7))
    produce(s, s.topic_chunks, ((c.sid.encode(), encode_chunk(c)) for c in session.chunks))

    port = _free_port()
    proc = _start(dead_pg, port)
    try:
        report = _report(s, proc.pid, 60, "stalled")
        assert "failing" in report["reason"]
        assert report["metrics"]["records"] == 0
        # The orchestrator sees it too: not ready (with why), and the metrics say so.
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 503
        assert "stalled" in ready.text
        assert httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5).status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'sessionvault_worker_stalled{worker="persist"} 1.0' in metrics
        assert re.search(
            r'sessionvault_retries_total\{what="[^"]+",worker="persist"\} [1-9]', metrics
        )
        row = ServerStatus(
            "worker-persist", proc.pid, True, True, "", "", report["reason"], report["state"]
        )
        status = StackStatus([row])
        assert not status.healthy
        assert "STALLED: " in format_status(status)
    finally:
        err = _stop(proc)
    assert "STALLED" in err
    assert proc.pid not in read_health(s.home)  # a stopped worker leaves no verdict

    proc = _start(s)
    try:
        deadline = time.monotonic() + 90
        while not drained(s, [s.topic_chunks]):
            assert time.monotonic() < deadline, "the restarted worker did not catch up"
            time.sleep(0.5)
        deadline = time.monotonic() + 30
        while _report(s, proc.pid, 30, "running")["metrics"]["chunks_inserted"] != 3:
            assert time.monotonic() < deadline, read_health(s.home).get(proc.pid)
            time.sleep(0.3)
    finally:
        _stop(proc)
