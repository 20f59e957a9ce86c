"""asciicast v1/v2/v3 recordings -> :class:`Recording`.

Parsing is :func:`replay.asciicast.read_cast` (one reader for the project; imported, not
copied). This module adds what an import needs: a deterministic session id (UUIDv5 of the
tenant and the file's SHA-256), the wall-clock start (the header ``timestamp``, or
``started_at`` when the file has none), the exit code of a v3 ``x`` event, and
session.start/session.end audit events.

asciicast stores text, not bytes: an imported session's bytes are the UTF-8 encoding of the
event text (what ``asciinema cat`` would print), the best any asciicast reader can do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from ingest.importers.base import (
    Recording,
    event_uid,
    file_sha256,
    import_session_id,
    rfc3339_from_ns,
    stamp_event,
)
from ingest.kube_exec import exit_code_from_status
from replay.asciicast import CastHeader, read_cast
from schemas.models import Frame, SessionInfo, Stream
from sessionvault.errors import ValidationError

__all__ = ["CastFrames", "decode_cast", "load"]


def _start_ns(timestamp: int | None, started_at: str | None) -> int:
    if started_at is not None:
        try:
            dt = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValidationError(
                "bad_asciicast", f"started_at {started_at!r} is not RFC 3339"
            ) from exc
        if dt.tzinfo is None:
            raise ValidationError("bad_asciicast", f"started_at {started_at!r} has no time zone")
        return (int(dt.timestamp()) * 1_000_000 + dt.microsecond) * 1000
    if timestamp is None:
        raise ValidationError(
            "bad_asciicast", "the asciicast header has no timestamp: pass started_at"
        )
    return timestamp * 1_000_000_000


def decode_cast(lines: Iterable[bytes], *, tenant: str, started_at: str | None = None) -> Recording:
    """Decode an asciicast file given as its lines (bytes, as read from the file), in memory.

    ``started_at`` (RFC 3339) overrides or supplies the header's ``timestamp``.
    """
    data = list(lines)
    header, frame_iter = read_cast(data)
    frames = tuple(frame_iter)
    exit_code = None
    for frame in frames:
        if frame.stream is Stream.ERROR:
            exit_code = exit_code_from_status(frame.data)
    last_ms = frames[-1].offset_ms if frames else 0
    return _recording(
        header, file_sha256(data), frames, last_ms, exit_code, tenant=tenant, started_at=started_at
    )


def _recording(
    header: CastHeader,
    digest: str,
    frames: Iterable[Frame],
    last_ms: int,
    exit_code: int | None,
    *,
    tenant: str,
    started_at: str | None,
    payload_bytes: int | None = None,
) -> Recording:
    sid = import_session_id(tenant, "asciicast", digest)
    start_ns = _start_ns(header.timestamp, started_at)
    started = rfc3339_from_ns(start_ns)
    end = rfc3339_from_ns(start_ns + last_ms * 1_000_000)
    common: dict[str, Any] = {"sid": sid, "proto": "asciicast", "command": header.command}
    if header.title:
        common["title"] = header.title
    start_event = {
        **common,
        "event": "session.start",
        "code": "T2000I",
        "ei": 0,
        "time": started,
        "uid": event_uid(sid, "asciicast", "session.start"),
        "size": f"{header.cols}:{header.rows}",
    }
    end_event = {
        **common,
        "event": "session.end",
        "code": "T2004I",
        "ei": 1,
        "time": end,
        "uid": event_uid(sid, "asciicast", "session.end"),
        "session_start": started,
        "session_stop": end,
    }
    if exit_code is not None:
        end_event["exit_code"] = exit_code
    return Recording(
        sid=sid,
        info=SessionInfo(
            started_at=started,
            cols=header.cols,
            rows=header.rows,
            kind="import",
            command=header.command,
            term=header.term,
        ),
        frames=frames,
        events=(stamp_event(start_event, tenant=tenant), stamp_event(end_event, tenant=tenant)),
        exit_code=exit_code,
        source="asciicast",
        payload_bytes=payload_bytes,
    )


def _hashing(lines: Iterable[bytes], h: Any) -> Iterator[bytes]:
    for line in lines:
        h.update(line)
        yield line


class CastFrames:
    """The frames of a cast file, parsed again from disk each time they are iterated, so an
    import holds one line at a time whatever the file's size. Iterating fails (before the
    session's final chunk is sent) when the file is no longer the one that was scanned."""

    def __init__(self, path: Path, digest: str) -> None:
        self.path = path
        self.digest = digest

    def __iter__(self) -> Iterator[Frame]:
        h = hashlib.sha256()
        try:
            with self.path.open("rb") as fh:
                _, frames = read_cast(_hashing(fh, h))
                yield from frames
                for _ in _hashing(fh, h):  # lines after the last event (blank, comments)
                    pass
        except OSError as exc:
            raise ValidationError("unreadable", f"cannot read {self.path}: {exc}") from exc
        if h.hexdigest() != self.digest:
            raise ValidationError("unreadable", f"{self.path} changed while it was being imported")


def load(path: str | Path, *, tenant: str, started_at: str | None = None) -> Recording:
    """Scan an asciicast file once (checking every line, hashing it, finding its length and
    exit code, one line in memory at a time) and return a recording whose frames are read
    from the file again when sent (the I/O edge of this module).

    A v1 file has no start time of its own: the file's modification time is used unless
    ``started_at`` is given."""
    p = Path(path)
    h = hashlib.sha256()
    last_ms, nbytes, exit_code = 0, 0, None
    try:
        with p.open("rb") as fh:
            header, frames = read_cast(_hashing(fh, h))
            for frame in frames:
                last_ms = frame.offset_ms
                nbytes += len(frame.data)
                if frame.stream is Stream.ERROR:
                    exit_code = exit_code_from_status(frame.data)
            for _ in _hashing(fh, h):
                pass
        mtime_ns = p.stat().st_mtime_ns
    except OSError as exc:
        raise ValidationError("unreadable", f"cannot read {path}: {exc}") from exc
    if header.version == 1 and started_at is None and header.timestamp is None:
        started_at = rfc3339_from_ns(mtime_ns)
    digest = h.hexdigest()
    return _recording(
        header,
        digest,
        CastFrames(p, digest),
        last_ms,
        exit_code,
        tenant=tenant,
        started_at=started_at,
        payload_bytes=nbytes,
    )
