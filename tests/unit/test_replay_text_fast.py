"""replay.text: the printable-run fast path gives exactly what the character-by-character
reference path gives (lines, per-character times, saved state), on random terminal-ish bytes
fed in random pieces (fixed seeds)."""

from __future__ import annotations

import itertools
import random

from replay.text import TextRenderer, TimedTextRenderer

# Pieces real output is made of, including the awkward ones: escape sequences that edit the
# line, strings (OSC/DCS), C1 controls as UTF-8, invalid UTF-8, split multi-byte characters.
_PIECES = [
    b"hello world ",
    b"x" * 40,
    "d\u00e9j\u00e0 vu \u4e2d\u6587 ".encode(),
    b"\r\n",
    b"\n",
    b"\r",
    b"\b",
    b"\b \b",
    b"\t",
    b"\x07",
    b"\x7f",
    b"\x00",
    b"\x1b[K",
    b"\x1b[1K",
    b"\x1b[2K",
    b"\x1b[3D",
    b"\x1b[2C",
    b"\x1b[5G",
    b"\x1b[2P",
    b"\x1b[3@",
    b"\x1b[4X",
    b"\x1b[01;32m",
    b"\x1b[?25l",
    b"\x1b]0;title\x07",
    b"\x1b]2;t\x1b\\",
    b"\x1bP1$r\x1b\\",
    b"\x1b(B",
    b"\x1b",
    b"\x1b[",
    b"\xc2\x9b1K",  # C1 CSI
    b"\xc2\x9d0;x\x07",  # C1 OSC
    b"\xc2\x85",  # C1 NEL (dropped)
    b"\xff\xfe",
    b"\xe4\xb8",  # the first two bytes of a three-byte character
    b"\xad",
]


def _terminalish(rng: random.Random, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        if rng.random() < 0.1:
            out += rng.randbytes(rng.randint(1, 6))
        else:
            out += rng.choice(_PIECES)
    return bytes(out)


def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(0, 30))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class _ReferenceText(TextRenderer):
    _fast = False


class _ReferenceTimed(TimedTextRenderer):
    _fast = False


def test_fast_text_renderer_matches_the_character_by_character_reference() -> None:
    rng = random.Random(20261121)
    for case in range(300):
        data = _terminalish(rng, rng.randint(1, 3000))
        width = rng.choice([3, 7, 16, 80, 2000])
        fast, ref = TextRenderer(max_line_chars=width), _ReferenceText(max_line_chars=width)
        for piece in _pieces(rng, data):
            assert fast.feed(piece) == ref.feed(piece), (case, data)
        assert fast.finish() == ref.finish(), (case, data)


def test_fast_timed_renderer_matches_the_reference_in_lines_times_and_state() -> None:
    rng = random.Random(7)
    for case in range(300):
        data = _terminalish(rng, rng.randint(1, 3000))
        width = rng.choice([4, 9, 80, 2000])
        fast = TimedTextRenderer(max_line_chars=width)
        ref = _ReferenceTimed(max_line_chars=width)
        for t, piece in enumerate(_pieces(rng, data)):
            assert fast.feed_at(piece, t * 10) == ref.feed_at(piece, t * 10), (case, data)
            assert fast.state() == ref.state(), (case, data)
        assert fast.finish_lines() == ref.finish_lines(), (case, data)


def test_fast_path_handles_a_line_longer_than_the_limit_in_one_run() -> None:
    fast, ref = TimedTextRenderer(max_line_chars=5), _ReferenceTimed(max_line_chars=5)
    data = b"abcdefghijklmnopq\r\n"
    assert fast.feed_at(data, 3) == ref.feed_at(data, 3)
    assert [text for text, _ in ref.feed_at(b"", 3)] == []
    assert [t for t, _ in _ReferenceTimed(max_line_chars=5).feed_at(data, 3)] == [
        "abcde",
        "fghij",
        "klmno",
        "pq",
    ]
