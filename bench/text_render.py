"""Terminal output -> text, as the segmenter renders it: MB/s of the screen model
:class:`replay.screen.TimedScreen` (what the segmenter uses), beside the line renderer
:class:`replay.text.TimedTextRenderer` it replaced (still the text export's), and of
:func:`replay.segments.render_session`, which adds segment building, on the bench
corpus, fed in recorder-like reads.

``python -m bench.text_render [--quick]``. One core; figures printed, never asserted.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from bench._common import MIB, Figure, format_table, machine_note
from bench.corpus import build_corpus, pty_reads
from replay.screen import TimedScreen
from replay.segments import SessionText, render_session
from replay.text import TimedTextRenderer
from schemas.models import Chunk, Frame, Stream
from storage.search.model import SEGMENT_MAX_CHARS


def _reads(data: bytes, seed: int) -> list[bytes]:
    return list(pty_reads(data, random.Random(seed)))


def _rate(r: TimedScreen | TimedTextRenderer, data: bytes, reads: list[bytes]) -> float:
    t0 = time.perf_counter()
    for i, piece in enumerate(reads):
        r.feed_at(piece, i)
    r.finish_lines()
    return len(data) / (time.perf_counter() - t0) / 1e6


def measure(data: bytes, reads: list[bytes]) -> tuple[float, float, float]:
    """(screen MB/s, line renderer MB/s, render_session MB/s) over ``reads``."""
    screen = _rate(TimedScreen(120, 40, max_line_chars=SEGMENT_MAX_CHARS), data, reads)
    renderer = _rate(TimedTextRenderer(max_line_chars=SEGMENT_MAX_CHARS), data, reads)
    chunks = []
    per_chunk = 64
    for seq, start in enumerate(range(0, len(reads), per_chunk)):
        part = reads[start : start + per_chunk]
        frames = tuple(Frame(start + k, Stream.OUTPUT, p) for k, p in enumerate(part))
        chunks.append(Chunk("t", "s", seq, frames, "", ""))
    ctx = SessionText(tenant="t", sid="s", started_us=0, cols=120, rows=40)
    t0 = time.perf_counter()
    render_session(ctx, chunks)
    session = len(data) / (time.perf_counter() - t0) / 1e6
    return screen, renderer, session


def run(quick: bool) -> list[Figure]:
    corpus = build_corpus(8 * MIB if quick else 48 * MIB)
    figures: list[Figure] = []
    for kind, data in sorted(corpus.parts.items()):
        scr, rend, _ = measure(data, _reads(data, 3))
        figures.append(
            Figure("text_render", f"TimedScreen {kind}", scr, "MB/s", note=f"lines: {rend:.1f}")
        )
    mixed = corpus.mixed()
    scr, rend, sess = measure(mixed, _reads(mixed, 5))
    figures.append(Figure("text_render", "TimedScreen mixed corpus", scr, "MB/s"))
    figures.append(Figure("text_render", "TimedTextRenderer mixed corpus", rend, "MB/s"))
    figures.append(Figure("text_render", "render_session (segments) mixed corpus", sess, "MB/s"))
    return figures


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.text_render", description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    print(f"# text rendering ({machine_note()})")
    print(format_table(run(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
