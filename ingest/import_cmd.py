"""Importing recordings and audit logs made by other tools into the pipeline.

Each imported recording becomes the same records a live session produces: hash-chained chunks
on ``settings.topic_chunks`` (keyed by sid) and audit events on ``settings.topic_events``; the
persist worker stores them. Nothing here writes to PostgreSQL directly.

Re-importing changes nothing downstream: importers give deterministic sids and event uids,
and :func:`recording_chunks` is a pure function of the recording (frames keep their own
``offset_ms``, never the clock's), so the same input yields byte-identical chunks, which are
idempotent on ``(sid, seq)``.

:func:`import_path` returns only after Kafka acknowledged every record (or raises
:class:`~sessionvault.errors.TransportError`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ingest.batching import ChunkBuilder, ChunkLimits
from ingest.importers import SESSION_FORMATS, Recording, load_recording
from schemas.codec import encode_chunk, encode_event, validate_event
from schemas.models import Chunk
from sessionvault.errors import SessionVaultError, ValidationError
from sessionvault.settings import Settings

if TYPE_CHECKING:  # the Kafka client loads in ~80 ms: not at every CLI start
    from ingest.kafka import Producer

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "ImportResult",
    "import_events",
    "import_path",
    "import_recording",
    "recording_chunks",
]

# CLI names -> importer names; ``teleport-json`` and ``kube-audit`` are events-only.
FORMATS = ("teleport", "teleport-json", "asciicast", "sudo", "tlog", "kube-audit")
_SESSION_FORMAT = {"teleport": "teleport", "asciicast": "asciicast", "sudo": "sudo", "tlog": "tlog"}
assert set(_SESSION_FORMAT.values()) <= set(SESSION_FORMATS)

Progress = Callable[[int], None]
"""Called with the number of payload bytes (or events) just acknowledged."""

# Wait for acknowledgements every this many records: bounds the producer's buffer for large
# recordings without a round trip per record.
_ACK_WINDOW = 256


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What one import produced: the session (None for events-only formats) and counts."""

    sid: str | None
    chunks: int
    events: int
    bytes: int
    source: str


def recording_chunks(rec: Recording, *, tenant: str, max_bytes: int) -> Iterator[Chunk]:
    """The hash-chained chunks of ``rec``: chunk 0 with its info, frames at their own offsets,
    a final chunk with the exit code. Pure and deterministic."""
    builder = ChunkBuilder(tenant, rec.sid, rec.info, ChunkLimits(max_bytes, 0), clock=lambda: 0.0)
    yield builder.open()
    for frame in rec.frames:
        # linger is irrelevant here (now is fixed): chunks are cut by size only.
        yield from builder.add(frame.stream, frame.data, now=0.0, offset_ms=frame.offset_ms)
    yield builder.finish(rec.exit_code)


class _Sender:
    """Sends records in order and waits for the broker's acknowledgements in windows."""

    def __init__(self, producer: Producer, progress: Progress | None) -> None:
        self.producer = producer
        self.progress = progress
        self._pending: list[tuple[str, bytes | None, bytes | None]] = []
        self._weight = 0

    def send(self, topic: str, key: bytes, value: bytes, weight: int) -> None:
        self._pending.append((topic, key, value))
        self._weight += weight
        if len(self._pending) >= _ACK_WINDOW:
            self.wait()

    def wait(self) -> None:
        """Send the window and wait for every acknowledgement (TransportError if not)."""
        pending, self._pending = self._pending, []
        weight, self._weight = self._weight, 0
        from ingest.kafka import send_confirmed

        send_confirmed(self.producer, pending, timeout_s=30, what="import: delivery")
        if self.progress is not None and weight:
            self.progress(weight)


def _event_key(ev: dict[str, Any]) -> bytes:
    return str(ev.get("sid") or ev["uid"]).encode()


def import_recording(
    settings: Settings,
    rec: Recording,
    producer: Producer,
    *,
    tenant: str | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Produce ``rec``'s chunks and events; return after every one is acknowledged.

    ``tenant`` (default ``settings.tenant``) must be the one ``rec`` was loaded for.
    ``progress`` receives payload bytes as their chunks are acknowledged.
    """
    sender = _Sender(producer, progress)
    key = rec.sid.encode()
    n_chunks = n_bytes = 0
    tenant = tenant or settings.tenant
    for chunk in recording_chunks(rec, tenant=tenant, max_bytes=settings.chunk_max_bytes):
        record = encode_chunk(chunk, version=settings.chunk_wire_version)
        sender.send(settings.topic_chunks, key, record, chunk.payload_len)
        n_chunks += 1
        n_bytes += chunk.payload_len
    for ev in rec.events:
        validate_event(ev)
        sender.send(settings.topic_events, _event_key(ev), encode_event(ev), 0)
    sender.wait()
    log.info(
        "imported session %s (%s): %d chunks, %d events",
        rec.sid,
        rec.source,
        n_chunks,
        len(rec.events),
    )
    return ImportResult(rec.sid, n_chunks, len(rec.events), n_bytes, rec.source)


def import_events(
    settings: Settings,
    events: Iterable[dict[str, Any]],
    producer: Producer,
    *,
    source: str,
    progress: Progress | None = None,
) -> ImportResult:
    """Produce audit events (validated first); return after every one is acknowledged.

    ``progress`` receives 1 per acknowledged event.
    """
    sender = _Sender(producer, progress)
    n = 0
    for ev in events:
        validate_event(ev)
        sender.send(settings.topic_events, _event_key(ev), encode_event(ev), 1)
        n += 1
    sender.wait()
    log.info("imported %d %s events", n, source)
    return ImportResult(None, 0, n, 0, source)


def _read_lines(path: str | Path, stdin: BinaryIO | None) -> list[bytes]:
    if str(path) == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        return stream.read().splitlines()
    try:
        return Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise ValidationError("unreadable", f"cannot read {path}: {exc}") from exc


def _default_producer(settings: Settings) -> Producer:
    from ingest.kafka import make_producer

    return make_producer(settings)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A parsed import input: one recording, or events only; ``size`` sizes a progress bar."""

    recording: Recording | None
    events: list[dict[str, Any]]
    size: int


def load_input(
    fmt: str,
    path: str | Path,
    *,
    tenant: str,
    kubernetes_cluster: str = "",
    started_at: str | None = None,
    stdin: BinaryIO | None = None,
) -> Loaded:
    """Parse ``path`` (``-``: stdin, for line formats) as ``fmt`` (one of :data:`FORMATS`).

    Every failure is a :class:`SessionVaultError` naming the file: the parsers raise
    ValidationError for what they check, and anything else hostile input provokes in them or
    in the libraries under them (OverflowError on a huge number, zlib.error on a damaged
    stream, ...) is translated here, once, into one clear ``unreadable`` error."""
    try:
        return _load_input(
            fmt,
            path,
            tenant=tenant,
            kubernetes_cluster=kubernetes_cluster,
            started_at=started_at,
            stdin=stdin,
        )
    except ValidationError as exc:
        if str(path) in str(exc):
            raise
        raise ValidationError(exc.reason, f"{path} is not a readable {fmt} input: {exc}") from exc
    except SessionVaultError:
        raise
    except (MemoryError, RecursionError) as exc:
        raise ValidationError("unreadable", f"{path}: too large or too deep to import") from exc
    except Exception as exc:
        raise ValidationError(
            "unreadable", f"{path} is not a readable {fmt} input: {type(exc).__name__}: {exc}"
        ) from exc


def _load_input(
    fmt: str,
    path: str | Path,
    *,
    tenant: str,
    kubernetes_cluster: str,
    started_at: str | None,
    stdin: BinaryIO | None,
) -> Loaded:
    if fmt in _SESSION_FORMAT:
        rec = load_recording(_SESSION_FORMAT[fmt], path, tenant=tenant, started_at=started_at)
        return Loaded(rec, [], rec.size())
    if fmt == "teleport-json":
        from ingest.importers.teleport_json import iter_events

        events = list(iter_events(_read_lines(path, stdin), tenant=tenant))
        return Loaded(None, events, len(events))
    if fmt == "kube-audit":
        from ingest.kube_audit import events_from_log_lines

        if not kubernetes_cluster:
            raise ValidationError("missing_field", "kube-audit import needs the cluster name")
        events = events_from_log_lines(
            _read_lines(path, stdin), tenant=tenant, kubernetes_cluster=kubernetes_cluster
        )
        return Loaded(None, events, len(events))
    raise ValidationError(
        "unknown_format", f"import format {fmt!r} is not one of {', '.join(FORMATS)}"
    )


def import_path(
    settings: Settings,
    fmt: str,
    path: str | Path,
    *,
    tenant: str | None = None,
    kubernetes_cluster: str = "",
    started_at: str | None = None,
    producer_factory: Callable[[Settings], Producer] = _default_producer,
    progress: Progress | None = None,
    on_loaded: Callable[[Loaded], None] | None = None,
    stdin: BinaryIO | None = None,
) -> ImportResult:
    """Import one file (or sudo directory) into Kafka; see :func:`load_input` for ``fmt``.

    ``on_loaded`` is called once the input is parsed (to size a progress bar).
    """
    loaded = load_input(
        fmt,
        path,
        tenant=tenant or settings.tenant,
        kubernetes_cluster=kubernetes_cluster,
        started_at=started_at,
        stdin=stdin,
    )
    if on_loaded is not None:
        on_loaded(loaded)
    producer = producer_factory(settings)
    try:
        if loaded.recording is not None:
            return import_recording(
                settings, loaded.recording, producer, tenant=tenant, progress=progress
            )
        return import_events(settings, loaded.events, producer, source=fmt, progress=progress)
    finally:
        try:
            producer.close(timeout=5)
        except Exception as exc:  # closing must not hide the import's own outcome
            log.debug("closing the import producer: %s", exc)
