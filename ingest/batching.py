"""Frame -> chunk batching for one session. Pure: no Kafka, no threads, time is injected.

A :class:`ChunkBuilder` turns the writes of one terminal session (output, input, resize,
marker) into hash-chained :class:`~schemas.models.Chunk` values:

* ``open()`` returns chunk 0 at once, carrying :class:`~schemas.models.SessionInfo` and no
  frames, so the session exists downstream before any (possibly long) output arrives.
* A chunk is cut when its pending *cost* reaches ``max_bytes``, or when ``linger_ms`` has passed
  since its first pending frame (the caller drives time through ``poll``).
* Cost is payload bytes plus :data:`FRAME_OVERHEAD` per frame, because every frame adds a
  ``[offset, stream, length]`` entry to the chunk header: a flood of one-byte writes must not
  build a record many times larger than ``max_bytes``. The payload of a chunk therefore never
  exceeds ``max_bytes``; a single write larger than that is split across chunks (same offset,
  same stream, bytes in order), which a byte-exact replay cannot tell apart from the original.
* Offsets are integer milliseconds since the session start on a monotonic clock, so wall-clock
  jumps (NTP) never make time go backwards inside a recording.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from schemas.chain import chain_hash
from schemas.models import GENESIS_HASH, Chunk, Frame, SessionInfo, Stream

FRAME_OVERHEAD = 24
"""Header bytes a frame costs on the wire, roughly (``[123456789,"o",65536],``)."""

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ChunkLimits:
    """When to cut a chunk: ``max_bytes`` of cost, or ``linger_ms`` after the first frame."""

    max_bytes: int
    linger_ms: int

    def __post_init__(self) -> None:
        if self.max_bytes <= FRAME_OVERHEAD:
            raise ValueError(f"max_bytes must be larger than {FRAME_OVERHEAD}")
        if self.linger_ms < 0:
            raise ValueError("linger_ms must be >= 0")


class ChunkBuilder:
    """Batches one session's frames into chained chunks.

    Not thread-safe: the owner serialises calls. Every method returns the chunks it completed,
    oldest first; the caller must ship them in that order.
    """

    def __init__(
        self,
        tenant: str,
        sid: str,
        info: SessionInfo,
        limits: ChunkLimits,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.tenant = tenant
        self.sid = sid
        self.info = info
        self.limits = limits
        self._clock = clock
        self._start = clock()
        self._seq = 0
        self._prev_hash = GENESIS_HASH
        self._frames: list[Frame] = []
        self._cost = 0
        self._first_pending_at: float | None = None
        self._opened = False
        self._closed = False

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending_bytes(self) -> int:
        return sum(len(f.data) for f in self._frames)

    def offset_ms(self, now: float | None = None) -> int:
        """Milliseconds since the session started (never negative)."""
        t = self._clock() if now is None else now
        # The epsilon absorbs float error (1000.049 - 1000 = 0.04899...), not real time.
        return max(0, int((t - self._start) * 1000 + 1e-6))

    def open(self) -> Chunk:
        """Chunk 0: opens the session, carries ``info``, no frames."""
        if self._opened:
            raise RuntimeError(f"session {self.sid} already opened")
        self._opened = True
        return self._emit(final=False, exit_code=None)

    def add(
        self,
        stream: Stream,
        data: bytes,
        *,
        now: float | None = None,
        offset_ms: int | None = None,
    ) -> list[Chunk]:
        """Record one write; return the chunks it completed (by size).

        ``offset_ms`` stamps the frame with an explicit offset instead of the clock's (importers
        replaying another recorder's timings). Offsets must not decrease across calls.
        """
        self._check_writable()
        t = self._clock() if now is None else now
        if offset_ms is not None and offset_ms < 0:
            raise ValueError(f"offset_ms must be >= 0, got {offset_ms}")
        offset = self.offset_ms(t) if offset_ms is None else offset_ms
        out: list[Chunk] = []
        if not data:
            return out
        view = memoryview(data)
        while view:
            room = self.limits.max_bytes - self._cost - FRAME_OVERHEAD
            if room <= 0:
                out.append(self._emit(final=False, exit_code=None))
                continue
            piece = bytes(view[:room])
            view = view[room:]
            self._append(Frame(offset, stream, piece), t)
            if self._cost >= self.limits.max_bytes:
                out.append(self._emit(final=False, exit_code=None))
        return out

    def poll(self, now: float | None = None) -> list[Chunk]:
        """Cut the pending chunk if it has lingered ``linger_ms``; call this periodically."""
        if not self._opened or self._closed or self._first_pending_at is None:
            return []
        t = self._clock() if now is None else now
        if (t - self._first_pending_at) * 1000 + 1e-6 >= self.limits.linger_ms:
            return [self._emit(final=False, exit_code=None)]
        return []

    def deadline(self) -> float | None:
        """Clock time at which ``poll`` will cut the pending chunk; None when nothing pends."""
        if self._first_pending_at is None:
            return None
        return self._first_pending_at + self.limits.linger_ms / 1000

    def finish(self, exit_code: int | None) -> Chunk:
        """The last chunk: pending frames (maybe none), ``final=True`` and ``exit_code``."""
        self._check_writable()
        self._closed = True
        return self._emit(final=True, exit_code=exit_code)

    def _check_writable(self) -> None:
        if not self._opened:
            raise RuntimeError(f"session {self.sid}: open() must come first")
        if self._closed:
            raise RuntimeError(f"session {self.sid} is closed")

    def _append(self, frame: Frame, t: float) -> None:
        last = self._frames[-1] if self._frames else None
        if last is not None and last.stream == frame.stream and last.offset_ms == frame.offset_ms:
            # Same stream in the same millisecond: one frame replays identically and saves header.
            self._frames[-1] = Frame(last.offset_ms, last.stream, last.data + frame.data)
            self._cost += len(frame.data)
        else:
            self._frames.append(frame)
            self._cost += len(frame.data) + FRAME_OVERHEAD
        if self._first_pending_at is None:
            self._first_pending_at = t

    def _emit(self, *, final: bool, exit_code: int | None) -> Chunk:
        frames = tuple(self._frames)
        seq = self._seq
        h = chain_hash(self._prev_hash, self.sid, seq, frames)
        chunk = Chunk(
            tenant=self.tenant,
            sid=self.sid,
            seq=seq,
            frames=frames,
            prev_hash=self._prev_hash,
            hash=h,
            final=final,
            exit_code=exit_code,
            session=self.info if seq == 0 else None,
        )
        self._seq += 1
        self._prev_hash = h
        self._frames = []
        self._cost = 0
        self._first_pending_at = None
        return chunk
