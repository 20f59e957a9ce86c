"""SIEM sinks: events/s through one sink worker per format, and produced-to-delivered p99.

Per format (native, OCSF, ECS, CEF over Splunk HEC; syslog = RFC 5424 with native JSON MSG,
octet-counted over plain TCP and over TLS) one :class:`siem.worker.SinkWorker` runs in this
process against the local broker; the receiver runs in a separate process on 127.0.0.1 (a
minimal HEC endpoint answering ``{"text":"Success","code":0}``, or a TCP/TLS reader that
splits octet-counted frames), so it does not share this process's GIL.

- Throughput: N events are produced first, then the worker drains them; the rate is counted
  from the end of its first batch (after the group join) to the last, so join time is out.
  Batches: 500 events / 1 MiB, linger 200 ms.
- Latency: events produced at a steady rate while the worker runs (linger 50 ms); for each,
  the time from its Kafka create timestamp (set by the producer at send) to the moment the
  sink confirmed its batch (HTTP 200, or the TCP write completed). p50 and p99.
"""

from __future__ import annotations

import multiprocessing
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import Figure, bench_main
from bench.servers import bench_stack
from deploy.stack import free_port
from ingest.consumer import Record
from ingest.kafka import make_producer
from ingest.runtime import run_blocking
from ingest.topics import ensure_topics
from schemas import encode_event
from sessionvault.settings import Settings
from siem.config import parse_siem_config
from siem.worker import BatchOutcome, SinkWorker

FORMATS_HEC = ("native", "ocsf", "ecs", "cef")


def make_event(tenant: str, i: int) -> dict[str, Any]:
    """A mix OCSF maps too: session start/command/end and kube.request (so no format skips)."""
    sid = f"00000000-0000-4000-8000-{i // 20:012d}"
    kind = (
        "session.start",
        "session.command",
        "session.command",
        "kube.request",
        "session.command",
        "session.end",
    )[i % 6]
    ev: dict[str, Any] = {
        "sv_version": 1,
        "tenant": tenant,
        "event": kind,
        "code": {"session.start": "T2000I", "session.end": "T2004I", "kube.request": "T3009I"}.get(
            kind, "T4000I"
        ),
        "uid": f"bench-{i}",
        "sid": sid,
        "ei": i % 20,
        "time": f"2026-11-21T10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z",
        "user": f"user{i % 17}@example.com",
        "login": "root",
        "server_id": f"node-{i % 9}",
        "cluster_name": "prod",
        "addr.remote": f"10.1.{i % 250}.{i % 199}:5{i % 1000:04d}",
    }
    if kind == "session.command":
        ev.update(
            program="kubectl", path="/usr/bin/kubectl", argv=["get", "pods", "-n", f"ns{i % 5}"]
        )
    if kind == "kube.request":
        ev.update(
            kubernetes_cluster="gke-prod",
            verb="GET",
            proto="kube",
            request_path="/api/v1/namespaces/prod/pods",
            response_code=200,
        )
    return ev


def produce(
    settings: Settings, topic: str, events: Sequence[dict[str, Any]], rate: float = 0.0
) -> None:
    producer = make_producer(settings)
    try:
        t0 = time.perf_counter()
        for n, ev in enumerate(events):
            if rate:
                wait = t0 + n / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            producer.send(topic, key=ev["sid"].encode(), value=encode_event(ev))
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=5)


# --- receivers (own processes) ----------------------------------------------------------------


def _serve_hec(port: int) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answer = b'{"text":"Success","code":0}'

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # http.server writes the answer's headers and body in two sends; with Nagle on, the
        # body waits for the ACK of the headers, which the client delays (40 ms on Linux):
        # that stall, not the sink, capped every HEC figure at about 20 requests/s.
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def _serve_syslog(port: int, cert: str, key: str) -> None:
    srv = socket.create_server(("127.0.0.1", port))
    ctx = None
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)

    def reader(conn: socket.socket) -> None:
        buf = b""
        if ctx is not None:
            try:
                conn = ctx.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                conn.close()  # a port probe, not a client
                return
        with conn:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    return
                buf += data
                # Consume whole octet-counted frames.
                while True:
                    sp = buf.find(b" ")
                    if sp < 0:
                        break
                    n = int(buf[:sp])
                    if len(buf) < sp + 1 + n:
                        break
                    buf = buf[sp + 1 + n :]

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=reader, args=(conn,), daemon=True).start()


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"receiver on {port} did not start")


def _certificate(folder: Path) -> tuple[str, str]:
    import subprocess

    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(cert), str(key)


# --- one measured run -------------------------------------------------------------------------


def sink_doc(label: str, port: int, cert: str, linger_ms: int) -> bytes:
    if label.startswith("syslog"):
        transport = "tls" if label.endswith("tls") else "tcp"
        body = [
            'type = "syslog"',
            'format = "native"',
            'host = "127.0.0.1"',
            f"port = {port}",
            f'transport = "{transport}"',
        ]
        if transport == "tls":
            body += ["[sink.tls]", f'ca_file = "{cert}"', 'server_name = "localhost"']
    else:
        body = [
            'type = "splunk_hec"',
            f'format = "{label}"',
            f'url = "http://127.0.0.1:{port}"',
            'token = "bench-token"',
        ]
    return "\n".join(
        [
            "[[sink]]",
            f'name = "bench-{label.replace("/", "-")}"',
            *body,
            "[sink.batch]",
            "max_events = 500",
            "max_bytes = 1048576",
            f"linger_ms = {linger_ms}",
        ]
    ).encode()


def measure(
    settings: Settings, label: str, n: int, latency_s: float, rate: float, cert: str, key: str
) -> list[Figure]:
    import dataclasses

    topic = f"{settings.topic_events}.{label.replace('/', '-')}"
    s = dataclasses.replace(settings, topic_events=topic)
    ensure_topics(s, names=[topic])
    port = free_port()
    ctx = multiprocessing.get_context("fork")
    if label.startswith("syslog"):
        proc = ctx.Process(
            target=_serve_syslog,
            args=(port, cert if label.endswith("tls") else "", key),
            daemon=True,
        )
    else:
        proc = ctx.Process(target=_serve_hec, args=(port,), daemon=True)
    proc.start()
    figures: list[Figure] = []
    try:
        _wait_port(port)
        produce(s, topic, [make_event(s.tenant, i) for i in range(n)])
        cfg = parse_siem_config(sink_doc(label, port, cert, 200)).sinks[0]
        marks: list[tuple[float, int]] = []
        worker = SinkWorker(s, cfg, state_home=Path(tempfile.mkdtemp()))

        def on_batch(o: BatchOutcome) -> None:
            marks.append((time.perf_counter(), worker.stats.records))
            if worker.stats.records >= n:
                stop.set()

        stop = threading.Event()
        t = threading.Thread(
            target=run_blocking,
            args=(lambda ev: worker.run(stop=ev, on_batch=on_batch), stop),
        )
        t.start()
        t.join(timeout=600)
        if len(marks) >= 2 and worker.stats.delivered == n:
            (t1, c1), (t2, c2) = marks[0], marks[-1]
            rate_eps = (c2 - c1) / max(t2 - t1, 1e-9)
            figures.append(
                Figure(
                    "siem",
                    f"{label}: events/s, one sink worker",
                    rate_eps,
                    "events/s",
                    ">= 10,000",
                    rate_eps >= 10_000,
                    note=f"{n} events, batches of 500",
                )
            )
        else:
            figures.append(
                Figure(
                    "siem",
                    f"{label}: events/s",
                    float("nan"),
                    "events/s",
                    note=f"delivered {worker.stats.delivered} of {n}",
                )
            )

        # Latency: a fresh group on the same topic starts at the end once caught up.
        lat: list[float] = []

        def on_delivered(records: Sequence[Record]) -> None:
            now_ms = time.time() * 1000
            lat.extend(now_ms - r.timestamp_ms for r in records if r.offset >= 0)

        cfg2 = dataclasses.replace(
            parse_siem_config(sink_doc(label, port, cert, 50)).sinks[0],
            name=f"{cfg.name}-lat",
        )
        worker2 = SinkWorker(
            s, cfg2, state_home=Path(tempfile.mkdtemp()), on_delivered=on_delivered
        )
        stop2 = threading.Event()
        t2_ = threading.Thread(target=run_blocking, args=(lambda ev: worker2.run(stop=ev), stop2))
        t2_.start()
        # Catch up on the throughput events first; measure only the paced ones.
        deadline = time.monotonic() + 300
        while worker2.stats.records < n and time.monotonic() < deadline:
            time.sleep(0.1)
        lat.clear()
        m = int(latency_s * rate)
        produce(s, topic, [make_event(s.tenant, n + i) for i in range(m)], rate=rate)
        deadline = time.monotonic() + 60
        while worker2.stats.records < n + m and time.monotonic() < deadline:
            time.sleep(0.05)
        stop2.set()
        t2_.join(timeout=60)
        if lat:
            lat.sort()
            p50 = lat[len(lat) // 2]
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            note = f"{len(lat)} events at {rate:.0f}/s, linger 50 ms"
            figures.append(
                Figure("siem", f"{label}: produced->delivered p50", p50, "ms", note=note)
            )
            figures.append(Figure("siem", f"{label}: produced->delivered p99", p99, "ms"))
    finally:
        proc.terminate()
        proc.join(timeout=5)
    return figures


def run(quick: bool) -> list[Figure]:
    n = 3_000 if quick else 20_000
    latency_s = 3.0 if quick else 10.0
    rate = 200.0 if quick else 500.0
    labels = [*FORMATS_HEC, "syslog/tcp", "syslog/tls"]
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="sv-bench-siem-") as tmp:
        cert, key = _certificate(Path(tmp))
        with bench_stack("bench-siem", clean=False, partitions=4) as bs:
            for label in labels:
                print(f"  {label} ...", flush=True)
                figures += measure(bs.settings, label, n, latency_s, rate, cert, key)
    return figures


if __name__ == "__main__":
    raise SystemExit(bench_main(run, "SIEM sinks: events/s per format, produced->delivered p99"))
