"""Compression on the realistic corpus: zstd level 3 vs zlib level 6, and zstd with a trained
dictionary vs plain on small chunks.

Everything is single-core (one thread, one context), on the chunk sizes the pipeline stores:
64 KiB chunks for bulk output, 1 KiB and 4 KiB for interactive sessions flushed by the linger
timer. The dictionary is trained on one half of the corpus segments and measured on the other
half, so it never sees the bytes it is scored on.

Targets (from the design): zstd-3 stores at least as small as zlib-6 while compressing at least
4x faster. The dictionary figures feed the decision "measure plain vs trained dictionary and
keep the better": :class:`storage.codec.Compressor` uses the dictionary, in one pass, whenever
one is trained, so the figures compare the two single-pass configurations per chunk size.

MB means 10^6 bytes throughout.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence

import zstandard

from bench._common import MIB, Figure, bench_main, best_of
from bench.corpus import Corpus, build_corpus
from storage.codec import (
    Compressor,
    ZstdDict,
    train_dictionary,
)

NAME = "compression"
MB = 1_000_000
BULK_CHUNK_BYTES = 64 * 1024


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def zstd_speed(chunks: Sequence[bytes], repeat: int = 3, level: int = 3) -> tuple[float, int]:
    """(MB/s, stored bytes) of single-core zstd over ``chunks``, one call per chunk, best of
    ``repeat`` passes. Also used by the persist benchmark as its yardstick."""
    comp = Compressor(level=level)
    stored = sum(len(comp.compress(c)[2]) for c in chunks)
    secs = best_of(lambda: [comp.compress(c) for c in chunks], repeat)
    return sum(map(len, chunks)) / secs / MB, stored


def zlib_speed(chunks: Sequence[bytes], repeat: int = 3, level: int = 6) -> tuple[float, int]:
    stored = sum(len(zlib.compress(c, level)) for c in chunks)
    secs = best_of(lambda: [zlib.compress(c, level) for c in chunks], repeat)
    return sum(map(len, chunks)) / secs / MB, stored


def _time_compress(comp: Compressor, chunks: Sequence[bytes], repeat: int = 3) -> float:
    return best_of(lambda: [comp.compress(c) for c in chunks], repeat)


def dictionary_figures(corpus: Corpus, sizes: Sequence[int], quick: bool) -> list[Figure]:
    segs = corpus.segments()
    train = b"".join(d for i, (_, d) in enumerate(segs) if i % 2 == 0)
    test = b"".join(d for i, (_, d) in enumerate(segs) if i % 2 == 1)
    figures: list[Figure] = []
    for size in sizes:
        samples: list[bytes | bytearray | memoryview] = list(split(train, size))
        # zstd's trainer is quadratic-ish in sample bytes; 8 MB of samples is plenty.
        step = max(1, len(samples) * size // (2 * MIB if quick else 8 * MIB))
        samples = samples[::step]
        t0 = time.perf_counter()
        dict_data = train_dictionary(samples, 64 * 1024)
        train_s = time.perf_counter() - t0
        chunks = split(test, size)[: (2000 if quick else 20000)]
        raw = sum(map(len, chunks))
        plain = Compressor(level=3)
        with_dict = Compressor(level=3, dictionary=ZstdDict(1, dict_data))
        plain_stored = sum(len(plain.compress(c)[2]) for c in chunks)
        results = [with_dict.compress(c) for c in chunks]
        dict_stored = sum(len(r[2]) for r in results)
        dict_won = sum(1 for r in results if r[1] is not None) / len(results)
        zlib_mbs, zlib_bytes = zlib_speed(chunks, repeat=1)
        plain_speed = raw / _time_compress(plain, chunks) / MB
        dict_speed = raw / _time_compress(with_dict, chunks) / MB
        kib = f"{size // 1024} KiB"
        plain_ratio = raw / plain_stored
        dict_ratio = raw / dict_stored
        gain = dict_ratio / plain_ratio - 1
        better = "dictionary" if gain > 0 else "plain"
        figures += [
            Figure(NAME, f"zstd-3 ratio plain, {kib} chunks", plain_ratio, "x"),
            Figure(
                NAME,
                f"zstd-3 ratio with dictionary, {kib} chunks",
                dict_ratio,
                "x",
                note=(
                    f"{kib}: dictionary {gain:+.0%} ratio vs plain, chosen for {dict_won:.0%} "
                    f"of chunks; speed {dict_speed:.0f} vs {plain_speed:.0f} MB/s plain; "
                    f"trained in {train_s:.1f}s on {len(samples)} samples -> better: {better}; "
                    f"zlib-6 on the same chunks: {raw / zlib_bytes:.2f}x at {zlib_mbs:.0f} MB/s "
                    f"(dictionary {dict_speed / zlib_mbs:.1f}x faster)"
                ),
            ),
        ]
    return figures


def run(quick: bool) -> list[Figure]:
    corpus = build_corpus(8 * MIB if quick else 48 * MIB)
    data = corpus.mixed()
    chunks = split(data, BULK_CHUNK_BYTES)
    repeat = 2 if quick else 5
    zstd_mb_s, zstd_stored = zstd_speed(chunks, repeat)
    zlib_mb_s, zlib_stored = zlib_speed(chunks, repeat)
    raw = len(data)
    zstd_ratio = raw / zstd_stored
    zlib_ratio = raw / zlib_stored
    speedup = zstd_mb_s / zlib_mb_s
    figures = [
        Figure(NAME, "corpus size", raw / MB, "MB", note=f"{len(chunks)} chunks of 64 KiB"),
        Figure(NAME, "zstd-3 speed, 64 KiB chunks, 1 core", zstd_mb_s, "MB/s"),
        Figure(NAME, "zlib-6 speed, 64 KiB chunks, 1 core", zlib_mb_s, "MB/s"),
        Figure(NAME, "zstd-3 speed / zlib-6 speed", speedup, "x", ">= 4", speedup >= 4),
        Figure(
            NAME,
            "zstd-3 ratio, 64 KiB chunks",
            zstd_ratio,
            "x",
            ">= zlib-6",
            zstd_ratio >= zlib_ratio,
        ),
        Figure(NAME, "zlib-6 ratio, 64 KiB chunks", zlib_ratio, "x"),
    ]
    # Which zstd level first matches zlib-6's ratio, and at what speed (informs zstd_level).
    for level in (1, 3, 4, 5, 6):
        if level == 3:
            continue
        mb_s, stored = zstd_speed(chunks, max(1, repeat // 2), level)
        figures.append(
            Figure(
                NAME,
                f"zstd-{level} ratio, 64 KiB chunks",
                raw / stored,
                "x",
                note=f"zstd-{level}: {mb_s:.0f} MB/s, {mb_s / zlib_mb_s:.1f}x zlib-6",
            )
        )
    for kind, part in corpus.parts.items():
        kchunks = split(part, BULK_CHUNK_BYTES)
        z = sum(len(zstandard.ZstdCompressor(level=3).compress(c)) for c in kchunks)
        zl = sum(len(zlib.compress(c, 6)) for c in kchunks)
        figures.append(
            Figure(
                NAME,
                f"zstd-3 ratio, {kind}",
                len(part) / z,
                "x",
                note=f"zlib-6 ratio on {kind}: {len(part) / zl:.2f}x",
            )
        )
    figures += dictionary_figures(corpus, (1024, 4096, 16384, BULK_CHUNK_BYTES), quick)
    return figures


def main() -> int:
    return bench_main(run, "compression: zstd-3 vs zlib-6, plain vs trained dictionary")


if __name__ == "__main__":
    raise SystemExit(main())
