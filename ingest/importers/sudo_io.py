"""sudo I/O log directories (``log_input``/``log_output``) -> :class:`Recording`.

A session directory holds:

- ``log.json`` (sudo 1.9.4+): ``timestamp{seconds,nanoseconds}``, ``submituser``, ``runuser``,
  ``submithost``, ``command``, ``runargv``, ``ttyname``, ``columns``, ``lines``, ...; or the
  legacy ``log``: ``time:user:runas_user:runas_group:tty[:lines:cols]``, then cwd, then command.
- ``timing``: one line per event, ``<type> <delay> <args>``. ``delay`` is seconds since the
  previous event. Types (sudo's ``IO_EVENT_*``): 0 stdin, 1 stdout, 2 stderr, 3 ttyin,
  4 ttyout, 5 window size (args ``rows cols``), 6 ttyout (sudo 1.8.7), 7 suspend (args: the
  signal name). For I/O types the args are the byte count to take next from the stream's file.
  Logs older than sudo 1.8 have lines ``<delay> <bytes>`` (ttyout only).
- ``stdin``, ``stdout``, ``stderr``, ``ttyin``, ``ttyout``: raw bytes, gzip-compressed unless
  ``compress_io`` was off (detected by the gzip magic, not by name).

Frames: ttyout/stdout -> ``o``, ttyin/stdin -> ``i``, stderr -> ``e``, window size -> ``r``
(``COLSxROWS``), suspend -> ``m`` (``suspend:<signal>``). Offsets are exact: delays are
summed as integer nanoseconds, never as floats. The session id is a UUIDv5 of the tenant and
the SHA-256 of the metadata and timing files, so re-importing the same directory changes
nothing.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from ingest.importers.base import (
    Recording,
    event_uid,
    file_sha256,
    import_session_id,
    rfc3339_from_ns,
    stamp_event,
)
from schemas.models import Frame, SessionInfo, Stream
from sessionvault.errors import ValidationError

__all__ = [
    "ByteReader",
    "SudoLogInfo",
    "iter_frames",
    "load",
    "parse_log",
    "parse_log_json",
    "parse_timing_line",
]

# IO_EVENT_* -> (file name, stream)
_IO_EVENTS: dict[int, tuple[str, Stream]] = {
    0: ("stdin", Stream.INPUT),
    1: ("stdout", Stream.OUTPUT),
    2: ("stderr", Stream.STDERR),
    3: ("ttyin", Stream.INPUT),
    4: ("ttyout", Stream.OUTPUT),
    6: ("ttyout", Stream.OUTPUT),
}
IO_EVENT_WINSIZE = 5
IO_EVENT_SUSPEND = 7
STREAM_FILES = ("stdin", "stdout", "stderr", "ttyin", "ttyout")
GZIP_MAGIC = b"\x1f\x8b"


class ByteReader(Protocol):
    """What :func:`iter_frames` needs of a stream file: sequential reads."""

    def read(self, size: int = -1, /) -> bytes: ...


def _bad(message: str) -> ValidationError:
    return ValidationError("bad_sudo_iolog", message)


@dataclass(frozen=True, slots=True)
class SudoLogInfo:
    """The metadata of one sudo session (from ``log.json`` or the legacy ``log``)."""

    started_ns: int
    submituser: str
    runuser: str
    command: str
    cols: int
    rows: int
    submithost: str = ""
    ttyname: str = ""
    cwd: str = ""
    runargv: tuple[str, ...] = ()
    raw: Mapping[str, Any] | None = None


def _size(value: object, default: int) -> int:
    return value if isinstance(value, int) and 1 <= value <= 65535 else default


def parse_log_json(data: bytes) -> SudoLogInfo:
    """Parse ``log.json``. Raises :class:`ValidationError` naming what is missing."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"log.json is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _bad("log.json must be a JSON object")
    ts = doc.get("timestamp")
    if not isinstance(ts, dict) or not isinstance(ts.get("seconds"), int):
        raise _bad("log.json: timestamp.seconds is missing")
    nanos = ts.get("nanoseconds", 0)
    argv = doc.get("runargv")
    return SudoLogInfo(
        started_ns=ts["seconds"] * 1_000_000_000 + (nanos if isinstance(nanos, int) else 0),
        submituser=str(doc.get("submituser", "")),
        runuser=str(doc.get("runuser", "")),
        command=str(doc.get("command", "")),
        cols=_size(doc.get("columns"), 80),
        rows=_size(doc.get("lines"), 24),
        submithost=str(doc.get("submithost", "")),
        ttyname=str(doc.get("ttyname", "")),
        cwd=str(doc.get("submitcwd", "")),
        runargv=tuple(str(a) for a in argv) if isinstance(argv, list) else (),
        raw=doc,
    )


def parse_log(data: bytes) -> SudoLogInfo:
    """Parse the legacy ``log`` file (first line ``time:user:runas:group:tty[:lines:cols]``)."""
    lines = data.decode("utf-8", "replace").split("\n")
    head = lines[0].split(":")
    if len(head) < 5:
        raise _bad(f"log: first line has {len(head)} fields, expected at least 5")
    try:
        seconds, _, frac = head[0].partition(".")
        started_ns = int(seconds) * 1_000_000_000 + int((frac + "000000000")[:9] or 0)
    except ValueError as exc:
        raise _bad(f"log: time {head[0]!r} is not a number") from exc
    rows = cols = 0
    if len(head) >= 7:
        try:
            rows, cols = int(head[5]), int(head[6])
        except ValueError:
            rows = cols = 0
    return SudoLogInfo(
        started_ns=started_ns,
        submituser=head[1],
        runuser=head[2],
        command=lines[2] if len(lines) > 2 else "",
        cols=_size(cols, 80),
        rows=_size(rows, 24),
        ttyname=head[4],
        cwd=lines[1] if len(lines) > 1 else "",
    )


def _delay_ns(text: str) -> int:
    # sudo writes the delay with the locale's decimal point; accept '.' and ','.
    seconds, _, frac = text.replace(",", ".").partition(".")
    if not seconds.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(text)
    return int(seconds) * 1_000_000_000 + int((frac + "000000000")[:9])


def parse_timing_line(line: str) -> tuple[int, int, list[str]]:
    """``(event type, delay in ns, args)`` of one timing line.

    The pre-1.8 two-field form ``<delay> <bytes>`` is returned as a ttyout event (type 4).
    """
    parts = line.split()
    try:
        if len(parts) == 2:
            return 4, _delay_ns(parts[0]), [parts[1]]
        if len(parts) < 3:
            raise ValueError(line)
        return int(parts[0]), _delay_ns(parts[1]), parts[2:]
    except ValueError as exc:
        raise _bad(f"timing line {line!r} is not '<type> <delay> <args>'") from exc


def _read_exact(stream: ByteReader, n: int, name: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise _bad(f"{name} ends after {len(data)} of the {n} bytes the timing file promises")
    return data


def iter_frames(timing_lines: Iterable[str], streams: Mapping[str, ByteReader]) -> Iterator[Frame]:
    """Frames of a session from its timing lines and its open (decompressed) stream files.

    Pure over the given readers: reads each stream sequentially, exactly the byte counts the
    timing file names. Raises :class:`ValidationError` for a malformed line, an unknown event
    type, or a stream file that is missing or shorter than the timing file says.
    """
    total_ns = 0
    for n, line in enumerate(timing_lines, 1):
        if not line.strip():
            continue
        event, delay, args = parse_timing_line(line)
        total_ns += delay
        ms = total_ns // 1_000_000
        if event in _IO_EVENTS:
            name, stream_kind = _IO_EVENTS[event]
            reader = streams.get(name)
            if reader is None:
                raise _bad(f"timing line {n} reads {name}, but the directory has no {name} file")
            try:
                count = int(args[0])
            except ValueError as exc:
                raise _bad(f"timing line {n}: byte count {args[0]!r} is not a number") from exc
            yield Frame(ms, stream_kind, _read_exact(reader, count, name))
        elif event == IO_EVENT_WINSIZE:
            if len(args) < 2 or not (args[0].isdigit() and args[1].isdigit()):
                raise _bad(f"timing line {n}: window size needs 'rows cols'")
            rows, cols = int(args[0]), int(args[1])
            yield Frame(ms, Stream.RESIZE, f"{cols}x{rows}".encode())
        elif event == IO_EVENT_SUSPEND:
            yield Frame(ms, Stream.MARKER, f"suspend:{args[0]}".encode())
        else:
            raise _bad(f"timing line {n}: event type {event} is not known")


def _open_stream(stack: ExitStack, path: Path) -> ByteReader:
    fh: IO[bytes] = stack.enter_context(path.open("rb"))
    magic = fh.read(2)
    fh.seek(0)
    if magic == GZIP_MAGIC:
        return stack.enter_context(gzip.GzipFile(fileobj=fh, mode="rb"))
    return fh


def _read_info(directory: Path) -> tuple[SudoLogInfo, bytes]:
    for name, parse in (("log.json", parse_log_json), ("log", parse_log)):
        path = directory / name
        if path.is_file():
            data = path.read_bytes()
            return parse(data), data
    raise _bad(f"{directory} has neither log.json nor log: not a sudo I/O log directory")


def load(directory: str | Path, *, tenant: str) -> Recording:
    """Read a sudo I/O log directory (the I/O edge of this module)."""
    root = Path(directory)
    try:
        info, meta_bytes = _read_info(root)
        timing_bytes = (root / "timing").read_bytes()
        with ExitStack() as stack:
            streams = {
                name: _open_stream(stack, root / name)
                for name in STREAM_FILES
                if (root / name).is_file()
            }
            # sudo compresses the timing file too when compress_io is on (its default).
            plain = (
                gzip.decompress(timing_bytes) if timing_bytes[:2] == GZIP_MAGIC else timing_bytes
            )
            text = plain.decode("ascii", "replace").splitlines()
            frames = tuple(iter_frames(text, streams))
            # Read every stream to its end: gzip checks a stream's CRC and length only there,
            # so damaged bytes the timing file reached would otherwise import as if intact.
            for reader in streams.values():
                while reader.read(1 << 16):
                    pass
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise _bad(f"{root}: a compressed file is damaged: {exc}") from exc
    except OSError as exc:
        raise ValidationError("unreadable", f"cannot read sudo I/O log {root}: {exc}") from exc
    sid = import_session_id(tenant, "sudo", file_sha256([meta_bytes, b"\0", timing_bytes]))
    return _recording(sid, info, frames, tenant=tenant)


def _recording(sid: str, info: SudoLogInfo, frames: tuple[Frame, ...], *, tenant: str) -> Recording:
    started = rfc3339_from_ns(info.started_ns)
    end_ns = info.started_ns + (frames[-1].offset_ms * 1_000_000 if frames else 0)
    common: dict[str, Any] = {
        "sid": sid,
        "user": info.submituser,
        "login": info.runuser,
        "server_hostname": info.submithost,
        "proto": "sudo",
        "command": info.command,
    }
    if info.runargv:
        common["argv"] = list(info.runargv)
    start_event = {
        **common,
        "event": "session.start",
        "code": "T2000I",
        "ei": 0,
        "time": started,
        "uid": event_uid(sid, "sudo", "session.start"),
        "size": f"{info.cols}:{info.rows}",
        "sudo_iolog": dict(info.raw) if info.raw is not None else {"cwd": info.cwd},
    }
    end_event = {
        **common,
        "event": "session.end",
        "code": "T2004I",
        "ei": 1,
        "time": rfc3339_from_ns(end_ns),
        "uid": event_uid(sid, "sudo", "session.end"),
        "session_start": started,
        "session_stop": rfc3339_from_ns(end_ns),
    }
    return Recording(
        sid=sid,
        info=SessionInfo(
            started_at=started,
            cols=info.cols,
            rows=info.rows,
            kind="import",
            user=info.submituser,
            login=info.runuser,
            server_id=info.submithost,
            command=" ".join(info.runargv) or info.command,
            term="",
        ),
        frames=frames,
        events=(stamp_event(start_event, tenant=tenant), stamp_event(end_event, tenant=tenant)),
        source="sudo",
    )
