"""What every importer produces, and the deterministic ids that make re-imports no-ops.

An importer turns one recording file (or directory) into a :class:`Recording`: the session
metadata chunk 0 will carry, the frames in time order, and the searchable audit events. It
does no Kafka or database I/O; the ``sessionvault import`` command feeds its output to the SDK.

Ids are deterministic: importing the same input twice yields the same session id, the same
event uids and the same frames, so everything downstream (idempotent on ``(sid, seq)`` and
``uid``) is unchanged by a re-import.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.models import EVENT_VERSION, Frame, SessionInfo

__all__ = [
    "IMPORT_NAMESPACE",
    "Recording",
    "event_uid",
    "file_sha256",
    "import_session_id",
    "rfc3339_from_ns",
    "stamp_event",
]

# Fixed forever: changing it would give every re-imported recording a new identity.
IMPORT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://sessionvault.dev/ns/import")


@dataclass(frozen=True, slots=True)
class Recording:
    """One imported session.

    ``frames`` are in non-decreasing ``offset_ms`` order: a tuple, or (a streaming importer) an
    iterable that reads them again each time, with ``payload_bytes`` giving their size;
    ``events`` are complete event-v1 dicts (``sv_version``, ``tenant``, ``uid``, ``time``,
    ...), unknown fields of the source kept. ``source`` names the format (``teleport``,
    ``sudo``, ``tlog``, ``asciicast``).
    """

    sid: str
    info: SessionInfo
    frames: Iterable[Frame]
    events: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    exit_code: int | None = None
    source: str = ""
    payload_bytes: int | None = None

    @property
    def duration_ms(self) -> int:
        """Offset of the last frame (0 without frames; a streamed recording is read for it)."""
        if isinstance(self.frames, Sequence):
            return self.frames[-1].offset_ms if self.frames else 0
        return max((f.offset_ms for f in self.frames), default=0)

    def size(self) -> int:
        """Payload bytes of all frames (for a progress bar)."""
        if self.payload_bytes is not None:
            return self.payload_bytes
        return sum(len(f.data) for f in self.frames)


def import_session_id(tenant: str, source: str, identity: str) -> str:
    """UUIDv5 of (tenant, source format, source identity).

    ``identity`` is whatever names the recording for good: a content hash of the input, or
    the recording's own id (tlog's host + rec). The tenant is part of it so that two tenants
    importing the same file get two sessions.
    """
    return str(uuid.uuid5(IMPORT_NAMESPACE, f"{tenant}\x00{source}\x00{identity}"))


def event_uid(sid: str, *parts: object) -> str:
    """A deterministic event uid within an imported session (UUIDv5 of sid and ``parts``)."""
    text = "\x00".join([sid, *(str(p) for p in parts)])
    return str(uuid.uuid5(IMPORT_NAMESPACE, text))


def file_sha256(chunks: Iterable[bytes]) -> str:
    """Hex SHA-256 over byte chunks (a file read in blocks, or several files in order)."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def rfc3339_from_ns(ns: int) -> str:
    """RFC 3339 UTC text of a Unix time in nanoseconds, fraction trimmed (``...:26.676Z``)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += f".{frac:09d}".rstrip("0")
    return text + "Z"


def stamp_event(fields: dict[str, Any], *, tenant: str) -> dict[str, Any]:
    """``fields`` with the sessionvault envelope (``sv_version``, ``tenant``) added."""
    return {**fields, "sv_version": EVENT_VERSION, "tenant": tenant}
