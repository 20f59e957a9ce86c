"""Run every benchmark and print one table: ``python -m bench [--quick] [--only NAME ...]``.

Each benchmark also runs alone (``python -m bench.persist``). Figures are printed, never
asserted; a benchmark that cannot run (a component missing, a server that will not start)
prints its error and the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback
from collections.abc import Callable, Sequence

from bench._common import Figure, format_table, machine_note

BENCHES = (
    "compression",
    "broker",
    "idle",
    "persist",
    "evidence",
    "latency",
    "replay",
    "text_render",
    "webhook",
    "importer",
    "search_os",
    "search_pg",
    "siem",
    "detect",
    "console",
    "federation",
    "scaleout",
)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small run (about a minute in all)")
    p.add_argument(
        "--only",
        action="append",
        choices=BENCHES,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHES)}",
    )
    args = p.parse_args(argv)
    names = args.only or list(BENCHES)
    print(
        f"# sessionvault benchmarks ({'quick' if args.quick else 'full'}; {machine_note()})",
        flush=True,
    )
    figures: list[Figure] = []
    failed: list[str] = []
    for name in names:
        t0 = time.perf_counter()
        print(f"## {name} ...", flush=True)
        try:
            module = importlib.import_module(f"bench.{name}")
            run: Callable[[bool], list[Figure]] = module.run
            got = run(args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            figures.append(Figure(name, "did not run", float("nan"), "", note=str(exc)[:300]))
            continue
        figures.extend(got)
        print(f"## {name} done in {time.perf_counter() - t0:.1f}s", flush=True)
    print()
    print(f"# results ({machine_note()})")
    print(format_table(figures))
    if failed:
        print("\nfailed:\n  " + "\n  ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
