"""End-to-end latency at 1,000 concurrent sessions: SessionRecorder write -> durable row.

One process holds 1,000 :class:`ingest.sdk.SessionRecorder` objects sharing one
:class:`ingest.sdk.Transport` (one producer), as a proxy node would. A driver writes terminal
output to random sessions (exponential gaps, mean one write per session per second: mostly
echoed keystrokes and short lines, now and then a 4-16 KiB burst). For every write it records
``(session, cumulative bytes, time)``. A poller reads ``sessions.bytes`` of the tenant every
few milliseconds (the counter is updated in the same transaction that inserts the chunk, so a
session's byte count covers a write exactly when that write is durable); a write's latency is
the start of the first poll that sees it, minus its write time. The resolution is one poll
interval, and the figure is an upper bound by at most that much.

The persist worker runs in a subprocess (one worker, as in the persist benchmark). The
producer side's own cost is reported too: threads added by 1,000 recorders, and the CPU of
this process with 1,000 idle recorders (the linger ticker) and under load.

Target: p99 < 500 ms.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import resource
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from bench._common import MIB, Figure, bench_main
from bench.corpus import build_corpus
from bench.servers import BenchStack, WorkerProcess, bench_stack
from ingest.sdk import SessionRecorder, Transport
from schemas.models import SessionInfo
from storage import pg

NAME = "latency"
TENANT = "bench-latency"


def _rss_mib() -> float:
    """Current resident set size (VmRSS) of this process in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Tracker:
    """Writes not yet seen durable, per session, and the latencies of those that were."""

    pending: dict[str, deque[tuple[int, float]]]
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)
    measure_from: float = 0.0
    polls: int = 0
    poll_s: float = 0.0

    def wrote(self, sid: str, cum: int, t: float) -> None:
        with self.lock:
            self.pending[sid].append((cum, t))

    def seen(self, durable: dict[str, int], t_poll: float) -> None:
        with self.lock:
            for sid, nbytes in durable.items():
                q = self.pending.get(sid)
                while q and q[0][0] <= nbytes:
                    _, t_write = q.popleft()
                    if t_write >= self.measure_from:
                        self.latencies.append(t_poll - t_write)

    def outstanding(self) -> int:
        with self.lock:
            return sum(len(q) for q in self.pending.values())


def _poller(dsn: str, tracker: Tracker, stop: threading.Event, interval_s: float) -> None:
    async def loop() -> None:
        conn = await pg.connect(dsn)
        try:
            while not stop.is_set():
                t = time.perf_counter()
                rows = await conn.fetch("SELECT sid, bytes FROM sessions WHERE tenant = $1", TENANT)
                tracker.seen({r["sid"]: int(r["bytes"]) for r in rows}, t)
                tracker.polls += 1
                tracker.poll_s += time.perf_counter() - t
                await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - t)))
        finally:
            await conn.close()

    asyncio.run(loop())


async def _count_sessions(dsn: str) -> int:
    conn = await pg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM sessions WHERE tenant = $1", TENANT))
    finally:
        await conn.close()


def _wait_sessions(dsn: str, n: int, worker: WorkerProcess, timeout_s: float) -> float:
    t0 = time.perf_counter()
    while asyncio.run(_count_sessions(dsn)) < n:
        worker.check()
        if time.perf_counter() - t0 > timeout_s:
            raise RuntimeError(f"fewer than {n} sessions durable after {timeout_s:.0f}s")
        time.sleep(0.05)
    return time.perf_counter() - t0


def _payloads(seed: int) -> list[bytes]:
    """Bursts to write now and then: real 4-16 KiB pieces of the corpus."""
    corpus = build_corpus(8 * MIB)
    rng = random.Random(seed)
    data = corpus.mixed()
    out = []
    for _ in range(200):
        n = rng.randrange(4096, 16385)
        pos = rng.randrange(0, len(data) - n)
        out.append(data[pos : pos + n])
    return out


def run(quick: bool, sessions: int = 1000, poll_interval_s: float = 0.005) -> list[Figure]:
    duration_s = 15.0 if quick else 60.0
    warmup_s = 3.0
    rng = random.Random(11)
    bursts = _payloads(12)
    info = SessionInfo(started_at="2026-01-05T10:00:00.000Z", cols=120, rows=40, user="bench")
    with bench_stack(TENANT) as bs:
        worker = WorkerProcess(bs, "bench-latency-worker.log")
        transport = Transport(bs.settings)
        try:
            return _measure(
                bs,
                worker,
                transport,
                info,
                rng,
                bursts,
                sessions,
                duration_s,
                warmup_s,
                poll_interval_s,
            )
        finally:
            transport.close(10)
            worker.stop()


def _measure(
    bs: BenchStack,
    worker: WorkerProcess,
    transport: Transport,
    info: SessionInfo,
    rng: random.Random,
    bursts: list[bytes],
    sessions: int,
    duration_s: float,
    warmup_s: float,
    poll_interval_s: float,
) -> list[Figure]:
    settings = bs.settings
    # The group's first join is not latency: wait for one session to be durable first.
    probe = SessionRecorder(settings, info, sid="bench-latency-probe", transport=transport)
    join_s = _wait_sessions(bs.dsn, 1, worker, 120)
    probe.close(0)

    threads0 = threading.active_count()
    rss0 = _rss_mib()
    recorders = [
        SessionRecorder(settings, info, sid=f"bench-latency-{i:04d}", transport=transport)
        for i in range(sessions)
    ]
    threads_added = threading.active_count() - threads0
    rss_added = _rss_mib() - rss0
    open_s = _wait_sessions(bs.dsn, sessions + 1, worker, 120)

    cpu0, t0 = _cpu_s(), time.perf_counter()
    time.sleep(3.0)
    idle_cpu = (_cpu_s() - cpu0) / (time.perf_counter() - t0)

    tracker = Tracker({r.sid: deque() for r in recorders})
    stop = threading.Event()
    poller = threading.Thread(
        target=_poller, args=(bs.dsn, tracker, stop, poll_interval_s), daemon=True
    )
    poller.start()
    cum = [0] * sessions
    start = time.perf_counter()
    tracker.measure_from = start + warmup_s
    due = [(start + rng.expovariate(1.0), i) for i in range(sessions)]
    heapq.heapify(due)
    writes = 0
    written = 0
    cpu_load0 = _cpu_s()
    end = start + duration_s
    while True:
        t_next, i = due[0]
        if t_next >= end:
            break
        now = time.perf_counter()
        if t_next > now:
            time.sleep(min(t_next - now, 0.002))
            continue
        heapq.heapreplace(due, (t_next + rng.expovariate(1.0), i))
        r = rng.random()
        if r < 0.7:
            data = rng.choice([b"l", b"s", b" ", b"-", b"a", b"\r\n"])
        elif r < 0.97:
            data = rng.choice(bursts)[: rng.randrange(40, 200)]
        else:
            data = rng.choice(bursts)
        t_write = time.perf_counter()
        recorders[i].output(data)
        cum[i] += len(data)
        tracker.wrote(recorders[i].sid, cum[i], t_write)
        writes += 1
        written += len(data)
    load_wall = time.perf_counter() - start
    load_cpu = (_cpu_s() - cpu_load0) / load_wall
    drain_deadline = time.perf_counter() + 20
    while tracker.outstanding() and time.perf_counter() < drain_deadline:
        worker.check()
        time.sleep(0.05)
    stop.set()
    poller.join(5)
    lost = tracker.outstanding()
    for rec in recorders:
        rec.close(0)
    lat = sorted(tracker.latencies)
    if not lat:
        raise RuntimeError("no write was seen durable")
    q = statistics.quantiles(lat, n=100, method="inclusive")
    p50, p90, p99 = q[49] * 1000, q[89] * 1000, q[98] * 1000
    poll_ms = tracker.poll_s / max(1, tracker.polls) * 1000
    return [
        Figure(NAME, "concurrent sessions (one process, one producer)", sessions, "sessions"),
        Figure(
            NAME,
            "threads added by the recorders",
            threads_added,
            "threads",
            note=f"threads in this process after {sessions} recorders: "
            f"{threading.active_count()} (one shared Transport)",
        ),
        Figure(NAME, "memory added by the recorders (RSS)", rss_added, "MiB"),
        Figure(
            NAME,
            "CPU of this process, recorders idle",
            idle_cpu * 100,
            "% of a core",
            note="the SDK's linger ticker visiting every recorder",
        ),
        Figure(
            NAME,
            "CPU of this process under load",
            load_cpu * 100,
            "% of a core",
            note="driver + SDK + poller",
        ),
        Figure(
            NAME,
            "writes measured",
            len(lat),
            "writes",
            note=f"{writes} writes ({written / MIB:.1f} MiB) in {load_wall:.0f}s, "
            f"first {warmup_s:.0f}s not counted; {lost} never seen durable",
        ),
        Figure(NAME, "latency p50, write -> durable row", p50, "ms"),
        Figure(NAME, "latency p90", p90, "ms"),
        Figure(NAME, "latency p99", p99, "ms", "< 500", p99 < 500),
        Figure(NAME, "latency max", lat[-1] * 1000, "ms"),
        Figure(
            NAME,
            "measurement resolution (poll interval + query)",
            poll_interval_s * 1000 + poll_ms,
            "ms",
            note=f"{tracker.polls} polls, {poll_ms:.1f} ms per query; "
            f"group join {join_s:.1f}s, {sessions} sessions opened in {open_s:.1f}s",
        ),
        Figure(NAME, "writes never seen durable", lost, "writes", "0", lost == 0),
    ]


def main() -> int:
    return bench_main(run, "latency: SessionRecorder write -> durable row at 1,000 sessions")


if __name__ == "__main__":
    raise SystemExit(main())
