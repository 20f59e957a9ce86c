"""replay.frames: the pure playback pipeline (delays, idle cap, speed, seek, filters)."""

from __future__ import annotations

import pytest

from replay.frames import (
    OUTPUT_STREAMS,
    adjust_speed,
    cap_idle,
    format_offset,
    only_streams,
    parse_offset,
    start_at,
    timeline,
    to_absolute,
    to_relative,
)
from schemas.models import Frame, Stream

OUT, INP, E, R = Stream.OUTPUT, Stream.INPUT, Stream.STDERR, Stream.RESIZE


def frames(*spec: tuple[int, Stream, bytes]) -> list[Frame]:
    return [Frame(ms, st, data) for ms, st, data in spec]


def test_to_relative_gives_delay_since_previous_frame_starting_from_zero() -> None:
    fs = frames((500, OUT, b"a"), (1500, OUT, b"b"), (1500, OUT, b"c"), (4000, OUT, b"d"))
    assert [d for d, _ in to_relative(fs)] == [0.5, 1.0, 0.0, 2.5]
    assert [f for _, f in to_relative(fs)] == fs


def test_to_relative_never_gives_negative_delay_for_out_of_order_offsets() -> None:
    fs = frames((1000, OUT, b"a"), (900, OUT, b"b"), (1200, OUT, b"c"))
    assert [d for d, _ in to_relative(fs)] == [1.0, 0.0, 0.2]


def test_cap_idle_limits_every_pause_and_keeps_short_ones() -> None:
    timed = [(0.1, Frame(0, OUT, b"a")), (30.0, Frame(0, OUT, b"b")), (2.0, Frame(0, OUT, b"c"))]
    assert [d for d, _ in cap_idle(timed, 2.0)] == [0.1, 2.0, 2.0]
    assert [d for d, _ in cap_idle(timed, None)] == [0.1, 30.0, 2.0]


def test_adjust_speed_divides_delays_and_rejects_non_positive_speed() -> None:
    timed = [(1.0, Frame(0, OUT, b"a")), (3.0, Frame(0, OUT, b"b"))]
    assert [d for d, _ in adjust_speed(timed, 2.0)] == [0.5, 1.5]
    with pytest.raises(ValueError, match="speed"):
        list(adjust_speed(timed, 0))


def test_to_absolute_accumulates_delays() -> None:
    timed = [(0.5, Frame(0, OUT, b"a")), (1.0, Frame(0, OUT, b"b")), (0.25, Frame(0, OUT, b"c"))]
    assert [t for t, _ in to_absolute(timed)] == [0.5, 1.5, 1.75]


def test_start_at_keeps_earlier_frames_at_offset_zero_and_shifts_later_ones() -> None:
    fs = frames(
        (100, OUT, b"prompt$ "), (5000, OUT, b"ls\r\n"), (9000, OUT, b"out"), (12000, OUT, b"x")
    )
    seeked = list(start_at(fs, 8000))
    # Nothing is dropped: the screen needs every byte written before the seek point.
    assert [f.data for f in seeked] == [f.data for f in fs]
    assert [f.offset_ms for f in seeked] == [0, 0, 1000, 4000]


def test_only_streams_filters_by_stream_preserving_order() -> None:
    fs = frames((1, OUT, b"o1"), (2, INP, b"i"), (3, E, b"e1"), (4, R, b"80x24"), (5, OUT, b"o2"))
    assert [f.data for f in only_streams(fs, OUTPUT_STREAMS)] == [b"o1", b"e1", b"o2"]
    assert [f.data for f in only_streams(fs, {INP})] == [b"i"]


def test_timeline_seeks_in_real_time_then_caps_idle_then_applies_speed() -> None:
    fs = frames(
        (1000, OUT, b"a"),
        (2000, INP, b"typed"),
        (61000, OUT, b"b"),
        (62000, E, b"c"),
        (63000, OUT, b"d"),
    )
    got = list(timeline(fs, speed=2.0, idle_limit_s=5.0, start_at_ms=1500))
    # a is before the seek point (time 0); b is 59.5 s later in real time, capped to 5 s, then
    # halved; input frames are not output.
    assert [(t, f.data) for t, f in got] == [(0.0, b"a"), (2.5, b"b"), (3.0, b"c"), (3.5, b"d")]


def test_timeline_keeps_terminal_bytes_untouched() -> None:
    raw = b"\xff\xfe\x1b[31m\xc3"
    ((_t, f),) = timeline([Frame(0, OUT, raw)])
    assert f.data is raw


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("90", 90_000),
        ("90.5", 90_500),
        ("1:30", 90_000),
        ("01:02:03", 3_723_000),
        ("0:05.25", 5250),
    ],
)
def test_parse_offset_accepts_seconds_and_clock_forms(text: str, ms: int) -> None:
    assert parse_offset(text) == ms


@pytest.mark.parametrize("text", ["", "abc", "-3", "1:75", "1:60:00", "nan", "inf"])
def test_parse_offset_rejects_malformed_or_negative_values(text: str) -> None:
    with pytest.raises(ValueError, match=r"SECONDS|non-negative|below 60"):
        parse_offset(text)


def test_format_offset_uses_hours_only_when_needed() -> None:
    assert format_offset(65_999) == "1:05"
    assert format_offset(3_723_000) == "1:02:03"
