"""Importers: recordings made by other tools -> :class:`Recording` (session info, frames,
events), pure decoders with no Kafka or database I/O.

Session formats (:data:`SESSION_FORMATS`, via :func:`load_recording`): ``teleport``
(ProtoStreamV1 recording), ``sudo`` (sudo I/O log directory), ``tlog`` (tlog JSON messages),
``asciicast`` (v2/v3). Events-only format: ``teleport-json`` (audit event export), via
:func:`ingest.importers.teleport_json.load`.
"""

from __future__ import annotations

from pathlib import Path

from ingest.importers.base import (
    IMPORT_NAMESPACE,
    Recording,
    event_uid,
    file_sha256,
    import_session_id,
    rfc3339_from_ns,
    stamp_event,
)
from sessionvault.errors import ValidationError

__all__ = [
    "IMPORT_NAMESPACE",
    "SESSION_FORMATS",
    "Recording",
    "event_uid",
    "file_sha256",
    "import_session_id",
    "load_recording",
    "rfc3339_from_ns",
    "stamp_event",
]

SESSION_FORMATS = ("teleport", "sudo", "tlog", "asciicast")


def load_recording(
    fmt: str,
    path: str | Path,
    *,
    tenant: str,
    started_at: str | None = None,
    rec: str | None = None,
) -> Recording:
    """Import ``path`` as format ``fmt`` (one of :data:`SESSION_FORMATS`).

    ``started_at`` supplies the wall-clock start for tlog and asciicast inputs that lack it;
    ``rec`` picks one recording of a tlog input holding several. Raises
    :class:`ValidationError` for an unknown format or a bad input.
    """
    # Imported here so that importing the package does not import every decoder.
    if fmt == "teleport":
        from ingest.importers import teleport

        return teleport.load(path, tenant=tenant)
    if fmt == "sudo":
        from ingest.importers import sudo_io

        return sudo_io.load(path, tenant=tenant)
    if fmt == "tlog":
        from ingest.importers import tlog

        return tlog.load(path, tenant=tenant, rec=rec, started_at=started_at)
    if fmt == "asciicast":
        from ingest.importers import asciicast

        return asciicast.load(path, tenant=tenant, started_at=started_at)
    raise ValidationError(
        "unknown_format", f"import format {fmt!r} is not one of {', '.join(SESSION_FORMATS)}"
    )
