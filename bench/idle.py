"""CPU an idle local stack uses: ``sessionvault up`` as a user gets it (PostgreSQL, the durable
broker and its object store, the workers), nothing recorded, CPU seconds of every process over
a window, as a share of one core. Target: under 2% in all.

``python -m bench.idle [--quick]``. CPU time is what each process consumed (from /proc), so the
figure holds on a loaded machine too; wall time only sets the window.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import psutil

from bench._common import Figure, bench_main
from deploy.stack import LocalStack
from sessionvault.settings import load_settings


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, pid in pids.items():
        total = 0.0
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system
        out[name] = total
    return out


def run(quick: bool) -> list[Figure]:
    settle_s, window_s = (8.0, 10.0) if quick else (15.0, 30.0)
    home = Path(tempfile.mkdtemp(prefix="sv-bench-idle-"))
    stack = LocalStack(home, detached=False)
    try:
        stack.up(load_settings(env={}, home=home), workers=True)
        time.sleep(settle_s)  # group joins, migrations, first polls
        pids = {n: int(p) for n, p in stack.state["pids"].items() if p}
        pg = stack.postgres_pid()
        if pg is not None:
            pids["postgres"] = pg
        before = _cpu(pids)
        time.sleep(window_s)
        after = _cpu(pids)
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)
    share = {n: (after[n] - before[n]) / window_s * 100 for n in pids}
    total = sum(share.values())
    figures = [
        Figure(
            "idle",
            "idle local stack, all processes",
            total,
            "% of a core",
            target="< 2",
            met=total < 2,
            note=f"{window_s:.0f} s window after {settle_s:.0f} s",
        )
    ]
    for name, value in sorted(share.items(), key=lambda kv: -kv[1]):
        figures.append(Figure("idle", f"  {name}", value, "% of a core"))
    return figures


if __name__ == "__main__":
    raise SystemExit(bench_main(run, "idle local stack CPU"))
