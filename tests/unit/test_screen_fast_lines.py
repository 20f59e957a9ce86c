"""The screen model's fast path for whole lines of text (replay.screen.TimedScreen's
``_simple_lines``) changes nothing but speed: fed the same writes, a screen with it and one
that takes every character through the parser give the same rows, at the same times, and end
in the same state (so a session continued from a saved state renders the same either way)."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from replay.screen import TimedScreen
from tests.examples import examples

WORDS = [
    " " * 9,
    "ls",
    "-la",
    "drwxr-xr-x",
    "root",
    "kubectl",
    "delete",
    "ns",
    "prod",
    "ü",
    "日本",
    "\ufffd",
]
SGR = [
    "\x1b[K",
    "\x1b[0K",
    "\x1b[m\x1b[K",
    "\x1b[0m",
    "\x1b[01;34m",
    "\x1b[38;5;208m",
    "\x1b[m",
    "\x1b[1;31;40m",
]
OTHER = [
    "\r", "\b", "\t", "\x1b[H", "\x1b[2J", "\x1b[K", "\x1b[1K", "\x1b[3;1H", "\x1b[A", "\x1b[2B",
    "\x1b[?1049h", "\x1b[?1049l", "\x1b[2;4r", "\x1b[r", "\x1bM", "\x1b7", "\x1b8", "\x1b[P",
    "\x1b[2@", "\x1b[L", "\x1b[M", "\x1b[S", "\x1b]0;title\x07", "\x1b[?25l", "\x1bc", "\x9b1m",
    "\x1b[", "\x1b", "\x07", "\x7f",
]  # fmt: skip


def _line(draw: st.DrawFn, cols: int) -> str:
    parts = draw(st.lists(st.sampled_from([*WORDS, " ", "  ", *SGR]), max_size=12))
    text = "".join(parts)
    if draw(st.booleans()):
        text = text[: draw(st.integers(min_value=0, max_value=cols + 2))]
    return text + draw(st.sampled_from(["\r\n", "\n", "\r\r\n", " \r\n"]))


@st.composite
def writes(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, bytes]]]:
    cols = draw(st.integers(min_value=4, max_value=30))
    rows = draw(st.integers(min_value=1, max_value=6))
    out: list[tuple[int, bytes]] = []
    at = 0
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        pieces = []
        for _ in range(draw(st.integers(min_value=1, max_value=10))):
            kind = draw(st.integers(min_value=0, max_value=9))
            if kind < 6:
                pieces.append(_line(draw, cols))
            elif kind < 8:
                pieces.append(draw(st.sampled_from(OTHER)))
            else:
                pieces.append(draw(st.sampled_from(WORDS)))
        data = "".join(pieces).encode()
        if draw(st.booleans()):  # cut anywhere, even inside a UTF-8 sequence or an escape
            cut = draw(st.integers(min_value=0, max_value=len(data)))
            out.append((at, data[:cut]))
            data = data[cut:]
        at += draw(st.integers(min_value=0, max_value=2000))
        out.append((at, data))
    return cols, rows, out


@settings(max_examples=examples(1500), deadline=None)
@given(case=writes(), stand_ms=st.sampled_from([0, 1000]))
# Spaces written on the bottom row, then a line over them: the cells after it keep their times.
@example(case=(8, 3, [(0, b"\r\n\r\n\r\n"), (5, b"      \r"), (9, b"ab\r\n")]), stand_ms=0)
# A line three rows long on a three-row screen, and one that ends exactly at the edge.
@example(case=(4, 3, [(0, b"\n\n\n"), (7, b"abcdefghij\r\nabcd\r\n")]), stand_ms=0)
def test_fast_lines_give_the_same_rows_and_state_as_the_character_path(
    case: tuple[int, int, list[tuple[int, bytes]]], stand_ms: int
) -> None:
    cols, rows, feeds = case
    fast = TimedScreen(cols, rows, stand_ms=stand_ms, max_line_chars=7)
    slow = TimedScreen(cols, rows, stand_ms=stand_ms, max_line_chars=7, fast_lines=False)
    for at, data in feeds:
        assert fast.feed_at(data, at) == slow.feed_at(data, at), (at, data)
        assert fast.state() == slow.state(), (at, data)
    assert fast.finish_lines() == slow.finish_lines()


def test_bulk_output_takes_the_fast_path() -> None:
    """Not a timing: the fast path must actually be the one taken for plain bulk output (the
    screen's rows are then built only once per feed, not per character)."""
    screen = TimedScreen(80, 4)
    screen.feed_at(b"\x1b[4;1H", 0)  # the cursor on the bottom row, as after a screenful
    calls = 0
    original = screen._put_run

    def counting(run: str) -> None:
        nonlocal calls
        calls += 1
        original(run)

    screen._put_run = counting  # type: ignore[method-assign]
    lines = b"".join(b"\x1b[01;34mdir%d\x1b[0m file\r\n" % i for i in range(100))
    out = screen.feed_at(lines, 5)
    assert [t for t, _ in out] == [f"dir{i} file" for i in range(100)]
    assert calls == 0
