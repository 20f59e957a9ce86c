"""Prometheus metrics of a worker or API process, and the small HTTP endpoint that serves them
with the worker's probes (docs/operations.md).

One registry per process (each worker runs in its own process in production): counters are
incremented where the work is counted once for every stage (:mod:`ingest.runtime`), gauges
that are cheap to read are read at scrape time from the worker itself (:class:`WorkerCollector`).
Labels never carry a tenant, a session id or any recorded value: metrics leave the cluster.

Endpoints of :func:`serve_metrics` (``metrics_port``; 0: none):

- ``/metrics``: the registry in the Prometheus text format;
- ``/livez``: 200 while the process serves (the kubelet restarts a process that does not);
- ``/readyz``: 200 while the worker progresses, 503 with why when it is stalled
  (:class:`ingest.health.Health`), so a stalled worker is visible to the orchestrator too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

__all__ = [
    "BATCH_SECONDS",
    "BYTES",
    "DEAD_LETTERS",
    "LAG",
    "RECORDS",
    "REGISTRY",
    "RETRIES",
    "SEGMENT_BACKLOG",
    "WATERMARK_AGE",
    "MetricsServer",
    "SpoolCollector",
    "WorkerCollector",
    "serve_metrics",
    "watch_spool",
]

REGISTRY = CollectorRegistry(auto_describe=True)

RECORDS = Counter(
    "sessionvault_records",
    "Records a stage handled (stored, indexed, forwarded or dead-lettered), committed after.",
    ["worker"],
    registry=REGISTRY,
)
BYTES = Counter(
    "sessionvault_record_bytes",
    "Bytes of the Kafka records a stage handled (values as received).",
    ["worker"],
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "sessionvault_batch_seconds",
    "Time to handle one polled batch: the durable write, dead letters and the commit.",
    ["worker"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "sessionvault_dead_letters",
    "Records sent to the dead-letter topic, by reason code (docs/architecture.md).",
    ["worker", "reason"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "sessionvault_retries",
    "Failed attempts the worker retried with backoff, by what failed.",
    ["worker", "what"],
    registry=REGISTRY,
)
LAG = Gauge(
    "sessionvault_consumer_lag",
    "Records behind the high watermark, per partition this member owns.",
    ["worker", "topic", "partition"],
    registry=REGISTRY,
)
SEGMENT_BACKLOG = Gauge(
    "sessionvault_segment_backlog_sessions",
    "Sessions queued for the segmenter (stored, not yet searchable as text).",
    registry=REGISTRY,
)
WATERMARK_AGE = Gauge(
    "sessionvault_search_watermark_age_seconds",
    "How far OpenSearch's complete-until watermark trails now (the oldest tenant's).",
    registry=REGISTRY,
)
ProcessCollector(registry=REGISTRY)  # CPU seconds, resident memory, open files


class WorkerCollector(Collector):
    """Gauges read from a running worker at each scrape: whether it is stalled, how long
    since it last progressed, its cumulative retries."""

    def __init__(self, name: str, worker: Any) -> None:
        self.name = name
        self.worker = worker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        health = getattr(self.worker, "health", None)
        if health is None:
            return
        verdict = health.verdict()
        stalled = GaugeMetricFamily(
            "sessionvault_worker_stalled",
            "1 while the worker cannot progress (status says STALLED and why).",
            labels=["worker"],
        )
        stalled.add_metric([self.name], 1.0 if verdict.state == "stalled" else 0.0)
        yield stalled
        since = GaugeMetricFamily(
            "sessionvault_worker_since_progress_seconds",
            "Seconds since the worker last completed a step (a poll, a batch, a round).",
            labels=["worker"],
        )
        since.add_metric([self.name], float(verdict.since_progress_s))
        yield since


Probe = Callable[[], tuple[bool, str]]


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = generate_latest(REGISTRY)
            self._send(200, body, CONTENT_TYPE_LATEST)
        elif path == "/livez":
            self._send(200, b"ok\n", "text/plain")
        elif path == "/readyz":
            ready, why = self.server.ready()
            self._send(200 if ready else 503, (why or "ok").encode() + b"\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes and probes every few seconds are not news


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], ready: Probe) -> None:
        super().__init__(address, _Handler)
        self.ready = ready
        self.thread = threading.Thread(target=self.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class SpoolCollector(Collector):
    """``sessionvault_spool_bytes``: what producers hold on disk for Kafka, over the spool
    roots this process watches (one in production; tests run several installations)."""

    def __init__(self) -> None:
        self.roots: set[Path] = set()
        self.lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from ingest.spool import spool_bytes

        with self.lock:
            roots = list(self.roots)
        yield GaugeMetricFamily(
            "sessionvault_spool_bytes",
            "Bytes producers on this host hold in their disk spool (Kafka unreachable).",
            value=float(sum(spool_bytes(root) for root in roots)),
        )


SPOOL = SpoolCollector()
REGISTRY.register(SPOOL)


def watch_spool(root: Path) -> None:
    """Count ``root``'s spool in ``sessionvault_spool_bytes``."""
    with SPOOL.lock:
        SPOOL.roots.add(root)


def serve_metrics(
    port: int,
    name: str,
    worker: Any,
    *,
    spool_dir: Path | None = None,
    host: str = "0.0.0.0",  # noqa: S104 (a pod's probes and scrapes come from outside it)
) -> MetricsServer:
    """Serve ``/metrics``, ``/livez`` and ``/readyz`` of ``worker`` on ``port`` (0: any free
    port, see :attr:`MetricsServer.port`) until :meth:`MetricsServer.close`."""
    collector = WorkerCollector(name, worker)
    REGISTRY.register(collector)
    if spool_dir is not None:
        watch_spool(spool_dir)

    def ready() -> tuple[bool, str]:
        health = getattr(worker, "health", None)
        if health is None:
            return True, ""
        verdict = health.verdict()
        if verdict.state == "stalled":
            return False, f"stalled {verdict.blocked_s:.0f}s: {verdict.reason}"
        return True, ""

    server = MetricsServer((host, port), ready)
    original_close = server.close

    def close() -> None:
        original_close()
        REGISTRY.unregister(collector)

    server.close = close  # type: ignore[method-assign]
    server.thread.start()
    log.info("metrics and probes on %s:%d", host, server.port)
    return server


def observe_batch(worker: str, seconds: float, records: int, nbytes: int) -> None:
    """One handled batch (called once per batch by the runtime)."""
    BATCH_SECONDS.labels(worker).observe(seconds)
    RECORDS.labels(worker).inc(records)
    BYTES.labels(worker).inc(nbytes)
