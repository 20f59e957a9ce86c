"""The real servers for the benchmarks, through the project's own local-stack launcher.

One state directory (``<bench cache>/stack``) holds the PostgreSQL data, kept between runs (the
replay benchmark reuses its stored session). Each run gets fresh topics (the broker keeps
everything in memory, and unique names keep a leftover broker's records out of a measurement)
and its own tenant, whose rows are deleted first.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil

from bench._common import cache_dir
from deploy.stack import LocalStack, log_tail
from ingest.topics import consumer_lag
from sessionvault.settings import Secret, Settings, load_settings
from storage import pg


@dataclass
class BenchStack:
    stack: LocalStack
    settings: Settings
    home: Path

    @property
    def dsn(self) -> str:
        return self.settings.postgres_dsn.get()

    def worker_env(self) -> dict[str, str]:
        """Environment for a worker subprocess: the same servers, topics and tenant."""
        s = self.settings
        return {
            **os.environ,
            "SESSIONVAULT_HOME": str(self.home),
            "SESSIONVAULT_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "SESSIONVAULT_POSTGRES_DSN": s.postgres_dsn.get(),
            "SESSIONVAULT_TOPIC_CHUNKS": s.topic_chunks,
            "SESSIONVAULT_TOPIC_EVENTS": s.topic_events,
            "SESSIONVAULT_TOPIC_DEADLETTER": s.topic_deadletter,
            "SESSIONVAULT_TENANT": s.tenant,
        }

    def broker_cpu_s(self) -> float:
        pid = self.stack.state["pids"].get("broker")
        try:
            t = psutil.Process(pid).cpu_times()
        except (psutil.Error, TypeError, ValueError):
            return float("nan")
        return float(t.user + t.system)

    def postgres_cpu_s(self) -> float:
        """CPU seconds of the postmaster and its live backends (a delta is what a run cost)."""
        pid = self.stack.postgres_pid()
        if pid is None:
            return float("nan")
        total = 0.0
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system
        except psutil.Error:
            return float("nan")
        return total


async def _delete_tenant(dsn: str, tenant: str) -> None:
    conn = await pg.connect(dsn)
    try:
        await conn.execute("DELETE FROM chunks WHERE tenant = $1", tenant)
        await conn.execute("DELETE FROM sessions WHERE tenant = $1", tenant)
        await conn.execute("VACUUM chunks")
    finally:
        await conn.close()


@contextlib.contextmanager
def bench_stack(
    tenant: str, *, broker: bool = True, clean: bool = True, partitions: int = 4
) -> Iterator[BenchStack]:
    """Start PostgreSQL (and the broker), yield settings for a fresh run, stop them after.

    Holds an exclusive lock on the stack directory for the whole run: two benchmarks (from
    two engineers on one machine) must not share servers, since either's ``down`` would stop
    the other's, and their figures would disturb each other anyway. The second one waits.
    """
    home = cache_dir() / "stack"
    with open(cache_dir() / "stack.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("  waiting for another benchmark run to release the stack ...", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        with _stack(home, tenant, broker=broker, clean=clean, partitions=partitions) as bs:
            yield bs


@contextlib.contextmanager
def _stack(
    home: Path, tenant: str, *, broker: bool, clean: bool, partitions: int
) -> Iterator[BenchStack]:
    # Memory storage, as the figures in docs/benchmarks.md were taken; bench.broker measures
    # the durable default beside it.
    stack = LocalStack(
        home, detached=False, echo=lambda m: print(m, flush=True), broker_storage="memory"
    )
    try:
        dsn = stack.start_postgres()
        overrides: dict[str, object] = {
            "home": home,
            "tenant": tenant,
            "postgres_dsn": Secret(dsn),
            "topic_partitions": partitions,
        }
        if broker:
            run = f"{int(time.time())}-{os.getpid()}"
            overrides.update(
                kafka_bootstrap=stack.start_broker(),
                topic_chunks=f"bench.chunks.{run}",
                topic_events=f"bench.events.{run}",
                topic_deadletter=f"bench.deadletter.{run}",
            )
        settings = load_settings(env={}, **overrides)
        if broker:
            stack.ensure_topics(settings)
        if clean:
            asyncio.run(_delete_tenant(dsn, tenant))
        yield BenchStack(stack, settings, home)
    finally:
        stack.down()


# The worker, plus one JSON line per batch (from run_persist_worker's on_batch hook) so the
# benchmark can split the worker's wall time into handling batches and waiting for them.
WORKER_CODE = """
import asyncio, json, os, signal, sys, time
from ingest.persist import run_persist_worker
from ingest.runtime import settle_heap
from sessionvault.settings import load_settings

out = open(sys.argv[1], "a", buffering=1)

def on_batch(r):
    out.write(json.dumps({"t": time.perf_counter(), "records": r.records, "bytes": r.bytes,
                          "raw": r.raw_bytes, "inserted": r.chunks_inserted,
                          "seconds": r.seconds, "dead": r.dead_letters}) + "\\n")

async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    settings = load_settings()
    # As the CLI's worker shell does once start-up is over.
    settle_heap(settings.worker_heap_keep_bytes)
    await run_persist_worker(settings, stop=stop, on_batch=on_batch)

asyncio.run(main())
"""


@dataclass(frozen=True)
class BatchLog:
    """Summary of the worker's per-batch reports."""

    batches: int
    records: int
    raw_bytes: int
    handle_s: float
    dead_letters: int
    window_s: float  # from the start of the first batch to the end of the last

    @property
    def handle_share(self) -> float:
        return self.handle_s / self.window_s if self.window_s > 0 else float("nan")

    @classmethod
    def read(cls, path: Path) -> BatchLog:
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        return cls(
            len(rows),
            sum(int(r["records"]) for r in rows),
            sum(int(r["raw"]) for r in rows),
            sum(float(r["seconds"]) for r in rows),
            sum(int(r["dead"]) for r in rows),
            # perf_counter is CLOCK_MONOTONIC: the worker's stamps share one time base.
            rows[-1]["t"] - (rows[0]["t"] - rows[0]["seconds"]) if rows else 0.0,
        )


class WorkerProcess:
    """One persist worker in a subprocess (``ingest.persist.run_persist_worker``).

    With ``SV_BENCH_PROFILE=<file>`` in the environment the worker runs under cProfile and
    writes its profile there when stopped (``python -m pstats <file>``).
    """

    def __init__(
        self,
        bs: BenchStack,
        logname: str = "bench-persist-worker.log",
        env: dict[str, str] | None = None,
    ) -> None:
        self.logfile = bs.home / "logs" / logname
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.logfile, "wb")  # noqa: SIM115 (closed in stop())
        script = bs.home / "bench_persist_worker.py"
        script.write_text(WORKER_CODE)
        self.batch_log = self.logfile.with_suffix(".batches.jsonl")
        self.batch_log.unlink(missing_ok=True)
        argv = [sys.executable, str(script), str(self.batch_log)]
        profile = os.environ.get("SV_BENCH_PROFILE")
        if profile:
            argv = [sys.executable, "-m", "cProfile", "-o", profile, *argv[1:]]
        self.proc = subprocess.Popen(
            argv,
            env={**bs.worker_env(), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        self.ps = psutil.Process(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float:
        try:
            t = self.ps.cpu_times()
        except psutil.Error:
            return float("nan")
        return float(t.user + t.system)

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"persist worker exited with {self.proc.returncode}; see {self.logfile}:\n"
                f"{log_tail(self.logfile)}"
            )

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()


def group_lag(bootstrap: str, topic: str, group: str = "persist") -> int | None:
    """Committed lag of ``group`` on ``topic`` (None while the group has committed nothing)."""
    for row in consumer_lag(bootstrap, groups=[group], timeout_ms=5_000):
        if row.topic == topic:
            return row.lag
    return None
