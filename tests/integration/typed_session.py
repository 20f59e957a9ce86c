"""A command typed inside a recorded session, recorded through the REAL producer SDK.

Reusable by every search backend's tests: :func:`record_typed_session` records, through
:class:`ingest.sdk.SessionRecorder` (its own transport, the real broker of ``settings``), a
session in which a user at a coloured prompt types ``rm -rg``, erases the ``g`` with
backspace, types ``f /tmp/x``, presses Enter and gets output. Keystrokes are recorded as the
terminal saw them: each key on the input stream, then its echo by the shell's line editor on
the output stream, one frame per character, seconds apart.

Time comes from an injected clock that the function advances itself (no sleeping), so the
offsets are seconds apart while the recording takes milliseconds. The expected offset is
computed HERE, from the clock value at which the last character of the command was echoed,
independently of any renderer or search code.

The session reaches Kafka only: run the persist worker (and, for OpenSearch, the index
worker) afterwards.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from ingest.sdk import SessionRecorder
from schemas.models import SessionInfo
from sessionvault.settings import Settings

COMMAND = "rm -rf /tmp/x"
"""What the reader saw on the command line (the text searches must find)."""
TYPO = "rm -rg"
"""What was typed before the correction (searches must NOT find it in the output)."""

# Backspace echoes of real line editors: bash/readline and zsh ("\b \b": back, blank, back) and
# the erase-to-end-of-line style ("\b\x1b[K": back, then CSI K).
ERASE_BLANK = b"\b \b"
ERASE_EOL = b"\b\x1b[K"

PROMPT = b"\x1b[01;32malice@web-1\x1b[00m:\x1b[01;34m~/src\x1b[00m$ "
STARTED_AT = "2026-03-10T09:00:00.000Z"


class ManualClock:
    """A monotonic clock the caller advances (seconds, float), safe to read from the
    transport's linger thread."""

    def __init__(self, start: float = 1000.0) -> None:
        self._t = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds


@dataclass(frozen=True)
class TypedSession:
    """What was recorded: ``offset_ms`` is when the last character of :data:`COMMAND`
    (the ``x`` of ``/tmp/x``) was echoed, in ms from the session start."""

    sid: str
    offset_ms: int
    command: str = COMMAND
    typo: str = TYPO
    started_at: str = STARTED_AT
    first_ms: int = -1
    """When the first character of the command line was echoed (ms from the start)."""


def record_typed_session(
    settings: Settings,
    *,
    erase: bytes = ERASE_BLANK,
    seed: int = 4,
    started_at: str = STARTED_AT,
    user: str = "alice",
    sid: str | None = None,
    command: str = COMMAND,
    typo: str = TYPO,
) -> TypedSession:
    """Record the typed-command session to ``settings.topic_chunks`` and wait until Kafka
    acknowledged every chunk (the recorder's own transport is flushed and closed).

    ``erase`` is the shell's echo of the backspace key (:data:`ERASE_BLANK` or
    :data:`ERASE_EOL`). Gaps between keystrokes are 1.2-2.0 s (seeded), so an offset taken
    from a neighbouring character, the line's start or its end would be more than 1 s off.
    """
    rng = random.Random(seed)
    clock = ManualClock()
    start = clock()
    rec = SessionRecorder(
        settings,
        SessionInfo(
            started_at,
            120,
            40,
            user=user,
            login="root",
            server_id="web-1",
            cluster_name="prod-eu",
            command="bash",
            term="xterm-256color",
        ),
        sid=sid,
        clock=clock,
    )

    def ms() -> int:
        return round((clock() - start) * 1000)

    def key(data: bytes, echo: bytes) -> int:
        """One keystroke: the key on the input stream, a few ms later its echo; returns the
        echo's offset."""
        clock.advance(rng.uniform(1.2, 2.0))
        rec.input(data)
        clock.advance(0.003)
        rec.output(echo)
        return ms()

    clock.advance(0.2)
    rec.output(b"Last login: Mon Mar  9 17:02:11 2026 from 10.0.0.7\r\n")
    clock.advance(0.3)
    rec.output(PROMPT)
    # ``typo`` is typed, its last character erased, then the rest of ``command``.
    assert command.startswith(typo[:-1])
    assert not command.startswith(typo)
    echoed = [key(ch.encode(), ch.encode()) for ch in typo]
    key(b"\x7f", erase)  # DEL from the keyboard; the line editor echoes its erase sequence
    last = -1
    for ch in command[len(typo) - 1 :]:
        last = key(ch.encode(), ch.encode())
    key(b"\r", b"\r\n")
    clock.advance(0.05)
    rec.output(b"\x1b[31mremoved\x1b[0m '/tmp/x/cache.db'\r\n")
    clock.advance(0.02)
    rec.output(b"removed directory '/tmp/x'\r\n")
    clock.advance(0.01)
    rec.output(PROMPT)
    for ch in "exit":
        key(ch.encode(), ch.encode())
    key(b"\r", b"\r\nlogout\r\n")
    clock.advance(0.1)
    if not rec.close(0, flush_timeout_s=30.0):
        raise AssertionError(f"session {rec.sid}: not every chunk reached Kafka")
    return TypedSession(
        rec.sid,
        last,
        command=command,
        typo=typo,
        started_at=started_at,
        first_ms=echoed[0],
    )


__all__ = [
    "COMMAND",
    "ERASE_BLANK",
    "ERASE_EOL",
    "PROMPT",
    "STARTED_AT",
    "TYPO",
    "ManualClock",
    "TypedSession",
    "record_typed_session",
]
