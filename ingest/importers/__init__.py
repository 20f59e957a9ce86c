"""Importers: recordings made by other tools -> :class:`Recording` (session info, frames,
events), pure decoders with no Kafka or database I/O.

Formats: ``teleport`` (ProtoStreamV1 recording), ``teleport-json`` (audit event export, events
only), ``sudo`` (sudo I/O log directory), ``tlog`` (tlog JSON messages), ``asciicast`` (v2/v3).
"""

from ingest.importers.base import (
    IMPORT_NAMESPACE,
    Recording,
    event_uid,
    file_sha256,
    import_session_id,
    rfc3339_from_ns,
    stamp_event,
)

__all__ = [
    "IMPORT_NAMESPACE",
    "Recording",
    "event_uid",
    "file_sha256",
    "import_session_id",
    "rfc3339_from_ns",
    "stamp_event",
]
