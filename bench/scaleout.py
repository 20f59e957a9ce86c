"""Scale-out, shown rather than assumed: 1 and then 2 persist workers, and segmenters, sharing 12
partitions on this machine, and a run where a member joins and another is killed mid-run.

Each phase has its own tenant and its own topics (12 partitions). The same mixed corpus is
produced first, as sessions of hash-chained 64 KiB chunks, then:

* persist, 1 worker / 2 workers: time from the first durable row to the last, so the total
  MB/s and MB/s per worker; and each worker's CPU seconds;
* segments, 1 / 2 segmenters (``sessionvault worker segments``) over what that phase stored:
  time until the segment queue is empty, in MB/s of rendered output;
* churn: 2 persist workers, a third added once a third of the rows are in, one of the first
  two killed with SIGKILL at two thirds. Then every chunk is checked: each session's sequence
  numbers are 0..n-1 with none missing (0 lost), the rows match what was produced one to one
  (0 duplicated), and the stored output bytes are what was produced.

Everything shares the 2 cores (workers, PostgreSQL, the broker), so a second worker can only
add what the machine has left: the figures show that, beside zstd-3's single-core speed on the
same payloads, measured in the same run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import time
import uuid

from bench._common import MIB, SESSIONVAULT, Figure, bench_main, load_average
from bench.compression import zstd_speed
from bench.corpus import build_corpus
from bench.persist import Produced, produce
from bench.servers import BenchStack, WorkerProcess, bench_stack
from storage import pg
from storage.datakeys import DERIVED_TABLES

NAME = "scaleout"
PARTITIONS = 12
SIZES = {True: 48 * MIB, False: 160 * MIB}  # output per phase
SESSIONS = 24  # two per partition, on average


def _phase_stack(bs: BenchStack, tag: str) -> BenchStack:
    """``bs`` with a tenant and topics of the phase's own (12 partitions)."""
    run = uuid.uuid4().hex[:6]
    settings = dataclasses.replace(
        bs.settings,
        tenant=f"bench-scale-{tag}",
        topic_chunks=f"bench.scale.chunks.{run}",
        topic_events=f"bench.scale.events.{run}",
        topic_deadletter=f"bench.scale.dl.{run}",
        topic_partitions=PARTITIONS,
    )
    bs.stack.ensure_topics(settings)
    return dataclasses.replace(bs, settings=settings)


def _env(bs: BenchStack) -> dict[str, str]:
    s = bs.settings
    return {
        "SESSIONVAULT_TENANT": s.tenant,
        "SESSIONVAULT_TOPIC_CHUNKS": s.topic_chunks,
        "SESSIONVAULT_TOPIC_EVENTS": s.topic_events,
        "SESSIONVAULT_TOPIC_DEADLETTER": s.topic_deadletter,
    }


async def _clear(dsn: str, tenant: str) -> None:
    """Forget an earlier run's phase: its chunks and sessions, and every table of text derived
    from them. (Leaving session_text behind made a rerun's segmenters find the same session
    ids already rendered: they emptied the queue in a second and rendered nothing.)"""
    conn = await pg.connect(dsn)
    try:
        await conn.execute("DELETE FROM chunks WHERE tenant = $1", tenant)
        for table in DERIVED_TABLES:
            await conn.execute(f"DELETE FROM {table} WHERE tenant = $1", tenant)
        await conn.execute("DELETE FROM sessions WHERE tenant = $1", tenant)
    finally:
        await conn.close()


async def _rows(dsn: str, tenant: str) -> tuple[int, int]:
    conn = await pg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(raw_len), 0) AS raw FROM chunks WHERE tenant = $1",
            tenant,
        )
    finally:
        await conn.close()
    return int(row["n"]), int(row["raw"])


async def _queued(dsn: str, tenant: str) -> int:
    conn = await pg.connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM segment_queue WHERE tenant = $1", tenant)
        )
    finally:
        await conn.close()


async def _audit(dsn: str, tenant: str) -> tuple[int, int, int]:
    """(sessions with a gap in their sequence numbers, duplicated (sid, seq), chunk rows)."""
    conn = await pg.connect(dsn)
    try:
        gaps = await conn.fetchval(
            "SELECT count(*) FROM (SELECT sid, count(*) AS n, max(seq) AS top FROM chunks"
            " WHERE tenant = $1 GROUP BY sid) s WHERE n <> top + 1",
            tenant,
        )
        dups = await conn.fetchval(
            "SELECT count(*) FROM (SELECT sid, seq FROM chunks WHERE tenant = $1"
            " GROUP BY sid, seq HAVING count(*) > 1) d",
            tenant,
        )
        rows = await conn.fetchval("SELECT count(*) FROM chunks WHERE tenant = $1", tenant)
    finally:
        await conn.close()
    return int(gaps), int(dups), int(rows)


def _persist(
    bs: BenchStack, produced: Produced, workers: int, *, churn: bool = False
) -> tuple[float, list[float], str]:
    """Run ``workers`` persist workers until every produced chunk is a row; (seconds from the
    first row to the last, each worker's CPU seconds, what churn did)."""
    env = _env(bs)
    procs = [WorkerProcess(bs, f"bench-scale-{i}.log", env) for i in range(workers)]
    added = killed = False
    t_first = None
    done = ""
    t0 = time.perf_counter()
    try:
        while True:
            n, _ = asyncio.run(_rows(bs.dsn, bs.settings.tenant))
            now = time.perf_counter()
            if n and t_first is None:
                t_first = now
            if churn and not added and n >= produced.chunks / 3:
                procs.append(WorkerProcess(bs, "bench-scale-added.log", env))
                added = True
                done += f"member added at {n} rows; "
            if churn and added and not killed and n >= produced.chunks * 2 / 3:
                os.kill(procs[0].proc.pid, signal.SIGKILL)
                procs[0].proc.wait(10)
                killed = True
                done += f"member killed (SIGKILL) at {n} rows"
            if n >= produced.chunks:
                t_last = now
                break
            if now - t0 > 900:
                raise RuntimeError(f"persist stuck at {n}/{produced.chunks} rows")
            for p in procs:
                if not (churn and killed and p is procs[0]):
                    p.check()
            time.sleep(0.05)
        cpu = [p.cpu_s() for p in procs if p.alive()]
    finally:
        for p in procs:
            if p.alive():
                p.stop()
    assert t_first is not None
    return t_last - t_first, cpu, done


async def _drop_other_queues(dsn: str, tenant: str) -> int:
    """Delete the segment queue rows of every other tenant; returns how many there were. The
    bench stack is shared by the benchmarks, and bench.persist leaves its sessions queued (it
    runs no segmenter): the segmenters here rendered those first, gigabytes after a few persist
    runs, which is where one member's 1.33 and 0.23 MB/s readings came from."""
    conn = await pg.connect(dsn)
    try:
        status = await conn.execute("DELETE FROM segment_queue WHERE tenant <> $1", tenant)
    finally:
        await conn.close()
    return int(status.split()[-1])


def _segments(bs: BenchStack, members: int) -> float:
    """Seconds ``members`` segmenters take to empty the phase's segment queue (and nothing
    else's: other tenants' queued work is dropped first)."""
    dropped = asyncio.run(_drop_other_queues(bs.dsn, bs.settings.tenant))
    if dropped:
        print(f"  dropped {dropped} queued sessions of other benchmarks' tenants", flush=True)
    env = {**bs.worker_env(), **_env(bs)}
    logs = bs.home / "logs"
    procs = []
    for i in range(members):
        fh = (logs / f"bench-scale-seg-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [SESSIONVAULT, "worker", "segments", "--status-every", "0"],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        )
        fh.close()
    t0 = time.perf_counter()
    try:
        while asyncio.run(_queued(bs.dsn, bs.settings.tenant)):
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a segmenter exited; see {logs}")
            if time.perf_counter() - t0 > 1800:
                raise RuntimeError("segmenters did not empty the queue in 30 min")
            time.sleep(0.1)
        return time.perf_counter() - t0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(30)


def run(quick: bool) -> list[Figure]:
    total = SIZES[quick]
    corpus = build_corpus(48 * MIB)
    figures: list[Figure] = []
    with bench_stack("bench-scaleout", partitions=PARTITIONS) as bs:
        rates: dict[int, float] = {}
        seg_rates: dict[int, float] = {}
        zstd = float("nan")
        for workers in (1, 2):
            phase = _phase_stack(bs, f"w{workers}")
            asyncio.run(_clear(phase.dsn, phase.settings.tenant))
            produced = produce(phase, corpus, SESSIONS, total // SESSIONS, phase.settings.tenant)
            if workers == 1:
                zstd, _ = zstd_speed(produced.payload_sample)
            seconds, cpu, _ = _persist(phase, produced, workers)
            rates[workers] = produced.raw_bytes / MIB / seconds
            figures.append(
                Figure(
                    NAME,
                    f"persist, {workers} worker{'s' * (workers > 1)}: total",
                    rates[workers],
                    "MB/s",
                    note=f"{rates[workers] / workers:.1f} MB/s per worker; CPU s per worker "
                    + ", ".join(f"{c:.1f}" for c in cpu)
                    + f"; {produced.raw_bytes / MIB:.0f} MB, {PARTITIONS} partitions",
                )
            )
            seg_s = _segments(phase, workers)
            seg_rates[workers] = produced.raw_bytes / MIB / seg_s
            figures.append(
                Figure(
                    NAME,
                    f"segments, {workers} segmenter{'s' * (workers > 1)}: total",
                    seg_rates[workers],
                    "MB/s",
                    note=f"{seg_rates[workers] / workers:.1f} MB/s per segmenter",
                )
            )
        figures += [
            Figure(
                NAME,
                "persist: 2 workers / 1 worker",
                rates[2] / rates[1],
                "x",
                note=f"zstd-3 on one core, same payloads: {zstd:.0f} MB/s",
            ),
            Figure(NAME, "segments: 2 / 1", seg_rates[2] / seg_rates[1], "x"),
        ]
        phase = _phase_stack(bs, "churn")
        asyncio.run(_clear(phase.dsn, phase.settings.tenant))
        produced = produce(phase, corpus, SESSIONS, total // SESSIONS, phase.settings.tenant)
        seconds, _, what = _persist(phase, produced, 2, churn=True)
        gaps, dups, rows = asyncio.run(_audit(phase.dsn, phase.settings.tenant))
        _, raw = asyncio.run(_rows(phase.dsn, phase.settings.tenant))
        lost = produced.chunks - rows + gaps
        figures += [
            Figure(
                NAME,
                "churn: total rate (join + SIGKILL mid-run)",
                produced.raw_bytes / MIB / seconds,
                "MB/s",
                note=what,
            ),
            Figure(
                NAME,
                "churn: chunks lost",
                lost,
                "",
                "0",
                lost == 0,
                note=f"{rows} rows of {produced.chunks} produced; {gaps} sessions with gaps",
            ),
            Figure(NAME, "churn: chunks duplicated", dups, "", "0", dups == 0),
            Figure(
                NAME,
                "churn: stored output bytes = produced",
                float(raw == produced.raw_bytes),
                "",
                "1",
                raw == produced.raw_bytes,
                note=f"load {load_average()}",
            ),
        ]
        for tag in ("w1", "w2", "churn"):
            asyncio.run(_clear(bs.dsn, f"bench-scale-{tag}"))
    return figures


def main() -> int:
    return bench_main(run, "scale-out: 1 and 2 persist workers and segmenters on 12 partitions")


if __name__ == "__main__":
    raise SystemExit(main())
