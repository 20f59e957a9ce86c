"""Frame stream transforms: small pure generators, chained like asciinema 2.x's ``events``.

A replay is a pipeline over :class:`schemas.models.Frame` (absolute ``offset_ms`` since the
session started) and then over :data:`Timed` pairs ``(seconds, frame)``::

    frames = only_streams(frames, OUTPUT_STREAMS)
    frames = start_at(frames, 90_000)          # seek, in the session's own (real) time
    timed = to_relative(frames)                # (delay since previous frame, frame)
    timed = cap_idle(timed, 2.0)               # no pause longer than 2 s
    timed = adjust_speed(timed, 2.0)           # twice as fast
    timed = to_absolute(timed)                 # (seconds since replay start, frame)

Terminal bytes stay bytes; nothing here decodes them. Nothing here sleeps or reads a clock.

Seeking: a terminal's screen is the result of every byte written so far, so skipping the
frames before the seek point would leave the screen wrong (no prompt, wrong colours, a
full-screen program half drawn). :func:`start_at` therefore keeps them but moves them to
offset 0, so a player writes them at once and real-time playback starts at the seek point.
The seek point is in the session's real time (what search hits and ``sessions`` show), applied
before the idle limit and the speed factor.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator

from schemas.models import Frame, Stream

Timed = tuple[float, Frame]
"""``(seconds, frame)``: a delay or an absolute time, depending on the pipeline stage."""

# What a terminal showed: stdout and stderr of the session (kubectl exec keeps them apart).
OUTPUT_STREAMS: frozenset[Stream] = frozenset({Stream.OUTPUT, Stream.STDERR})


def only_streams(frames: Iterable[Frame], streams: Collection[Stream]) -> Iterator[Frame]:
    """Keep frames of the given streams, in order."""
    wanted = frozenset(streams)
    return (f for f in frames if f.stream in wanted)


def seek_frame(f: Frame, start_ms: int) -> Frame:
    """``f`` as seen from a seek to ``start_ms``: earlier frames at 0, later ones rebased."""
    if start_ms <= 0:
        return f
    return Frame(max(0, f.offset_ms - start_ms), f.stream, f.data)


def start_at(frames: Iterable[Frame], start_ms: int) -> Iterator[Frame]:
    """Seek to ``start_ms``: every frame, with offsets shifted so the seek point becomes 0.

    Frames before the seek point get offset 0 (written at once, so the screen state is right);
    later frames keep their spacing.
    """
    for f in frames:
        yield seek_frame(f, start_ms)


def to_relative(frames: Iterable[Frame]) -> Iterator[Timed]:
    """``(seconds since the previous frame, frame)``; the first delay counts from offset 0.

    A frame whose offset is below its predecessor's (should not happen) gets delay 0.
    """
    prev_ms = 0
    for f in frames:
        yield max(0, f.offset_ms - prev_ms) / 1000.0, f
        prev_ms = max(prev_ms, f.offset_ms)


def cap_idle(timed: Iterable[Timed], idle_limit_s: float | None) -> Iterator[Timed]:
    """Cap each delay at ``idle_limit_s`` (None or 0: no cap), like asciinema's ``-i``."""
    if not idle_limit_s or idle_limit_s <= 0:
        yield from timed
        return
    for delay, f in timed:
        yield min(delay, idle_limit_s), f


def adjust_speed(timed: Iterable[Timed], speed: float) -> Iterator[Timed]:
    """Divide each delay by ``speed`` (2.0 plays twice as fast)."""
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    for delay, f in timed:
        yield delay / speed, f


def to_absolute(timed: Iterable[Timed]) -> Iterator[Timed]:
    """Delays to ``(seconds since replay start, frame)``."""
    t = 0.0
    for delay, f in timed:
        t += delay
        yield t, f


def timeline(
    frames: Iterable[Frame],
    *,
    speed: float = 1.0,
    idle_limit_s: float | None = None,
    start_at_ms: int = 0,
    streams: Collection[Stream] = OUTPUT_STREAMS,
) -> Iterator[Timed]:
    """The whole playback pipeline: ``(seconds since replay start, frame)`` for a player."""
    selected = only_streams(frames, streams)
    seeked = start_at(selected, start_at_ms)
    return to_absolute(adjust_speed(cap_idle(to_relative(seeked), idle_limit_s), speed))


_CLOCK_RE = re.compile(r"^(?:(\d+):)?(\d+):(\d{1,2}(?:\.\d+)?)$")


def parse_offset(text: str) -> int:
    """``"90"``, ``"90.5"``, ``"1:30"`` or ``"1:01:30"`` to milliseconds; ValueError otherwise."""
    s = text.strip()
    m = _CLOCK_RE.match(s)
    if m:
        hours = int(m.group(1) or 0)
        minutes = int(m.group(2))
        seconds = float(m.group(3))
        if seconds >= 60 or (m.group(1) is not None and minutes >= 60):
            raise ValueError(f"{text!r}: minutes and seconds must be below 60")
        return round(((hours * 60 + minutes) * 60 + seconds) * 1000)
    try:
        value = float(s)
    except ValueError:
        raise ValueError(f"{text!r} is not SECONDS, MM:SS or HH:MM:SS") from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"{text!r} must be a non-negative number of seconds")
    return round(value * 1000)


def format_offset(ms: int) -> str:
    """Milliseconds as ``H:MM:SS`` or ``M:SS`` (for listings)."""
    total_s = ms // 1000
    h, rem = divmod(total_s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
