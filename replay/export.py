"""Session exports, streamed in constant memory. Pure formats; the output is any binary file.

Formats:

``raw``
    The output bytes exactly as the session produced them: the ``o`` and ``e`` frames' data
    concatenated in order. The byte-exact format (``cat`` it to a terminal).
``text``
    What a reader saw, as plain text (:mod:`replay.text`).
``ndjson`` (also accepted as ``json``, its earlier name)
    Newline-delimited JSON (NDJSON: one JSON object per line, media type
    ``application/x-ndjson``); not one JSON document. First a header ``{"type": "header",
    "format": "sessionvault.frames", "version": 1, "sid", "tenant", ..., "cols", "rows",
    "started_at", "exit_code", "start_ms"}``, then one
    line per frame ``{"t_ms", "stream", "data_b64"}`` for every stream (stdout and stderr stay
    distinct), then ``{"type": "end", "frames", "bytes", "exit_code"}``. Lossless.
``asciicast-v2`` / ``asciicast-v3``
    See :mod:`replay.asciicast` for the exact text mapping.

Starting at a moment (``start_ms``, the CLI's ``--start-at``, what replay links name):

* the asciicast formats *seek* exactly as ``play --start-at`` does
  (:func:`replay.frames.start_at`): every frame before the moment is written at time 0 so a
  player shows the screen as it was, later frames are rebased so the moment is time 0, and the
  header's ``timestamp`` is the moment's wall-clock second;
* ``raw``, ``text`` and ``ndjson`` *cut*: only the frames at or after the moment; ``ndjson``
  keeps the session's own ``t_ms`` and names the cut in its header (``"start_ms"``). A terminal
  fed a cut ``raw`` stream may show a half-drawn screen; that is what cutting means.

The exit code is the session row's (set from the final chunk); when it has none, the one the
kubectl error channel (``x`` frames) reports.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, BinaryIO, Protocol

import orjson

from replay.asciicast import CastHeader, V2Writer, V3Writer
from replay.frames import seek_frame
from replay.kube import exit_code_from_status
from replay.text import TextRenderer
from schemas.models import Frame, Stream

if TYPE_CHECKING:  # a type only: this module stays free of the store
    from storage.codec import RawOutput

FORMATS = ("asciicast-v2", "asciicast-v3", "raw", "text", "ndjson")
FORMAT_ALIASES = {"json": "ndjson"}
"""Earlier names still accepted (CLI ``--format``, API ``format=``)."""
FORMAT_CHOICES = FORMATS + tuple(FORMAT_ALIASES)


def format_name(fmt: str) -> str:
    """The canonical name of export format ``fmt`` (an alias resolved)."""
    return FORMAT_ALIASES.get(fmt, fmt)


SEEKING_FORMATS = frozenset({"asciicast-v2", "asciicast-v3"})
"""Formats that rebuild the screen at ``start_ms`` (the others cut there)."""


def read_from_ms(fmt: str, start_ms: int) -> int:
    """Where reading the stored frames may start for an export of ``fmt`` from ``start_ms``:
    0 for the seeking formats (they need every earlier frame), ``start_ms`` for the others."""
    return 0 if fmt in SEEKING_FORMATS else max(0, start_ms)


async def export_frames(
    frames: AsyncIterable[Frame], fmt: str, start_ms: int
) -> AsyncIterator[Frame]:
    """The frames an export of ``fmt`` from ``start_ms`` writes, given the session's frames
    from :func:`read_from_ms` on (or from 0: the cut is applied here too)."""
    seeking = fmt in SEEKING_FORMATS
    async for f in frames:
        if seeking:
            yield seek_frame(f, start_ms)
        elif f.offset_ms >= start_ms:
            yield f


class SessionMeta(Protocol):
    """What an export needs to know about a session (``storage.reader.SessionRecord`` fits)."""

    @property
    def sid(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def user_name(self) -> str: ...
    @property
    def login(self) -> str: ...
    @property
    def server_id(self) -> str: ...
    @property
    def cluster_name(self) -> str: ...
    @property
    def kubernetes_cluster(self) -> str: ...
    @property
    def command(self) -> str: ...
    @property
    def term(self) -> str: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def cols(self) -> int: ...
    @property
    def rows(self) -> int: ...
    @property
    def exit_code(self) -> int | None: ...


@dataclass(frozen=True)
class ExportStats:
    frames: int
    bytes_in: int
    bytes_out: int
    exit_code: int | None


class Encoder(Protocol):
    def header(self) -> bytes: ...
    def frame(self, f: Frame) -> bytes: ...
    def end(self) -> bytes: ...


class RawEncoder:
    def header(self) -> bytes:
        return b""

    def frame(self, f: Frame) -> bytes:
        return f.data if f.stream in (Stream.OUTPUT, Stream.STDERR) else b""

    def end(self) -> bytes:
        return b""


class TextEncoder:
    def __init__(self) -> None:
        self._r = TextRenderer()

    def header(self) -> bytes:
        return b""

    def frame(self, f: Frame) -> bytes:
        if f.stream in (Stream.OUTPUT, Stream.STDERR):
            return self._r.feed(f.data).encode("utf-8")
        return b""

    def end(self) -> bytes:
        return self._r.finish().encode("utf-8")


class JsonEncoder:
    def __init__(self, session: SessionMeta, start_ms: int = 0) -> None:
        self._s = session
        self._start_ms = start_ms
        self._frames = 0
        self._bytes = 0
        self._x_code: int | None = None

    def header(self) -> bytes:
        s = self._s
        return (
            orjson.dumps(
                {
                    "type": "header",
                    "format": "sessionvault.frames",
                    "version": 1,
                    "sid": s.sid,
                    "tenant": s.tenant,
                    "kind": s.kind,
                    "user": s.user_name,
                    "login": s.login,
                    "server_id": s.server_id,
                    "cluster_name": s.cluster_name,
                    "kubernetes_cluster": s.kubernetes_cluster,
                    "command": s.command,
                    "term": s.term,
                    "cols": s.cols,
                    "rows": s.rows,
                    "started_at": s.started_at.isoformat(),
                    "exit_code": s.exit_code,
                    "start_ms": self._start_ms,
                }
            )
            + b"\n"
        )

    def frame(self, f: Frame) -> bytes:
        self._frames += 1
        self._bytes += len(f.data)
        if f.stream is Stream.ERROR:
            code = exit_code_from_status(f.data)
            if code is not None:
                self._x_code = code
        return b'{"t_ms":%d,"stream":"%s","data_b64":"%s"}\n' % (
            f.offset_ms,
            f.stream.value.encode(),
            base64.b64encode(f.data),
        )

    def end(self) -> bytes:
        code = self._s.exit_code if self._s.exit_code is not None else self._x_code
        end = {"type": "end", "frames": self._frames, "bytes": self._bytes, "exit_code": code}
        return orjson.dumps(end) + b"\n"


class CastEncoder:
    def __init__(self, session: SessionMeta, version: int, start_ms: int = 0) -> None:
        header = cast_header(session, start_ms)
        self._w = V2Writer(header) if version == 2 else V3Writer(header)
        self._exit = session.exit_code

    def header(self) -> bytes:
        return self._w.header()

    def frame(self, f: Frame) -> bytes:
        return self._w.frame(f)

    def end(self) -> bytes:
        return self._w.end(self._exit)


def cast_header(session: SessionMeta, start_ms: int = 0) -> CastHeader:
    """The asciicast header; time 0 is the session's start, or ``start_ms`` after it."""
    who = f"{session.login or session.user_name}@{session.server_id or session.kubernetes_cluster}"
    zero = session.started_at + timedelta(milliseconds=max(0, start_ms))
    return CastHeader(
        cols=session.cols,
        rows=session.rows,
        timestamp=int(zero.timestamp()),
        term=session.term,
        command=session.command,
        title=f"{session.sid} {who}".strip(),
    )


def encoder(fmt: str, session: SessionMeta, start_ms: int = 0) -> Encoder:
    """The streaming encoder for ``fmt`` (one of :data:`FORMAT_CHOICES`), for an export that
    starts at ``start_ms`` (frames from :func:`export_frames`)."""
    fmt = format_name(fmt)
    if fmt == "raw":
        return RawEncoder()
    if fmt == "text":
        return TextEncoder()
    if fmt == "ndjson":
        return JsonEncoder(session, start_ms)
    if fmt == "asciicast-v2":
        return CastEncoder(session, 2, start_ms)
    if fmt == "asciicast-v3":
        return CastEncoder(session, 3, start_ms)
    raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")


class _Counter:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.frames = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.x_code: int | None = None

    def write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.bytes_out += len(data)

    def saw(self, f: Frame) -> None:
        self.frames += 1
        self.bytes_in += len(f.data)
        if f.stream is Stream.ERROR:
            code = exit_code_from_status(f.data)
            if code is not None:
                self.x_code = code

    def took(self, piece: RawOutput) -> None:
        self.frames += piece.frames
        self.bytes_in += piece.bytes_in
        for f in piece.errors:
            code = exit_code_from_status(f.data)
            if code is not None:
                self.x_code = code

    def saw_all(self, frames: Sequence[Frame]) -> None:
        self.frames += len(frames)
        for f in frames:
            self.bytes_in += len(f.data)
            if f.stream is Stream.ERROR:
                code = exit_code_from_status(f.data)
                if code is not None:
                    self.x_code = code

    def stats(self, session: SessionMeta) -> ExportStats:
        code = session.exit_code if session.exit_code is not None else self.x_code
        return ExportStats(self.frames, self.bytes_in, self.bytes_out, code)


def export(frames: Iterable[Frame], session: SessionMeta, fmt: str, out: BinaryIO) -> ExportStats:
    """Write ``frames`` of ``session`` to ``out`` in ``fmt``; one frame in memory at a time."""
    enc = encoder(fmt, session)
    c = _Counter(out)
    c.write(enc.header())
    for f in frames:
        c.saw(f)
        c.write(enc.frame(f))
    c.write(enc.end())
    out.flush()
    return c.stats(session)


async def export_async(
    frames: AsyncIterable[Frame],
    session: SessionMeta,
    fmt: str,
    out: BinaryIO,
    start_ms: int = 0,
) -> ExportStats:
    """:func:`export` over an asynchronous frame stream (``storage.reader.iter_frames`` read
    from :func:`read_from_ms`), starting at ``start_ms`` (seek or cut, see the module doc).
    Stored sessions are faster through :func:`export_lists_async`."""

    async def one_by_one() -> AsyncIterator[Sequence[Frame]]:
        async for f in frames:
            yield (f,)

    return await export_lists_async(one_by_one(), session, fmt, out, start_ms)


async def export_lists_async(
    frame_lists: AsyncIterable[Sequence[Frame]],
    session: SessionMeta,
    fmt: str,
    out: BinaryIO,
    start_ms: int = 0,
) -> ExportStats:
    """:func:`export_async` over the frames of one stored chunk at a time
    (``storage.reader.iter_frame_lists``): see :func:`encoded_pieces`."""
    enc = encoder(fmt, session, start_ms)
    c = _Counter(out)
    c.write(enc.header())
    async for piece in encoded_pieces(frame_lists, enc, fmt, start_ms, c.saw_all):
        c.write(piece)
    c.write(enc.end())
    out.flush()
    return c.stats(session)


async def export_raw_async(
    pieces: AsyncIterable[RawOutput], session: SessionMeta, out: BinaryIO
) -> ExportStats:
    """The raw export from ``storage.reader.iter_raw_output``: each chunk's output bytes
    written as they are stored, no frame object made (what ``export --format raw`` runs)."""
    c = _Counter(out)
    async for piece in pieces:
        c.took(piece)
        c.write(piece.data)
    out.flush()
    return c.stats(session)


async def encoded_pieces(
    frame_lists: AsyncIterable[Sequence[Frame]],
    enc: Encoder,
    fmt: str,
    start_ms: int,
    saw: Callable[[Sequence[Frame]], None] | None = None,
) -> AsyncIterator[bytes]:
    """The body of an export (between ``enc.header()`` and ``enc.end()``), one piece per
    stored chunk: one write per chunk instead of one per frame, and for ``raw`` the output
    bytes joined without an encoder call per frame. A keystroke-heavy session has some 240
    frames per chunk; per-frame overhead is what bounded exports (docs/benchmarks.md)."""
    seeking = fmt in SEEKING_FORMATS
    raw = isinstance(enc, RawEncoder)
    for_output = (Stream.OUTPUT, Stream.STDERR)
    async for frames in frame_lists:
        if seeking:
            frames = [seek_frame(f, start_ms) for f in frames]
        elif frames and frames[0].offset_ms < start_ms:
            frames = [f for f in frames if f.offset_ms >= start_ms]
        if saw is not None:
            saw(frames)
        if raw:
            piece = b"".join([f.data for f in frames if f.stream in for_output])
        else:
            piece = b"".join([enc.frame(f) for f in frames])
        if piece:
            yield piece
