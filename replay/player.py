"""Real-time terminal player (asciinema 2.x ``play`` semantics).

Keys: SPACE pauses and resumes, ``.`` writes the next frame while paused, ``q`` (or Ctrl-C)
quits. Time, sleeping and key input are injected collaborators (``clock``, ``sleep``, ``keys``),
so tests drive the player with a fake clock and scripted keys, without real time.

``keys(timeout)`` waits at most ``timeout`` seconds (``None``: until a key arrives) and returns
the bytes typed, or ``b""`` when the time ran out. Without ``keys`` (stdin is not a terminal)
the player just sleeps and keys have no effect.

Terminal handling (:func:`tty_keys`): only when stdin is a terminal, it is switched to cbreak
mode (no line buffering, no echo) and always restored, also on errors and Ctrl-C. cbreak rather
than asciinema's raw mode keeps the terminal's output processing (LF to CR LF): kubectl exec
without ``-t`` produces bare LFs, which raw mode would render as a staircase; output recorded
from a pty already carries CR LF, for which the extra CR is harmless.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from replay.frames import OUTPUT_STREAMS, timeline
from schemas.models import Frame

KeyReader = Callable[[float | None], bytes]

QUIT_KEYS = frozenset(b"q\x03")
PAUSE_KEY = ord(" ")
STEP_KEY = ord(".")


@dataclass(frozen=True)
class PlayResult:
    frames: int
    bytes: int
    quit: bool


def play(
    frames: Iterable[Frame],
    out: BinaryIO | None = None,
    *,
    speed: float = 1.0,
    idle_limit_s: float | None = None,
    start_at_ms: int = 0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    keys: KeyReader | None = None,
) -> PlayResult:
    """Write the output frames (stdout and stderr) to ``out`` at their recorded pace.

    ``start_at_ms`` seeks in the session's real time; frames before it are written at once so
    the screen is right (see :func:`replay.frames.start_at`).
    """
    sink = out if out is not None else sys.stdout.buffer
    written = n = 0
    base = clock()  # wall-clock time of timeline position 0
    paused = False
    paused_pos = 0.0  # timeline position while paused
    try:
        for t, frame in timeline(
            frames,
            speed=speed,
            idle_limit_s=idle_limit_s,
            start_at_ms=start_at_ms,
            streams=OUTPUT_STREAMS,
        ):
            stepped = False
            while True:
                if paused:
                    assert keys is not None
                    key = keys(None)
                    if QUIT_KEYS.intersection(key):
                        return PlayResult(n, written, True)
                    if PAUSE_KEY in key:
                        paused = False
                        base = clock() - paused_pos
                    elif STEP_KEY in key:
                        stepped = True
                        break
                    continue
                delay = t - (clock() - base)
                if delay <= 0:
                    break
                if keys is None:
                    sleep(delay)
                    continue
                key = keys(delay)
                if QUIT_KEYS.intersection(key):
                    return PlayResult(n, written, True)
                if PAUSE_KEY in key:
                    paused = True
                    paused_pos = min(t, clock() - base)
            if frame.data:
                sink.write(frame.data)
                sink.flush()
            n += 1
            written += len(frame.data)
            if stepped:
                paused_pos = t
    except KeyboardInterrupt:
        return PlayResult(n, written, True)
    return PlayResult(n, written, False)


#: Before the terminal is restored, input is read and dropped until none has come for this long
#: (at most ANSWER_MAX_S in all). A recording's terminal queries (cursor position, device
#: attributes) make the real terminal answer into its input; an answer that arrived after the
#: terminal was restored would be echoed and then read by the user's shell as if typed.
ANSWER_QUIET_S = 0.1
ANSWER_MAX_S = 1.0


def drain_answers(
    read: KeyReader,
    *,
    quiet_s: float = ANSWER_QUIET_S,
    max_s: float = ANSWER_MAX_S,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Read and drop input until none came for ``quiet_s`` or ``max_s`` has passed; returns
    the number of bytes dropped."""
    end = clock() + max_s
    dropped = 0
    while (left := end - clock()) > 0:
        got = read(min(quiet_s, left))
        if not got:
            break
        dropped += len(got)
    return dropped


@contextlib.contextmanager
def tty_keys(stdin: TextIO | None = None) -> Iterator[KeyReader | None]:
    """A key reader on the terminal behind ``stdin`` (cbreak mode, restored on exit, after the
    terminal's late answers are dropped: :func:`drain_answers`), or None when stdin is not a
    terminal."""
    stream = stdin if stdin is not None else sys.stdin
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        yield None
        return
    if not os.isatty(fd):
        yield None
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)

    def read(timeout: float | None) -> bytes:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 64) if ready else b""

    try:
        tty.setcbreak(fd)
        yield read
    finally:
        try:
            drain_answers(read)
        finally:
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
