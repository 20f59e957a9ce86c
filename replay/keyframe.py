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

__all__ = ["SCREEN_STREAMS", "Keyframe", "Seek", "Seeker", "draw", "parse_resize", "seek"]


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


class Seeker:
    """Builds a :class:`Seek` from a keyframe and the chunks after it, fed one at a time (PURE,
    bounded memory). Up to ``max_bytes`` of frames after the keyframe are kept and sent as they
    are (colours and all); past that the screen is rendered here on the screen model and only
    its drawing is sent, so a seek answer stays small whatever lies between the keyframe and
    the moment (a session stored before keyframes existed has none at all)."""

    def __init__(
        self,
        keyframe: Keyframe | None,
        at_ms: int,
        *,
        cols: int,
        rows: int,
        max_bytes: int = 512 * 1024,
    ) -> None:
        self.keyframe = keyframe
        self.at_ms = at_ms
        self.max_bytes = max_bytes
        self.cols, self.rows = keyframe.size if keyframe else (cols, rows)
        self._frames: list[Frame] = []
        self._bytes = 0
        self._screen: TimedScreen | None = None
        self._next_seq = 0 if keyframe is None else keyframe.after_seq + 1
        self._skip = 0
        self.done = False

    def _render(self) -> TimedScreen:
        screen = TimedScreen(self.cols, self.rows)
        if self.keyframe is not None:
            screen.feed_at(draw(self.keyframe), self.keyframe.at_ms)
        for f in self._frames:
            self._feed(screen, f)
        self._frames = []
        return screen

    @staticmethod
    def _feed(screen: TimedScreen, f: Frame) -> None:
        if f.stream is Stream.RESIZE:
            size = parse_resize(f.data)
            if size is not None:
                screen.resize(*size, f.offset_ms)
        else:
            screen.feed_at(f.data, f.offset_ms)

    def feed(self, seq: int, frames: Sequence[Frame]) -> bool:
        """Take the next chunk (seq order); True once the moment is reached (feed no more)."""
        for i, f in enumerate(frames):
            if f.offset_ms > self.at_ms:
                self._next_seq, self._skip, self.done = seq, i, True
                return True
            if f.stream not in SCREEN_STREAMS:
                continue
            if self._screen is not None:
                self._feed(self._screen, f)
                continue
            self._frames.append(f)
            self._bytes += len(f.data)
            if self._bytes > self.max_bytes:
                self._screen = self._render()
        self._next_seq = seq + 1
        return False

    def result(self) -> Seek:
        """What the player needs (see :class:`Seek`)."""
        if self._screen is not None:
            s = self._screen
            kf = Keyframe.of(s, self._next_seq - 1, self.at_ms)
            return Seek(
                self.at_ms,
                s.cols,
                s.rows,
                [Frame(self.at_ms, Stream.OUTPUT, draw(kf))],
                self._next_seq,
                self._skip,
            )
        out = list(self._frames)
        if self.keyframe is not None:
            out.insert(0, Frame(self.keyframe.at_ms, Stream.OUTPUT, draw(self.keyframe)))
        return Seek(self.at_ms, self.cols, self.rows, out, self._next_seq, self._skip)


def seek(
    keyframe: Keyframe | None,
    chunks: Iterable[tuple[int, Sequence[Frame]]],
    at_ms: int,
    *,
    cols: int,
    rows: int,
    max_bytes: int = 512 * 1024,
) -> Seek:
    """The screen at ``at_ms`` from ``keyframe`` (None: the session's start, at its starting
    ``cols`` x ``rows``) and the chunks after it, as ``(seq, frames)`` in seq order."""
    seeker = Seeker(keyframe, at_ms, cols=cols, rows=rows, max_bytes=max_bytes)
    for seq, frames in chunks:
        if seeker.feed(seq, frames):
            break
    return seeker.result()


def parse_resize(data: bytes) -> tuple[int, int] | None:
    """``WxH`` of a resize frame (None when malformed)."""
    try:
        w, h = data.decode("ascii").lower().split("x")
        return int(w), int(h)
    except (UnicodeDecodeError, ValueError):
        return None


#: The streams that change what a terminal shows (resizes included).
SCREEN_STREAMS = frozenset({Stream.OUTPUT, Stream.STDERR, Stream.RESIZE})
