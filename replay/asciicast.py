"""asciicast v2 and v3: write (export) and read (``play FILE.cast``). Pure: no I/O of its own.

Writers are push encoders (``header()``, ``frame(f)``, ``end()`` each return the bytes to
write), so the same code serves a synchronous iterable and an asynchronous database stream,
in constant memory.

Text mapping (the exact rule, chosen to match what asciinema itself records):
asciicast event data is a JSON string, i.e. Unicode text, while a terminal stream is bytes.
asciinema 2.x (``asciinema/asciicast/v2.py``, ``writer.write_stdout``) decodes each stream with
its own ``codecs.getincrementaldecoder("UTF-8")("replace")`` and ``asciinema cat`` writes the
event text back encoded as UTF-8. This module does the same:

* one incremental UTF-8 decoder per source stream (``o``, ``e``, ``i``), so a multibyte
  character split across frames is joined, and appears in the event of the frame that
  completes it;
* each invalid byte sequence becomes U+FFFD per CPython's ``"replace"`` rule (one U+FFFD per
  maximal invalid subpart), never a lone surrogate (``surrogateescape`` output is not valid
  JSON text for other readers);
* an incomplete sequence still pending when the session ends becomes U+FFFD in a final event
  at the session's last offset;
* a frame whose bytes decode to nothing yet (only the start of a character) writes no event;
  its bytes appear in the next event of that stream.

Consequence (the limit): for output that is valid UTF-8, ``asciinema cat`` of our v2 export
gives back exactly the session's output bytes (``o`` then ``e`` interleaved in time order);
invalid bytes come back as EF BF BD, as with a recording made by asciinema itself. The raw
export (:mod:`replay.export`) is the byte-exact format.

Streams: ``o`` and ``e`` (kubectl stderr; a terminal shows both) are written as ``o`` events
with separate decoders; ``i``, ``r`` and ``m`` keep their codes. The error channel ``x``
carries no terminal bytes: v3 writes one ``x`` (exit) event at the end with the exit code,
v2 has no exit event and drops it.

Timing: offsets are whole milliseconds, written as exact decimal seconds with six digits
(microsecond precision, as asciinema 3 writes them). Reading rounds to the nearest ms; v3
intervals are summed in integer microseconds so long files do not drift.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from replay.kube import exit_code_from_status, status_for_exit_code
from schemas.models import Frame, Stream
from sessionvault.errors import ValidationError


@dataclass(frozen=True)
class CastHeader:
    """What both versions' headers say about a recording."""

    cols: int
    rows: int
    timestamp: int | None = None
    term: str = ""
    command: str = ""
    title: str = ""
    idle_time_limit: float | None = None
    env: dict[str, str] = field(default_factory=dict, hash=False)
    version: int = 2


def _seconds(us: int) -> bytes:
    return b"%d.%06d" % divmod(us, 1_000_000)


_EVENT_CODE: dict[Stream, bytes] = {
    Stream.OUTPUT: b"o",
    Stream.STDERR: b"o",
    Stream.INPUT: b"i",
    Stream.RESIZE: b"r",
    Stream.MARKER: b"m",
}


class _Encoder:
    version = 0

    def __init__(self, header: CastHeader) -> None:
        self._header = header
        self._decoders: dict[Stream, codecs.IncrementalDecoder] = {}
        self._max_ms = 0
        self._exit_code: int | None = None

    def _text(self, f: Frame) -> str:
        if f.stream in (Stream.RESIZE, Stream.MARKER):
            return f.data.decode("utf-8", "replace")
        dec = self._decoders.get(f.stream)
        if dec is None:
            dec = self._decoders[f.stream] = codecs.getincrementaldecoder("utf-8")("replace")
        return dec.decode(f.data)

    def header(self) -> bytes:
        raise NotImplementedError

    def _event(self, offset_ms: int, code: bytes, text: str) -> bytes:
        raise NotImplementedError

    def frame(self, f: Frame) -> bytes:
        """The event line(s) for one frame (often one line, sometimes nothing)."""
        self._max_ms = max(self._max_ms, f.offset_ms)
        if f.stream is Stream.ERROR:
            code = exit_code_from_status(f.data)
            if code is not None:
                self._exit_code = code
            return b""
        text = self._text(f)
        if not text:
            return b""
        return self._event(f.offset_ms, _EVENT_CODE[f.stream], text)

    def end(self, exit_code: int | None = None) -> bytes:
        """Flush incomplete characters; v3 also writes the exit event.

        ``exit_code`` (from the session row) wins over one found on the error channel.
        """
        out: list[bytes] = []
        for stream, dec in self._decoders.items():
            text = dec.decode(b"", final=True)
            if text:
                # At the session's last offset: event times must never go backwards.
                out.append(self._event(self._max_ms, _EVENT_CODE[stream], text))
        code = exit_code if exit_code is not None else self._exit_code
        if code is not None and self.version >= 3:
            # The exit event closes the recording: at the last frame's time, never earlier.
            out.append(self._event(self._max_ms, b"x", str(code)))
        return b"".join(out)


def _header_json(fields: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in fields.items() if v not in (None, "", {})}) + b"\n"


class V2Writer(_Encoder):
    """asciicast v2: events ``[seconds since start, code, data]``."""

    version = 2

    def header(self) -> bytes:
        h = self._header
        env = dict(h.env)
        if h.term:
            env.setdefault("TERM", h.term)
        return _header_json(
            {
                "version": 2,
                "width": h.cols,
                "height": h.rows,
                "timestamp": h.timestamp,
                "idle_time_limit": h.idle_time_limit,
                "command": h.command,
                "title": h.title,
                "env": env,
            }
        )

    def _event(self, offset_ms: int, code: bytes, text: str) -> bytes:
        return b'[%s, "%s", %s]\n' % (_seconds(offset_ms * 1000), code, orjson.dumps(text))


class V3Writer(_Encoder):
    """asciicast v3: events ``[seconds since the previous event, code, data]``; ``x`` exit."""

    version = 3

    def __init__(self, header: CastHeader) -> None:
        super().__init__(header)
        self._prev_ms = 0

    def header(self) -> bytes:
        h = self._header
        term: dict[str, Any] = {"cols": h.cols, "rows": h.rows}
        if h.term:
            term["type"] = h.term
        return _header_json(
            {
                "version": 3,
                "term": term,
                "timestamp": h.timestamp,
                "idle_time_limit": h.idle_time_limit,
                "command": h.command,
                "title": h.title,
                "env": dict(h.env),
            }
        )

    def _event(self, offset_ms: int, code: bytes, text: str) -> bytes:
        interval = max(0, offset_ms - self._prev_ms)
        self._prev_ms = max(self._prev_ms, offset_ms)
        return b'[%s, "%s", %s]\n' % (_seconds(interval * 1000), code, orjson.dumps(text))


def write_cast(
    frames: Iterable[Frame], header: CastHeader, *, version: int = 2, exit_code: int | None = None
) -> Iterator[bytes]:
    """The lines of an asciicast file (v2 or v3) for ``frames``, lazily."""
    if version not in (2, 3):
        raise ValueError(f"asciicast version {version} is not supported (2 or 3)")
    enc: _Encoder = V2Writer(header) if version == 2 else V3Writer(header)
    yield enc.header()
    for f in frames:
        chunk = enc.frame(f)
        if chunk:
            yield chunk
    tail = enc.end(exit_code)
    if tail:
        yield tail


# --- reading -----------------------------------------------------------------------------

_READ_CODES = {"o": Stream.OUTPUT, "i": Stream.INPUT, "r": Stream.RESIZE, "m": Stream.MARKER}


def _bad(message: str) -> ValidationError:
    return ValidationError("bad_asciicast", message)


def _parse_header(line: bytes | str) -> CastHeader:
    try:
        h = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"asciicast header is not JSON: {exc}") from exc
    if not isinstance(h, dict):
        raise _bad("asciicast header must be a JSON object")
    version = h.get("version")
    raw_env = h.get("env")
    env: dict[str, Any] = raw_env if isinstance(raw_env, dict) else {}
    common: dict[str, Any] = {
        "timestamp": h.get("timestamp") if isinstance(h.get("timestamp"), int) else None,
        "command": str(h.get("command") or ""),
        "title": str(h.get("title") or ""),
        "idle_time_limit": h.get("idle_time_limit"),
        "env": {str(k): str(v) for k, v in env.items()},
    }
    if version == 2:
        cols, rows, term = h.get("width"), h.get("height"), env.get("TERM", "")
    elif version == 3:
        t = h.get("term")
        if not isinstance(t, dict):
            raise _bad("asciicast v3 header has no 'term' object")
        cols, rows, term = t.get("cols"), t.get("rows"), t.get("type", "")
    else:
        raise _bad(f"asciicast version {version!r} is not supported (2 or 3)")
    if not isinstance(cols, int) or not isinstance(rows, int):
        raise _bad("asciicast header lacks integer terminal columns and rows")
    return CastHeader(cols, rows, term=str(term or ""), version=version, **common)


def _events(lines: Iterator[bytes | str], first_line_no: int) -> Iterator[tuple[int, list[Any]]]:
    for n, line in enumerate(lines, start=first_line_no):
        stripped = line.strip()
        if not stripped or stripped[:1] in ("#", b"#"):  # v3 allows comment lines
            continue
        try:
            ev = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise _bad(f"line {n}: not JSON: {exc}") from exc
        if (
            not isinstance(ev, list)
            or len(ev) < 3
            or not isinstance(ev[0], int | float)
            or not isinstance(ev[1], str)
            or not isinstance(ev[2], str)
        ):
            raise _bad(f"line {n}: an event is [time, code, data]")
        yield n, ev


def read_cast(lines: Iterable[bytes | str]) -> tuple[CastHeader, Iterator[Frame]]:
    """Parse an asciicast v1, v2 or v3 file given as lines; v2/v3 frames are produced lazily.

    Event text becomes UTF-8 bytes; unknown event codes are skipped (as players do); a v3
    exit event becomes an error-channel frame carrying the equivalent kubectl Status JSON.
    A v1 file (asciinema 1.x) is one JSON document, often spread over many lines, with
    relative delays in ``stdout``: it is read whole (such files are small), and has no start
    time of its own (``timestamp`` None).
    """
    it = iter(lines)
    try:
        first = next(it)
    except StopIteration:
        raise _bad("empty asciicast file") from None
    try:
        head = orjson.loads(first)
    except orjson.JSONDecodeError:
        head = None
    if head is None or (isinstance(head, dict) and head.get("version") == 1):
        rest = list(it)
        whole: bytes | str = first
        if rest:
            whole = (b"\n" if isinstance(first, bytes) else "\n").join([first, *rest])  # type: ignore[list-item]
        return _read_v1(whole)
    header = _parse_header(first)

    def frames() -> Iterator[Frame]:
        us = 0
        for n, (t, code, data) in ((n, ev[:3]) for n, ev in _events(it, 2)):
            step = _micros(t, n)
            us = us + step if header.version == 3 else step
            ms = (us + 500) // 1000
            stream = _READ_CODES.get(code)
            if stream is not None:
                yield Frame(ms, stream, data.encode("utf-8", "surrogatepass"))
            elif code == "x":
                try:
                    yield Frame(ms, Stream.ERROR, status_for_exit_code(int(data)))
                except ValueError:
                    raise _bad(f"line {n}: exit event data {data!r} is not an integer") from None

    return header, frames()


def _micros(t: float, n: int) -> int:
    """A time in seconds as whole microseconds; negative, infinite or absurd times refused."""
    if not 0 <= t < 10**9:  # NaN fails both comparisons
        raise _bad(f"line {n}: time {t!r} is out of range")
    return round(t * 1_000_000)


def _read_v1(doc: bytes | str) -> tuple[CastHeader, Iterator[Frame]]:
    try:
        h = orjson.loads(doc)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"asciicast header is not JSON: {exc}") from exc
    if not isinstance(h, dict) or h.get("version") != 1:
        raise _bad("asciicast header must be a JSON object")
    cols, rows, stdout = h.get("width"), h.get("height"), h.get("stdout")
    if not isinstance(cols, int) or not isinstance(rows, int):
        raise _bad("asciicast header lacks integer terminal columns and rows")
    if not isinstance(stdout, list):
        raise _bad("asciicast version 1 file has no 'stdout' event list")
    raw_env = h.get("env")
    env = {str(k): str(v) for k, v in raw_env.items()} if isinstance(raw_env, dict) else {}
    header = CastHeader(
        cols,
        rows,
        term=env.get("TERM", ""),
        command=str(h.get("command") or ""),
        title=str(h.get("title") or ""),
        env=env,
        version=1,
    )
    out: list[Frame] = []
    us = 0
    for n, ev in enumerate(stdout, start=1):
        if (
            not isinstance(ev, list)
            or len(ev) < 2
            or not isinstance(ev[0], int | float)
            or isinstance(ev[0], bool)
            or not isinstance(ev[1], str)
        ):
            raise _bad(f"stdout event {n}: an event is [delay, data]")
        us += _micros(ev[0], n)
        out.append(Frame((us + 500) // 1000, Stream.OUTPUT, ev[1].encode("utf-8", "surrogatepass")))
    return header, iter(out)
