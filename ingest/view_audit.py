"""Audit of recording access: every replay or export of a stored session is itself an event.

The event follows Teleport's own "a recording was accessed" event (``session.recording.access``)
so tools that already know Teleport's audit log recognise it; its code is sessionvault's own
(``SV1001I``) because the fields below are ours, not Teleport's exact set:

=====================  =================================================================
``event``              ``session.recording.access``
``code``               ``SV1001I``
``time`` / ``uid``     when it happened (UTC, RFC 3339) / a fresh uuid4
``tenant``             the tenant the session belongs to (the viewer's tenant: reads are
                       tenant-scoped, so they are always the same)
``user``               who viewed: the OS user for the CLI, ``token:<id>`` for the API
``sid``                the session viewed
``session_type``       ``ssh`` or ``kube`` (the session's kind)
``session_user``       whose session it was
``format``             ``play`` for the real-time player, else the export format
``start_at_ms``        where playback/export started (0: the beginning)
``access_via``         ``cli``, ``api``, or ``share`` (a share link, no account)
``token_id``           API only: the token's public id (never the token)
``token_description``  API only: the operator's note on the token, when it has one
``addr.remote``        API only: the client address as the server saw it
=====================  =================================================================

Emission goes through :class:`~ingest.sdk.AuditEmitter`, i.e. Kafka -> persist worker ->
``events``, exactly like any other audit event. It never blocks or fails the viewer: when Kafka
is unreachable the SDK spools the event to disk (drained later by the same process or by
``sessionvault spool drain``), and any other failure is logged and swallowed.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sessionvault.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "VIEW_CODE",
    "VIEW_EVENT",
    "ViewAuditor",
    "cli_view_audit",
    "cli_viewer",
    "view_event",
]

VIEW_EVENT = "session.recording.access"
VIEW_CODE = "SV1001I"


def view_event(
    *,
    tenant: str,
    sid: str,
    viewer: str,
    access_via: str,
    fmt: str,
    session_type: str = "",
    session_user: str = "",
    start_at_ms: int = 0,
    token_id: str | None = None,
    token_description: str = "",
    remote_addr: str | None = None,
) -> dict[str, Any]:
    """The fields of one recording-access event (``uid`` and ``time`` are filled on emit)."""
    fields: dict[str, Any] = {
        "event": VIEW_EVENT,
        "code": VIEW_CODE,
        "tenant": tenant,
        "user": viewer,
        "sid": sid,
        "session_type": session_type,
        "session_user": session_user,
        "format": fmt,
        "start_at_ms": max(0, int(start_at_ms)),
        "access_via": access_via,
    }
    if token_id is not None:
        fields["token_id"] = token_id
        if token_description:
            fields["token_description"] = token_description
    if remote_addr:
        fields["addr.remote"] = remote_addr
    return fields


def _default_emitter(settings: Settings) -> Any:
    from ingest.sdk import AuditEmitter

    return AuditEmitter(settings)


EmitterFactory = Callable[[Settings], Any]


class ViewAuditor:
    """Records recording-access events; one lazily created :class:`AuditEmitter` per auditor.

    Thread-safe. :meth:`record` never raises: the viewer must never be stopped by the audit
    trail's transport (the SDK spools when Kafka is down; anything else is logged).
    """

    def __init__(
        self, settings: Settings, *, emitter_factory: EmitterFactory = _default_emitter
    ) -> None:
        self._settings = settings
        self._factory = emitter_factory
        self._emitter: Any = None
        self._lock = threading.Lock()
        self.recorded = 0
        self.failed = 0

    def record(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Queue one event (see :func:`view_event`); the emitted fields, or None on failure."""
        try:
            with self._lock:
                if self._emitter is None:
                    self._emitter = self._factory(self._settings)
                emitter = self._emitter
            emitted: dict[str, Any] = emitter.emit(fields)
        except Exception as exc:  # never let the audit trail break a replay
            self.failed += 1
            log.error(
                "recording access NOT audited (tenant %s, sid %s, viewer %s): %s: %s",
                fields.get("tenant"),
                fields.get("sid"),
                fields.get("user"),
                type(exc).__name__,
                exc,
            )
            return None
        self.recorded += 1
        log.debug("recording access audited: sid %s uid %s", emitted.get("sid"), emitted["uid"])
        return emitted

    def close(self, timeout_s: float = 5.0) -> bool:
        """Deliver what was queued for up to ``timeout_s``; the rest stays in the spool.

        True when everything reached Kafka (or nothing was ever recorded).
        """
        with self._lock:
            emitter, self._emitter = self._emitter, None
        if emitter is None:
            return True
        try:
            delivered = bool(emitter.close(timeout_s))
        except Exception as exc:
            log.error("closing the audit emitter: %s: %s", type(exc).__name__, exc)
            return False
        if not delivered:
            log.warning(
                "recording-access events not yet delivered to Kafka; kept in the spool %s",
                self._settings.resolved_spool_dir,
            )
        return delivered


def cli_viewer() -> str:
    """The OS user running the CLI (the uid when it has no name, as in some containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@contextlib.contextmanager
def cli_view_audit(
    settings: Settings,
    fields: dict[str, Any],
    *,
    close_timeout_s: float = 3.0,
    emitter_factory: EmitterFactory = _default_emitter,
) -> Iterator[dict[str, Any] | None]:
    """Record one access event for a CLI replay/export around the viewing itself.

    The event is queued on entry (the viewer does not wait for Kafka) and delivered in the
    background while the viewer runs; on exit delivery is awaited for at most
    ``close_timeout_s``, after which an undelivered event stays in the spool.
    """
    auditor = ViewAuditor(settings, emitter_factory=emitter_factory)
    try:
        yield auditor.record(fields)
    finally:
        auditor.close(close_timeout_s)
