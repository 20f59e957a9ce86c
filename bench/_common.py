"""Shared plumbing of the benchmarks: figures, the table printer, timing and the CLI wrapper.

A benchmark module exposes ``run(quick: bool) -> list[Figure]`` and calls :func:`bench_main`
from its ``__main__`` block. Figures are printed, never asserted: a missed target is reported
as ``MISSED``, not raised.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

MIB = 1024 * 1024
#: The ``sessionvault`` command of the interpreter running the benchmarks.
SESSIONVAULT = str(Path(sys.executable).parent / "sessionvault")


@dataclass(frozen=True)
class Figure:
    """One measured figure. ``met`` is None when the figure has no target of its own."""

    bench: str
    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""

    def formatted_value(self) -> str:
        v = self.value
        if v != v:  # NaN: the figure could not be measured
            return "n/a"
        if abs(v) >= 100 or v == int(v):
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def status(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "MISSED")


def format_table(figures: Sequence[Figure]) -> str:
    """Figures as an aligned plain-text table (also pasted into docs/benchmarks.md)."""
    head = ("bench", "figure", "value", "unit", "target", "status")
    rows = [
        (f.bench, f.name, f.formatted_value(), f.unit, f.target, status(f.met)) for f in figures
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        cells = [
            c.rjust(w) if i == 2 else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    notes = [f"  [{f.bench}] {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        lines.append("")
        lines.append("notes:")
        lines.extend(notes)
    return "\n".join(lines)


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Shortest wall time of ``repeat`` calls: on a shared, noisy machine the minimum is the
    figure least disturbed by other tenants."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cache_dir() -> Path:
    """Where generated corpora and server data live between runs (``SV_BENCH_DIR``)."""
    path = Path(os.environ.get("SV_BENCH_DIR") or "/tmp/sessionvault-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_note() -> str:
    return f"{os.cpu_count()} cpus, load average {load_average()}, python {sys.version.split()[0]}"


def max_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small run (seconds, not minutes)")
    return p.parse_args(argv)


def bench_main(
    run: Callable[[bool], list[Figure]], description: str, argv: Sequence[str] | None = None
) -> int:
    """Entry point of a single benchmark module: run it and print its table."""
    args = parse_args(argv, description)
    print(f"# {description} ({'quick' if args.quick else 'full'}; {machine_note()})", flush=True)
    figures = run(args.quick)
    print(format_table(figures))
    return 0


# Linux carries a process's RSS high-water mark across fork and exec, so a child started from
# a (large) benchmark process would report the parent's RSS as its own ru_maxrss. A small
# launcher interpreter starts the measured program instead and reports the program's rusage
# from wait4 on its stderr (``SVBENCH-RUSAGE {json}``).
LAUNCHER = """
import os, subprocess, sys, json
p = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(p.pid, 0)
sys.stderr.write("\\nSVBENCH-RUSAGE " + json.dumps(
    {"code": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}) + "\\n")
"""


def rusage_from_stderr(stderr: bytes) -> dict[str, Any]:
    """The launcher's report (``code``, ``maxrss_kib``) from the measured run's stderr."""
    for line in reversed(stderr.splitlines()):
        if line.startswith(b"SVBENCH-RUSAGE "):
            result: dict[str, Any] = orjson.loads(line.split(b" ", 1)[1])
            return result
    raise RuntimeError(f"launcher reported no rusage: {stderr.decode(errors='replace')[-800:]}")
