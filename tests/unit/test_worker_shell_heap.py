"""The CLI's worker shell settles the heap (``ingest.runtime.settle_heap``) before the worker
runs: the start-up heap is frozen while garbage made afterwards is still collected, and with
``heap_keep_bytes`` freed buffers stay with the process for reuse. Run in subprocesses: both are
process-wide and must not touch the test process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, os, sys, weakref
    from sessionvault.cli.common import run_async_worker

    def rss_bytes():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    class Worker:
        pass

    startup_cycle = []
    startup_cycle.append(startup_cycle)  # alive at start-up: frozen with the rest

    async def run(worker, stop):
        frozen = gc.get_freeze_count()

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made while the worker runs
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        buf = bytearray(24 * 1024 * 1024)  # a fetch-sized buffer, every page touched
        with_buf = rss_bytes()
        del buf
        kept = rss_bytes() > with_buf - 8 * 1024 * 1024
        print(f"frozen={frozen} collected={gone() is None} kept={kept}", flush=True)

    run_async_worker(
        make=Worker,
        run=run,
        banner="test worker",
        stopped=lambda w: "stopped",
        heap_keep_bytes=int(sys.argv[1]),
    )
    """
)


def _run_shell(heap_keep_bytes: int) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(heap_keep_bytes)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(kv.split("=") for kv in proc.stdout.split())


def test_worker_shell_freezes_the_startup_heap_and_still_collects_later_garbage() -> None:
    fields = _run_shell(0)
    # Every module imported so far is in the frozen generation: thousands of objects.
    assert int(fields["frozen"]) > 10_000, fields
    assert fields["collected"] == "True", fields


def test_worker_shell_keeps_freed_buffers_only_when_asked() -> None:
    assert _run_shell(256 * 1024 * 1024)["kept"] == "True"
    # glibc's default hands a freed 24 MiB buffer straight back to the OS.
    assert _run_shell(0)["kept"] == "False"
