"""Replay of a 100 MB session from PostgreSQL: time to first byte and peak RSS.

The session is written once through the storage write path the persist worker uses
(:func:`storage.chunkstore.write_chunks`, zstd-3 payloads, 64 KiB chunks from the SDK's chunk
builder) and kept between runs. Then, each in a fresh subprocess:

* library: ``replay.export.export_lists_async(storage.reader.iter_frame_lists(...),
  fmt="raw")`` (what the CLI and the API run) to /dev/null; time to first byte from the
  export call (connection included), and the process's ``ru_maxrss``;
* CLI: ``sessionvault export SID --format raw`` with stdout piped to this process, which
  discards it; time from spawn to the first byte (interpreter start-up and imports included)
  and the child's peak RSS from ``wait4``;

Peak RSS is ``ru_maxrss`` of the measured process, taken by a small launcher interpreter
(Linux carries the RSS high-water mark across fork/exec, so children of this large benchmark
process would otherwise report its RSS).
* baseline: the same interpreter with the same modules imported and nothing replayed, so the
  RSS that replay itself adds is visible.

Targets: time to first byte < 100 ms, peak RSS < 50 MB.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import orjson

from bench._common import (
    LAUNCHER,
    MIB,
    SESSIONVAULT,
    Figure,
    bench_main,
    cache_dir,
    rusage_from_stderr,
)
from bench.compression import MB
from bench.corpus import build_corpus
from bench.persist import session_chunks
from bench.servers import BenchStack, bench_stack
from schemas.frameindex import pack_chunk
from storage import pg
from storage.chunkstore import write_chunks
from storage.codec import Compressor
from storage.persist_logic import PreparedChunk

NAME = "replay"
TENANT = "bench-replay"

_IMPORTS = """
import asyncio, json, os, resource, sys, time
import orjson
from replay.export import export_lists_async
from storage.pg import create_pool
from storage.reader import get_session, iter_frame_lists
"""

LIBRARY_CHILD = (
    _IMPORTS
    + """
class Sink:
    def __init__(self, out):
        self.out = out
        self.first = None
        self.n = 0
    def write(self, data):
        if data and self.first is None:
            self.first = time.perf_counter()
        self.n += len(data)
        return self.out.write(data)
    def flush(self):
        self.out.flush()

async def main(dsn, tenant, sid):
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    sink = Sink(open(os.devnull, "wb"))
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        session = await get_session(pool, tenant, sid)
        await export_lists_async(iter_frame_lists(pool, tenant, sid), session, "raw", sink)
    finally:
        await pool.close()
    t1 = time.perf_counter()
    print(json.dumps({"ttfb_s": sink.first - t0, "total_s": t1 - t0, "bytes": sink.n,
                      "rss0_kib": rss0,
                      "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))

asyncio.run(main(*sys.argv[1:4]))
"""
)

BASELINE_CHILD = (
    _IMPORTS
    + """
print(json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
)


async def stored_session(dsn: str, sid: str, tenant: str = TENANT) -> tuple[int, int] | None:
    """(raw bytes, chunks) of a closed session written by :func:`write_session`, or None."""
    conn = await pg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT bytes, chunks, status FROM sessions WHERE tenant = $1 AND sid = $2",
            tenant,
            sid,
        )
    finally:
        await conn.close()
    if row is None or row["status"] != "closed":
        return None
    return int(row["bytes"]), int(row["chunks"])


async def write_session(
    bs: BenchStack, sid: str, total_bytes: int, tenant: str = TENANT
) -> tuple[int, int]:
    """Store one session of ``total_bytes`` output as ``tenant``'s only one (the persist
    worker's write path); returns (raw bytes, chunks)."""
    corpus = build_corpus(48 * MIB)
    comp = Compressor(level=3)
    conn = await pg.connect(bs.dsn)
    raw = chunks = 0
    try:
        await conn.execute("DELETE FROM chunks WHERE tenant = $1", tenant)
        await conn.execute("DELETE FROM sessions WHERE tenant = $1", tenant)
        batch: list[PreparedChunk] = []

        async def flush() -> None:
            async with conn.transaction():
                result = await write_chunks(conn, batch)
            if result.rejects:
                raise RuntimeError(f"write_chunks rejected: {result.rejects[0]}")
            batch.clear()

        for i, chunk in enumerate(session_chunks(corpus, tenant, sid, 77, total_bytes)):
            packed = pack_chunk(chunk)
            codec, dict_id, stored = comp.compress(packed.payload)
            batch.append(
                PreparedChunk(i, packed, codec, dict_id, stored, packed.index, packed.payload_len)
            )
            raw += packed.payload_len
            chunks += 1
            if len(batch) >= 64:
                await flush()
        await flush()
    finally:
        await conn.close()
    return raw, chunks


def _run_json(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``argv`` under the launcher; its last stdout line (JSON) plus ``maxrss_kib``."""
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *argv], env=env, capture_output=True, check=False
    )
    usage = rusage_from_stderr(proc.stderr)
    if proc.returncode != 0 or usage["code"] != 0:
        raise RuntimeError(f"{argv[:3]} failed: {proc.stderr.decode(errors='replace')[-800:]}")
    result: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    result["maxrss_kib"] = usage["maxrss_kib"]
    return result


def _cli_export(sid: str, env: dict[str, str]) -> tuple[float, float, int, float]:
    """(time to first byte, total time, bytes, peak RSS KiB) of ``sessionvault export``."""
    exe = SESSIONVAULT
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, exe, "export", sid, "--format", "raw"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=errf,
        )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        first = os.read(fd, 1)
        ttfb = time.perf_counter() - t0
        n = len(first)
        while block := os.read(fd, 1024 * 1024):
            n += len(block)
        proc.wait()
        total = time.perf_counter() - t0
        proc.stdout.close()
        errf.seek(0)
        usage = rusage_from_stderr(errf.read())
    if usage["code"] != 0:
        raise RuntimeError(f"sessionvault export exited with {usage['code']}")
    return ttfb, total, n, float(usage["maxrss_kib"])


def _under_tty_s(command: list[str], env: dict[str, str]) -> float:
    """Seconds ``command > /dev/null`` takes with a controlling terminal (``asciinema cat``
    opens /dev/tty for its keys), through ``script``; both sides of a comparison pay the same."""
    line = " ".join(shlex.quote(a) for a in command) + " > /dev/null"
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["script", "-qec", line, "/dev/null"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{command[:2]} exited with {proc.returncode}: {proc.stdout[-300:]!r}")
    return time.perf_counter() - t0


def _versus_asciinema(
    bs: BenchStack, sid: str, env: dict[str, str], raw_bytes: int
) -> list[Figure]:
    """``sessionvault export --format raw`` against ``asciinema cat`` of the same recording
    (its asciicast v2 export, written once), best of three each, in this one run."""
    asciinema = shutil.which("asciinema")
    if asciinema is None:
        return [Figure(NAME, "export raw vs asciinema cat", float("nan"), "", note="no asciinema")]
    cast_path = cache_dir() / f"{sid}.cast"
    exe = SESSIONVAULT
    if not cast_path.exists():
        subprocess.run(
            [exe, "export", sid, "--format", "asciicast-v2", "-o", str(cast_path)],
            env=env,
            check=True,
            capture_output=True,
        )
    ours = min(_under_tty_s([exe, "export", sid, "--format", "raw"], env) for _ in range(3))
    theirs = min(_under_tty_s([asciinema, "cat", str(cast_path)], env) for _ in range(3))
    ratio = ours / theirs
    return [
        Figure(
            NAME,
            "asciinema cat of the same recording",
            theirs,
            "s",
            note=f"asciinema 2.x, asciicast v2 of {raw_bytes / MB:.0f} MB of output",
        ),
        Figure(
            NAME,
            "sessionvault export --format raw",
            ours,
            "s",
            note="best of 3 each, both under `script` (a terminal), output to /dev/null",
        ),
        Figure(NAME, "export time / asciinema cat time", ratio, "x", "<= 1", ratio <= 1),
    ]


def _cli_startup_s(env: dict[str, str]) -> float:
    """Shortest of three ``sessionvault --help`` runs: interpreter start-up plus the CLI's
    imports, the floor under the CLI's time to first byte."""
    exe = SESSIONVAULT
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([exe, "--help"], env=env, capture_output=True, check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def run(quick: bool) -> list[Figure]:
    total = 20 * MIB if quick else 100 * MIB
    sid = f"bench-replay-{total // MIB}mib-v1"
    # The broker runs too: the CLI's view audit must not wait out Kafka timeouts at exit,
    # or the CLI's figures would measure those instead of the replay.
    with bench_stack(TENANT, broker=True, clean=False) as bs:
        have = asyncio.run(stored_session(bs.dsn, sid))
        if have is None:
            t = time.perf_counter()
            raw, chunks = asyncio.run(write_session(bs, sid, total))
            print(
                f"  wrote {sid}: {raw / MB:.0f} MB in {chunks} chunks in "
                f"{time.perf_counter() - t:.1f}s",
                flush=True,
            )
        else:
            raw, chunks = have
        env = {**bs.worker_env(), "SESSIONVAULT_TENANT": TENANT}
        base = _run_json([sys.executable, "-c", BASELINE_CHILD], env)
        lib = _run_json([sys.executable, "-c", LIBRARY_CHILD, bs.dsn, TENANT, sid], env)
        cli_ttfb, cli_total, cli_bytes, cli_rss = _cli_export(sid, env)
        startup = _cli_startup_s(env)
        versus = _versus_asciinema(bs, sid, env, cli_bytes)
    lib_rss = lib["maxrss_kib"] / 1024
    lib_ttfb = lib["ttfb_s"] * 1000
    return [
        Figure(NAME, "session size (raw payload)", raw / MB, "MB", note=f"{chunks} chunks"),
        Figure(
            NAME,
            "time to first byte, library",
            lib_ttfb,
            "ms",
            "< 100",
            lib_ttfb < 100,
            note="export_lists_async(iter_frame_lists) from the call, pool connect included",
        ),
        Figure(NAME, "peak RSS, library export", lib_rss, "MiB", "< 50", lib_rss < 50),
        Figure(
            NAME,
            "export rate, library",
            lib["bytes"] / lib["total_s"] / MB,
            "MB/s",
            note=f"{lib['bytes'] / MB:.0f} MB of output streams in {lib['total_s']:.1f}s",
        ),
        Figure(
            NAME,
            "time to first byte, CLI from spawn",
            cli_ttfb * 1000,
            "ms",
            note=(
                f"includes interpreter start-up and imports: `sessionvault --help` alone takes "
                f"{startup * 1000:.0f} ms"
            ),
        ),
        Figure(
            NAME,
            "peak RSS, CLI export",
            cli_rss / 1024,
            "MiB",
            "< 50",
            cli_rss / 1024 < 50,
            note=f"{cli_bytes / MB:.0f} MB exported in {cli_total:.1f}s",
        ),
        *versus,
        Figure(
            NAME,
            "RSS baseline: interpreter + modules",
            base["maxrss_kib"] / 1024,
            "MiB",
            note="same imports as the library child, nothing replayed",
        ),
    ]


def main() -> int:
    return bench_main(run, "replay: 100 MB session from PostgreSQL, TTFB and peak RSS")


if __name__ == "__main__":
    raise SystemExit(main())
