"""The producer SDK's stable import path, for proxies and nodes that record into sessionvault.

``from sessionvault.sdk import SessionRecorder, AuditEmitter, SessionInfo, load_settings``:
names under ``sessionvault.`` are the supported interface (the implementation lives in
:mod:`ingest.sdk` and may move; see docs/architecture.md, "Install layout"). Nothing here
configures logging or talks to a server before it is used.
"""

from __future__ import annotations

from ingest.sdk import (
    AuditEmitter,
    DrainReport,
    SessionRecorder,
    Transport,
    TransportStats,
    drain_spool,
    new_session_id,
    utc_now_rfc3339,
)
from schemas.models import SessionInfo, Stream
from sessionvault.errors import (
    ConfigError,
    SessionVaultError,
    SpoolError,
    TransportError,
    ValidationError,
)
from sessionvault.settings import Settings, load_settings

__all__ = [
    "AuditEmitter",
    "ConfigError",
    "DrainReport",
    "SessionInfo",
    "SessionRecorder",
    "SessionVaultError",
    "Settings",
    "SpoolError",
    "Stream",
    "Transport",
    "TransportError",
    "TransportStats",
    "ValidationError",
    "drain_spool",
    "load_settings",
    "new_session_id",
    "utc_now_rfc3339",
]
