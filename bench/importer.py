"""Import rate for a 100 MB recording: `sessionvault import asciicast` as a library call.

The recording is an asciicast v2 file of terminal-like output (mixed text, escapes, long
lines) written once to the bench cache. Measured separately: decoding the file into a
Recording (pure), and the whole import (decode + chunking + hash chain + produce to the local
broker with every record acknowledged). Persisting the chunks is the persist worker's job,
measured in bench.persist.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

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
from bench.servers import bench_stack
from ingest.import_cmd import import_path
from ingest.importers import load_recording

WORDS = [
    "drwxr-xr-x",
    "root",
    "4096",
    "Nov",
    "21",
    "usr",
    "lib",
    "\x1b[1;34mbin\x1b[0m",
    "gcc",
    "-O2",
    "warning:",
    "unused",
    "variable",
    "\x1b[32mOK\x1b[0m",
    "é",
    "→",
    "42",
]


def make_cast(path: Path, size_bytes: int, seed: int = 3) -> None:
    rng = random.Random(seed)
    t = 0.0
    written = 0
    with path.open("wb") as fh:
        fh.write(
            orjson.dumps({"version": 2, "width": 120, "height": 40, "timestamp": 1795000000})
            + b"\n"
        )
        while written < size_bytes:
            t += rng.random() * 0.05
            lines = [
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 18)))
                for _ in range(rng.randint(1, 40))
            ]
            data = "\r\n".join(lines) + "\r\n"
            line = orjson.dumps([round(t, 6), "o", data]) + b"\n"
            fh.write(line)
            written += len(line)


def run(quick: bool) -> list[Figure]:
    size = (10 if quick else 100) * MIB
    path = cache_dir() / f"import-{size // MIB}m.cast"
    if not path.exists() or path.stat().st_size < size:
        make_cast(path, size)
    file_mib = path.stat().st_size / MIB

    t0 = time.perf_counter()
    rec = load_recording("asciicast", path, tenant="bench")  # the checking scan
    decode_s = time.perf_counter() - t0
    payload_mib = rec.size() / MIB
    frames = sum(1 for _ in rec.frames)
    del rec
    tiny = cache_dir() / "import-tiny.cast"
    make_cast(tiny, 10_000)

    with bench_stack("bench-import") as bs:
        t0 = time.perf_counter()
        result = import_path(bs.settings, "asciicast", path)
        total_s = time.perf_counter() - t0
        # Peak RSS of the CLI importing the whole file, beside the same CLI importing a tiny one
        # (the interpreter, its imports and the Kafka client: the floor any import pays).
        big_rss = _cli_import_rss(path, bs.worker_env())
        floor_rss = _cli_import_rss(tiny, bs.worker_env())
    return [
        Figure(
            "importer",
            "decode asciicast -> Recording",
            file_mib / decode_s,
            "MiB/s",
            note=f"{file_mib:.0f} MiB file, {frames:,} frames",
        ),
        Figure(
            "importer",
            "import, file -> Kafka acked",
            file_mib / total_s,
            "MiB/s",
            note=f"{result.chunks:,} chunks, {payload_mib:.0f} MiB terminal bytes",
        ),
        Figure("importer", "import wall time", total_s, "s"),
        Figure(
            "importer",
            f"sessionvault import peak RSS, {file_mib:.0f} MiB cast",
            big_rss,
            "MiB",
            target="< 50 MiB",
            met=big_rss < 50,
            note=f"same CLI on a 10 kB cast: {floor_rss:.0f} MiB",
        ),
    ]


def _cli_import_rss(path: Path, env: dict[str, str]) -> float:
    """Peak RSS (MiB) of ``sessionvault import asciicast PATH``, measured by the launcher."""
    exe = SESSIONVAULT
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, exe, "import", "asciicast", str(path)],
        env=env,
        capture_output=True,
        check=False,
    )
    usage = rusage_from_stderr(proc.stderr)
    if usage["code"] != 0:
        raise RuntimeError(f"import failed: {proc.stderr.decode(errors='replace')[-800:]}")
    return float(usage["maxrss_kib"]) / 1024


if __name__ == "__main__":
    raise SystemExit(bench_main(run, "recording import"))
