"""Prometheus metrics and probes of a real worker process under load (docs/operations.md):
``sessionvault worker persist`` with ``SESSIONVAULT_METRICS_PORT`` against the suite's broker
and PostgreSQL. Good records move the throughput counters and drain the lag; bad records move
the dead-letter counter by reason; the probes answer."""

from __future__ import annotations

import random
import socket
import subprocess
import time
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sessionvault.settings import Settings
from tests.integration.conftest import env_for
from tests.integration.import_support import SESSIONVAULT
from tests.integration.persist_helpers import build_session, produce, produce_sessions


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(
    port: int, check: object, timeout_s: float = 60
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(port)
        if check(samples):  # type: ignore[operator]
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never satisfied the check: {sorted(samples)[:80]}")
        time.sleep(0.3)


def test_a_workers_metrics_show_throughput_lag_and_dead_letters_moving(settings: Settings) -> None:
    port = _port()
    env = {**env_for(settings), "SESSIONVAULT_METRICS_PORT": str(port)}
    # Records first, worker after: it starts behind, so lag is there to drain.
    rng = random.Random(5)
    sessions = [build_session(settings.tenant, str(uuid.uuid4()), 12, rng) for _ in range(4)]
    good = produce_sessions(settings, sessions)
    proc = subprocess.Popen(
        [SESSIONVAULT, "worker", "persist", "--status-every", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no metrics endpoint"
            time.sleep(0.2)
        done = wait_for(
            port, lambda s: value(s, "sessionvault_records_total", worker="persist") >= good
        )
        assert value(done, "sessionvault_record_bytes_total", worker="persist") > 0
        assert value(done, "sessionvault_batch_seconds_count", worker="persist") >= 1
        assert value(done, "sessionvault_worker_stalled", worker="persist") == 0
        # The lag gauge per partition this member owns, drained to 0.
        lags = wait_for(
            port,
            lambda s: (
                any(k[0] == "sessionvault_consumer_lag" for k in s)
                and all(v == 0 for k, v in s.items() if k[0] == "sessionvault_consumer_lag")
            ),
        )
        partitions = {dict(k[1])["partition"] for k in lags if k[0] == "sessionvault_consumer_lag"}
        assert partitions, lags
        # Bad records: each one counted by its reason.
        before = value(
            done, "sessionvault_dead_letters_total", worker="persist", reason="bad_framing"
        )
        produce(settings, settings.topic_chunks, [(b"k", b"not a chunk frame")] * 3)
        after = wait_for(
            port,
            lambda s: (
                value(s, "sessionvault_dead_letters_total", worker="persist", reason="bad_framing")
                >= before + 3
            ),
        )
        assert value(after, "sessionvault_records_total", worker="persist") >= good + 3
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        assert value(after, "process_resident_memory_bytes") > 0
    finally:
        proc.terminate()
        proc.wait(30)
