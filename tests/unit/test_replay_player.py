"""replay.player with a fake clock and scripted keys: timing, pause, step, quit, seek."""

from __future__ import annotations

import io
import os
import pty

import pytest

from replay.player import KeyReader, drain_answers, play, tty_keys
from schemas.models import Frame, Stream

OUT, INP, E = Stream.OUTPUT, Stream.INPUT, Stream.STDERR


class FakeTime:
    """A clock that only moves when the player sleeps or waits for a key."""

    def __init__(self, keys: list[tuple[float, bytes]] | None = None) -> None:
        self.now = 100.0  # not zero: the player must measure from its own start
        self.script = [(100.0 + at, key) for at, key in keys or []]
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def keys(self, timeout: float | None) -> bytes:
        if self.script and (timeout is None or self.script[0][0] <= self.now + timeout):
            at, key = self.script.pop(0)
            self.now = max(self.now, at)
            return key
        if timeout is None:
            raise AssertionError("player waits for a key that never comes")
        self.now += timeout
        return b""


class Screen(io.BytesIO):
    """Records when (fake time, relative to start) each write happened."""

    def __init__(self, t: FakeTime) -> None:
        super().__init__()
        self.t = t
        self.writes: list[tuple[float, bytes]] = []

    def write(self, b: object) -> int:
        assert isinstance(b, bytes)
        self.writes.append((round(self.t.now - 100.0, 6), b))
        return super().write(b)


FRAMES = [
    Frame(1000, OUT, b"a"),
    Frame(1500, INP, b"typed"),
    Frame(3000, E, b"b"),
    Frame(10000, OUT, b"c"),
    Frame(10500, OUT, b"d"),
]


def test_frames_are_written_at_their_recorded_times_without_keys() -> None:
    t = FakeTime()
    screen = Screen(t)
    result = play(FRAMES, screen, clock=t.clock, sleep=t.sleep)
    assert screen.writes == [(1.0, b"a"), (3.0, b"b"), (10.0, b"c"), (10.5, b"d")]
    assert (result.frames, result.bytes, result.quit) == (4, 4, False)


def test_speed_and_idle_limit_shorten_the_pauses() -> None:
    t = FakeTime()
    screen = Screen(t)
    play(FRAMES, screen, speed=2.0, idle_limit_s=2.0, clock=t.clock, sleep=t.sleep)
    # delays 1, 2, 7 -> capped 1, 2, 2, 0.5 -> halved
    assert screen.writes == [(0.5, b"a"), (1.5, b"b"), (2.5, b"c"), (2.75, b"d")]


def test_start_at_writes_earlier_frames_at_once_then_plays_on() -> None:
    t = FakeTime()
    screen = Screen(t)
    play(FRAMES, screen, start_at_ms=5000, clock=t.clock, sleep=t.sleep)
    assert screen.writes == [(0.0, b"a"), (0.0, b"b"), (5.0, b"c"), (5.5, b"d")]


def test_space_pauses_and_resumes_shifting_the_rest_of_the_timeline() -> None:
    t = FakeTime(keys=[(2.0, b" "), (7.0, b" ")])  # paused for 5 s between a and b
    screen = Screen(t)
    play(FRAMES, screen, clock=t.clock, sleep=t.sleep, keys=t.keys)
    assert screen.writes == [(1.0, b"a"), (8.0, b"b"), (15.0, b"c"), (15.5, b"d")]


def test_dot_steps_one_frame_while_paused_and_timing_continues_from_it() -> None:
    t = FakeTime(keys=[(0.5, b" "), (4.0, b"."), (6.0, b"."), (20.0, b" ")])
    screen = Screen(t)
    play(FRAMES, screen, clock=t.clock, sleep=t.sleep, keys=t.keys)
    # a and b are stepped; on resume at 20 s, c follows b by its recorded 7 s gap.
    assert screen.writes == [(4.0, b"a"), (6.0, b"b"), (27.0, b"c"), (27.5, b"d")]


def test_q_quits_before_the_remaining_frames() -> None:
    t = FakeTime(keys=[(4.0, b"q")])
    screen = Screen(t)
    result = play(FRAMES, screen, clock=t.clock, sleep=t.sleep, keys=t.keys)
    assert screen.writes == [(1.0, b"a"), (3.0, b"b")]
    assert result.quit is True
    assert result.frames == 2


def test_q_quits_while_paused_and_other_keys_are_ignored() -> None:
    t = FakeTime(keys=[(0.2, b"x"), (0.5, b" "), (3.0, b"z"), (9.0, b"q")])
    screen = Screen(t)
    result = play(FRAMES, screen, clock=t.clock, sleep=t.sleep, keys=t.keys)
    assert screen.writes == []
    assert result.quit is True


def test_ctrl_c_in_cbreak_input_also_quits() -> None:
    t = FakeTime(keys=[(1.5, b"\x03")])
    screen = Screen(t)
    assert play(FRAMES, screen, clock=t.clock, sleep=t.sleep, keys=t.keys).quit is True
    assert screen.writes == [(1.0, b"a")]


def test_bytes_reach_the_output_unchanged() -> None:
    raw = b"\xff\x00\x1b[2J\xc3"
    t = FakeTime()
    screen = Screen(t)
    play([Frame(0, OUT, raw)], screen, clock=t.clock, sleep=t.sleep)
    assert screen.getvalue() == raw


def test_tty_keys_is_none_when_stdin_is_not_a_terminal(tmp_path: object) -> None:
    with open(os.devnull) as f, tty_keys(f) as keys:
        assert keys is None


def test_tty_keys_switches_a_terminal_to_cbreak_and_always_restores_it() -> None:
    import termios

    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "r", closefd=False) as f:
            before = termios.tcgetattr(slave)

            def crash_while_active() -> None:
                with tty_keys(f) as keys:
                    assert keys is not None
                    during = termios.tcgetattr(slave)
                    assert not during[3] & termios.ICANON
                    assert not during[3] & termios.ECHO
                    os.write(master, b" ")
                    assert keys(1.0) == b" "
                    assert keys(0.01) == b""
                    raise RuntimeError("player crashed")

            with pytest.raises(RuntimeError, match="crashed"):
                crash_while_active()
            assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def _scripted(chunks: list[bytes], t: list[float], step_s: float) -> KeyReader:
    """A key reader that returns ``chunks`` in turn (``b""`` after them, having waited its
    whole timeout), each taking ``step_s`` of the fake clock ``t``."""
    it = iter(chunks)

    def read(timeout: float | None) -> bytes:
        got = next(it, b"")
        t[0] += step_s if got else (timeout or 0.0)
        return got

    return read


def test_late_terminal_answers_are_dropped_until_the_input_is_quiet() -> None:
    t = [0.0]
    answers = [b"\x1b[2;2R", b"\x1b[3;1R", b"\x1b[>84;0;0c"]
    read = _scripted(answers, t, 0.01)
    assert drain_answers(read, quiet_s=0.1, max_s=1.0, clock=lambda: t[0]) == 22
    assert read(0.0) == b""  # nothing was left behind
    assert t[0] == pytest.approx(0.13)  # three answers, then one quiet 0.1 s


def test_draining_answers_ends_after_the_longest_wait_even_if_input_never_stops() -> None:
    t = [0.0]
    read = _scripted([b"k"] * 1000, t, 0.05)
    assert drain_answers(read, quiet_s=0.1, max_s=1.0, clock=lambda: t[0]) == 20
    assert t[0] == pytest.approx(1.0)
