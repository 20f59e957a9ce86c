"""Keyframes: the screen as it stood at a point of a session, and the bytes that draw it again
(PURE). They make seeking instant: the web console's player draws the latest keyframe at or
before the seek point and then writes only the frames after it, instead of the whole session
from its start (what ``play --start-at`` and Teleport's player do).

Invariant (tested against :class:`replay.screen.TimedScreen` and against tmux): a terminal that
is reset, set to the keyframe's size and given :func:`draw` and then the session's output
frames after the keyframe, shows the same text, cursor position and buffer (main or
alternate) as one given every output frame from the session's start.

Limits: text only. Colours and other attributes of what stood on the screen at the keyframe
are not kept (a full-screen program redraws them; a shell's old lines show plain); every
character is one cell (as in the screen model).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from replay.screen import TimedScreen
from schemas.models import Frame, Stream

__all__ = ["SCREEN_STREAMS", "Keyframe", "Seek", "draw", "seek"]


@dataclass(frozen=True, slots=True)
class Keyframe:
    """The screen after every frame of a session's chunks up to ``after_seq`` (stored by the
    segmenter in ``session_keyframes``); ``at_ms`` is the offset of the last of those frames."""

    after_seq: int
    at_ms: int
    screen: dict[str, Any]

    @classmethod
    def of(cls, screen: TimedScreen, after_seq: int, at_ms: int) -> Keyframe:
        return cls(after_seq, at_ms, screen.snapshot())

    @property
    def size(self) -> tuple[int, int]:
        cols, rows = self.screen["size"]
        return int(cols), int(rows)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.screen)

    @classmethod
    def from_bytes(cls, after_seq: int, at_ms: int, data: bytes) -> Keyframe:
        return cls(after_seq, at_ms, orjson.loads(data))


def _cup(x: int, y: int) -> bytes:
    return b"\x1b[%d;%dH" % (y + 1, x + 1)


def _rows(rows: list[str]) -> bytes:
    out = [b"\x1b[H\x1b[2J"]
    for y, text in enumerate(rows):
        text = text.rstrip(" ")
        if text:
            out.append(_cup(0, y) + text.encode())
    return b"".join(out)


def draw(kf: Keyframe) -> bytes:
    """Bytes that draw ``kf`` on a reset terminal of its size (see the module invariant):
    the main screen; the saved cursor (in the alternate screen's switch when it is shown, by
    DECSC otherwise); the alternate screen; the scroll region; the cursor, with autowrap
    pending when it was; then whatever the snapshot cut in the middle."""
    s = kf.screen
    cols, _rows_n = kf.size
    sx, sy = (int(v) for v in s["saved"])
    x, y, pending_wrap = int(s["cur"][0]), int(s["cur"][1]), bool(s["cur"][2])
    top, bottom = (int(v) for v in s["region"])
    out = [b"\x1b[0m", _rows(list(s["main"]))]
    out.append(_cup(sx, sy))
    if s["alt_on"]:
        out.append(b"\x1b[?1049h")  # saves the cursor as DECSC does, shows a blank screen
        out.append(_rows(list(s["alt"])))
    else:
        out.append(b"\x1b7")
    out.append(b"\x1b[%d;%dr" % (top + 1, bottom + 1))
    buf = s["alt"] if s["alt_on"] else s["main"]
    if pending_wrap and x == cols - 1:
        # Only writing the last column leaves autowrap pending: write that cell again.
        row = buf[y] if y < len(buf) else ""
        ch = row[x] if x < len(row) else " "
        out.append(_cup(x, y) + ch.encode())
    else:
        out.append(_cup(x, y))
    out.append(bytes.fromhex(str(s.get("pending", ""))))
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class Seek:
    """What a player needs to show the screen at ``at_ms``: reset the terminal to
    ``cols`` x ``rows``, write ``frames`` at once (the keyframe's drawing first, then every
    output and resize frame after it up to ``at_ms``), and go on playing from chunk
    ``next_seq``, skipping its first ``skip`` frames (they were in ``frames``)."""

    at_ms: int
    cols: int
    rows: int
    frames: list[Frame]
    next_seq: int
    skip: int


def seek(
    keyframe: Keyframe | None,
    chunks: Iterable[tuple[int, Sequence[Frame]]],
    at_ms: int,
    *,
    cols: int,
    rows: int,
) -> Seek:
    """The screen at ``at_ms`` from ``keyframe`` (None: the session's start, at its starting
    ``cols`` x ``rows``) and the chunks after it, as ``(seq, frames)`` in seq order."""
    out: list[Frame] = []
    next_seq = 0
    if keyframe is not None:
        cols, rows = keyframe.size
        out.append(Frame(keyframe.at_ms, Stream.OUTPUT, draw(keyframe)))
        next_seq = keyframe.after_seq + 1
    for seq, frames in chunks:
        for i, f in enumerate(frames):
            if f.offset_ms > at_ms:
                return Seek(at_ms, cols, rows, out, seq, i)
            if f.stream in SCREEN_STREAMS:
                out.append(f)
        next_seq = seq + 1
    return Seek(at_ms, cols, rows, out, next_seq, 0)


#: The streams that change what a terminal shows (resizes included).
SCREEN_STREAMS = frozenset({Stream.OUTPUT, Stream.STDERR, Stream.RESIZE})
