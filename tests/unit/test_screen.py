"""The terminal screen model that search text comes from (replay/screen.py)."""

from __future__ import annotations

import random

import orjson

from replay.screen import TimedScreen

Line = tuple[str, list[int]]


def feed(screen: TimedScreen, writes: list[tuple[int, bytes]]) -> list[str]:
    out: list[Line] = []
    for at, data in writes:
        out += screen.feed_at(data, at)
    out += screen.finish_lines()
    return [t for t, _ in out]


def test_text_typed_into_a_full_screen_program_is_one_row_with_its_typing_times() -> None:
    s = TimedScreen(40, 6)
    out = s.feed_at(b"\x1b[?1049h\x1b[H\x1b[2J\x1b[2;1H~\x1b[3;1H~\x1b[1;1H", 1000)
    for i, ch in enumerate(b"kubectl delete ns x"):
        out += s.feed_at(bytes([ch]), 4000 + 10 * i)
    out += s.feed_at(b"\x1b[6;1H:q!\r\x1b[?1049l", 9000)
    rows = {t: times for t, times in out}
    assert rows["kubectl delete ns x"] == [4000 + 10 * i for i in range(19)]
    assert "~" in rows
    assert not any("x~" in t or "~k" in t for t in rows)  # rows never run together


def test_rows_scrolled_out_of_a_scroll_region_are_given_and_the_status_line_stays() -> None:
    s = TimedScreen(30, 5)
    writes = [(0, b"\x1b[?1049h\x1b[5;1Hstatus: clock\x1b[1;4r\x1b[4;1H")]
    writes += [(10 * i, f"\r\nline {i}".encode()) for i in range(8)]
    texts = feed(s, writes)
    assert [t for t in texts if t.startswith("line")] == [f"line {i}" for i in range(8)]
    assert texts.count("status: clock") == 1


def test_a_screen_redrawn_in_place_gives_each_screen_that_stood_once() -> None:
    s = TimedScreen(30, 3, stand_ms=1000)
    writes = [(0, b"\x1b[?1049h")]
    for n, at in enumerate((0, 3000, 6000)):  # top: a screen every 3 s
        writes.append((at, f"\x1b[Hload average: {n}\x1b[K\x1b[2;1HTasks: {n}\x1b[K".encode()))
        writes.append((at + 100, f"\x1b[HLOAD AVERAGE: {n}\x1b[K".encode()))  # a fast redraw
    texts = feed(s, writes)
    assert [t for t in texts if t.lower().startswith("load")] == [
        "LOAD AVERAGE: 0",
        "LOAD AVERAGE: 1",
        "LOAD AVERAGE: 2",
    ]
    assert "Tasks: 2" in texts


def test_shell_line_editing_gives_only_the_line_as_entered() -> None:
    s = TimedScreen(40, 5)
    writes = [(0, b"$ "), (100, b"rm -rg"), (3000, b"\b \b"), (5000, b"f /tmp/x"), (6000, b"\r\n")]
    writes += [(6100, b"\rprogress 10%"), (9000, b"\rprogress 99%\r\n")]
    assert feed(s, writes) == ["$ rm -rf /tmp/x", "progress 99%"]


def test_autowrapped_rows_are_one_line_and_bare_line_feeds_return_the_carriage() -> None:
    s = TimedScreen(10, 3)
    texts = feed(s, [(0, b"$ echo " + b"a" * 25 + b"\r\n"), (5, b"one\ntwo\n")])
    assert texts == ["$ echo " + "a" * 25, "one", "two"]


def test_a_resize_keeps_the_text_and_cuts_rows_off_the_top() -> None:
    s = TimedScreen(20, 4)
    out = s.feed_at(b"\x1b[?1049h\x1b[1;1Hfirst\x1b[4;1Hlast", 0)
    out += s.resize(30, 2, 50)
    assert [t for t, _ in out] == ["first"]
    out = s.feed_at(b"\x1b[?1049l", 60)
    assert [t for t, _ in out] == ["last"]


def test_state_round_trips_give_the_same_rows_whatever_the_cuts() -> None:
    rng = random.Random(5)
    data = (
        b"\x1b[?1049h\x1b[2;20r\x1b[H\x1b[2J"
        + b"".join(
            f"\x1b[{rng.randint(1, 24)};{rng.randint(1, 70)}H{'w' * rng.randint(1, 30)}".encode()
            + (b"\r\n" if rng.random() < 0.3 else b"")
            + (b"\x1b[K" if rng.random() < 0.2 else b"")
            for _ in range(300)
        )
        + b"\x1b[?1049l\xe2\x94\x80 \xff end"
    )
    writes = [(i * 7, data[i : i + 13]) for i in range(0, len(data), 13)]
    reference = feed(TimedScreen(80, 24), writes)
    for seed in range(5):
        cut = random.Random(seed)
        screen = TimedScreen(80, 24)
        out: list[str] = []
        for at, chunk in writes:
            out += [t for t, _ in screen.feed_at(chunk, at)]
            if cut.random() < 0.3:
                screen = TimedScreen.from_state(orjson.loads(orjson.dumps(screen.state())))
        out += [t for t, _ in screen.finish_lines()]
        assert out == reference, seed
