"""The CLI's worker shell settles the start-up heap (``ingest.runtime.settle_heap``) before the
worker runs, and garbage made afterwards is still collected. Run in a subprocess: freezing is
process-wide and must not touch the test process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, weakref
    from sessionvault.cli.common import run_async_worker

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
        print(f"frozen={frozen} collected={gone() is None}", flush=True)

    run_async_worker(make=Worker, run=run, banner="test worker", stopped=lambda w: "stopped")
    """
)


def test_worker_shell_freezes_the_startup_heap_and_still_collects_later_garbage() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    fields = dict(kv.split("=") for kv in proc.stdout.split())
    # Every module imported so far is in the frozen generation: thousands of objects.
    assert int(fields["frozen"]) > 10_000, proc.stdout
    assert fields["collected"] == "True", proc.stdout
