"""Producer SDK for proxies and nodes: :class:`SessionRecorder` and :class:`AuditEmitter`.

The caller never blocks on Kafka. Every record goes through a :class:`Transport`:

* ``submit`` appends to an in-memory queue (bounded by ``queue_max_bytes``) and returns.
* One sender thread takes batches from the queue, sends them and confirms every future.
* When Kafka fails (a send or a future raises) or the queue bound is hit, the transport
  switches to *spool mode*: everything not yet confirmed, and everything submitted later, goes
  to the on-disk spool (:mod:`ingest.spool`), in submission order. Because *all* records go to
  the spool once it is in use, a session's later records can never overtake earlier spooled
  ones.
* In spool mode the sender retries every ``retry_interval_s``: it re-sends the spool segment by
  segment, oldest first, deletes a segment only after every record in it is confirmed
  (``future.get``), and switches back to direct sending once the spool is empty.

Duplicates: a record is re-sent only when its delivery was not confirmed (a batch cut short by
a broker failure, a crash before a spool segment was deleted). Such a redelivery is harmless
because storage is idempotent on ``(sid, seq)`` and ``uid``. Loss: none while the process
lives; see :mod:`ingest.spool` for the fsync window on a machine crash. Records still in the
in-memory queue when the process is killed with SIGKILL are lost: call :meth:`Transport.close`
(the recorder does, at session end).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.batching import ChunkBuilder, ChunkLimits, Clock
from ingest.kafka import Producer, confirmed_prefix, send_confirmed
from ingest.spool import (
    Spool,
    SpoolRecord,
    claim_abandoned,
    list_segments,
    owner_dirs,
    read_segment,
)
from schemas.codec import encode_chunk, encode_event, validate_event
from schemas.models import EVENT_VERSION, Chunk, SessionInfo, Stream
from sessionvault.errors import SessionVaultError, SpoolError, TransportError
from sessionvault.settings import Settings

log = logging.getLogger(__name__)


ProducerFactory = Callable[[Settings], Producer]


def _default_producer(settings: Settings) -> Producer:
    from ingest.kafka import make_producer

    return make_producer(settings)  # type: ignore[no-any-return]


def utc_now_rfc3339() -> str:
    """Current UTC time, RFC 3339 with milliseconds and ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_session_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class TransportStats:
    mode: str
    queued_records: int
    spooled_bytes: int
    sent_records: int
    spooled_records: int
    lost_records: int


class Transport:
    """Ordered, non-blocking, spool-backed delivery of records to Kafka (one sender thread).

    Thread-safe. ``submit`` never waits for Kafka. Records submitted by one thread are
    delivered in submission order (per partition; the batch order is the submit order).
    """

    DIRECT = "direct"
    SPOOL = "spool"

    def __init__(
        self,
        settings: Settings,
        *,
        producer_factory: ProducerFactory = _default_producer,
        spool: Spool | None = None,
        queue_max_bytes: int = 8 * 1024 * 1024,
        batch_max_records: int = 1000,
        batch_max_bytes: int = 4 * 1024 * 1024,
        retry_interval_s: float = 1.0,
        confirm_timeout_s: float = 15.0,
    ) -> None:
        self.settings = settings
        self._producer_factory = producer_factory
        self.spool = spool or Spool(settings.resolved_spool_dir, max_bytes=settings.spool_max_bytes)
        self.queue_max_bytes = queue_max_bytes
        self.batch_max_records = batch_max_records
        self.batch_max_bytes = batch_max_bytes
        self.retry_interval_s = retry_interval_s
        self.confirm_timeout_s = confirm_timeout_s

        self._cond = threading.Condition()
        self._queue: deque[SpoolRecord] = deque()
        self._queued_bytes = 0
        self._inflight = 0
        self._lsn = 0
        self._mode = self.DIRECT
        self._stopping = False
        self._closed = False
        self._producer: Producer | None = None
        self._producer_lock = threading.Lock()
        self._progress: dict[str, int] = {}
        self._next_retry = 0.0
        self._sent = 0
        self._spooled = 0
        self._lost = 0
        self._tickers: weakref.WeakSet[SessionRecorder] = weakref.WeakSet()
        self._thread = threading.Thread(target=self._run, name="sv-sender", daemon=True)
        self._ticker = threading.Thread(target=self._tick_loop, name="sv-linger", daemon=True)
        self._thread.start()
        self._ticker.start()

    # -- caller side ------------------------------------------------------------------------
    def submit(self, topic: str, key: bytes, value: bytes) -> None:
        """Queue one record for delivery; never blocks on Kafka (may append to the spool)."""
        with self._cond:
            if self._closed:
                raise SessionVaultError("transport is closed")
            rec = SpoolRecord(self._lsn, topic, key, value)
            self._lsn += 1
            if self._mode == self.SPOOL:
                self._spool_locked([rec])
                return
            if self._queued_bytes + rec.size > self.queue_max_bytes and self._queue:
                log.warning(
                    "send queue over %d bytes (Kafka slow or down): spooling to %s",
                    self.queue_max_bytes,
                    self.spool.dir,
                )
                self._enter_spool_mode_locked()
                self._spool_locked([rec])
                return
            self._queue.append(rec)
            self._queued_bytes += rec.size
            self._cond.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything submitted so far is confirmed by Kafka (True) or timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._next_retry = 0.0
            self._cond.notify_all()
            while not self._delivered_locked():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def close(self, timeout_s: float = 5.0) -> bool:
        """Flush for up to ``timeout_s``; spool whatever is left; stop the threads.

        Returns True when everything was delivered, False when some records stay in the spool
        (to be sent by ``sessionvault spool drain`` or the next run).
        """
        with self._cond:
            if self._closed:
                return self._delivered_locked()
        delivered = self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._stopping = True
            if self._queue:
                self._enter_spool_mode_locked()
            self._cond.notify_all()
        if not delivered:
            # Abort an in-flight batch stuck on a dead broker: its records are put back in the
            # spool by the sender thread (possibly re-sent later: harmless, idempotent keys).
            self._abort_producer()
        self._thread.join(timeout=self.confirm_timeout_s + 5)
        self._ticker.join(timeout=2)
        with self._cond:
            ok = self._delivered_locked()
            try:
                self.spool.close()
            except SpoolError as exc:
                log.error("closing spool %s: %s", self.spool.dir, exc)
        self._abort_producer(graceful=True)
        return ok

    def stats(self) -> TransportStats:
        with self._cond:
            return TransportStats(
                self._mode,
                len(self._queue),
                self.spool.size_bytes,
                self._sent,
                self._spooled,
                self._lost,
            )

    @property
    def mode(self) -> str:
        return self._mode

    def register_ticker(self, recorder: SessionRecorder) -> None:
        self._tickers.add(recorder)

    def unregister_ticker(self, recorder: SessionRecorder) -> None:
        self._tickers.discard(recorder)

    # -- internals (hold self._cond) ---------------------------------------------------------
    def _delivered_locked(self) -> bool:
        return (
            not self._queue
            and self._inflight == 0
            and self._mode == self.DIRECT
            and not list_segments(self.spool.dir)
        )

    def _enter_spool_mode_locked(self) -> None:
        if self._mode != self.SPOOL:
            self._mode = self.SPOOL
            self._next_retry = time.monotonic()
        if self._queue:
            queued = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            self._spool_locked(queued)

    def _spool_locked(self, records: list[SpoolRecord]) -> None:
        try:
            self.spool.append(records)
            self._spooled += len(records)
        except SpoolError as exc:
            # Disk full or unwritable and Kafka unavailable: nowhere left to put them. Never
            # break the caller's session for it; say loudly what was lost.
            self._lost += len(records)
            log.error("%d records lost: %s", len(records), exc)

    # -- sender thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._mode == self.SPOOL:
                        if self._stopping:
                            return
                        wait = self._next_retry - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(min(wait, 0.5))
                        continue
                    if self._queue:
                        break
                    if self._stopping:
                        return
                    self._cond.wait(0.5)
                if self._mode == self.SPOOL:
                    batch: list[SpoolRecord] | None = None
                else:
                    batch = self._take_batch_locked()
            if batch is None:
                self._drain_own_spool()
            else:
                self._send_direct(batch)

    def _take_batch_locked(self) -> list[SpoolRecord]:
        batch: list[SpoolRecord] = []
        size = 0
        while self._queue and len(batch) < self.batch_max_records and size < self.batch_max_bytes:
            rec = self._queue.popleft()
            batch.append(rec)
            size += rec.size
        self._queued_bytes -= size
        self._inflight = len(batch)
        return batch

    def _send_direct(self, batch: list[SpoolRecord]) -> None:
        confirmed, error = self._send_and_confirm(batch)
        with self._cond:
            self._sent += confirmed
            self._inflight = 0
            if error is not None:
                log.warning(
                    "Kafka delivery failed (%s); spooling to %s until it is back",
                    error,
                    self.spool.dir,
                )
                rest = batch[confirmed:]
                # The earlier, unconfirmed records go into the spool first, then the queue.
                self._mode = self.SPOOL
                self._next_retry = time.monotonic() + self.retry_interval_s
                self._spool_locked(rest)
                self._enter_spool_mode_locked()
            self._cond.notify_all()

    def _drain_own_spool(self) -> None:
        """Re-send the spool in order; switch back to direct sending when it is empty."""
        while True:
            with self._cond:
                try:
                    segments = self.spool.sealed_segments()
                except SpoolError as exc:
                    log.error("spool unreadable: %s", exc)
                    segments = []
                if not segments:
                    self._mode = self.DIRECT
                    log.info("spool drained; sending directly again")
                    self._cond.notify_all()
                    return
            for seg in segments:
                if not self._send_segment(seg):
                    with self._cond:
                        self._next_retry = time.monotonic() + self.retry_interval_s
                        self._cond.notify_all()
                    return
                with self._cond:
                    self.spool.delete_segment(seg)
                    self._cond.notify_all()

    def _send_segment(self, seg: Path) -> bool:
        try:
            records = read_segment(seg)
        except SpoolError as exc:
            log.error("%s", exc)
            return False
        done = self._progress.get(seg.name, 0)
        while done < len(records):
            part = records[done : done + self.batch_max_records]
            confirmed, error = self._send_and_confirm(part)
            done += confirmed
            with self._cond:
                self._sent += confirmed
            if error is not None:
                self._progress[seg.name] = done
                log.info("spool drain paused at %s record %d: %s", seg.name, done, error)
                return False
        self._progress.pop(seg.name, None)
        return True

    def _get_producer(self) -> Producer:
        with self._producer_lock:
            if self._producer is None:
                self._producer = self._producer_factory(self.settings)
            return self._producer

    def _abort_producer(self, *, graceful: bool = False) -> None:
        with self._producer_lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=1 if graceful else 0)

    def _send_and_confirm(self, records: list[SpoolRecord]) -> tuple[int, Exception | None]:
        """Send records in order; return (length of the confirmed prefix, first error)."""
        futures: list[Any] = []
        send_error: Exception | None = None
        producer: Producer | None = None
        try:
            producer = self._get_producer()
            for rec in records:
                futures.append(producer.send(rec.topic, value=rec.value, key=rec.key or None))
        except Exception as exc:  # kafka-python raises many types; all mean "not delivered"
            send_error = exc
        confirmed, error = confirmed_prefix(
            producer, futures, timeout_s=self.confirm_timeout_s, failed=send_error
        )
        if error is not None or confirmed < len(records):
            error = error or TransportError("delivery not confirmed")
            # A fresh producer after a failure: a restarted broker may not know the old
            # producer id, and pending batches must not linger into the next attempt.
            self._abort_producer()
        return confirmed, error

    def _tick_loop(self) -> None:
        interval = max(0.005, min(0.05, self.settings.chunk_linger_ms / 2000))
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._cond.wait(interval)
                if self._stopping:
                    return
            for rec in list(self._tickers):
                try:
                    rec.tick()
                except Exception:
                    log.exception("linger tick failed for session %s", rec.sid)


class SessionRecorder:
    """Records one terminal session as hash-chained chunks on ``settings.topic_chunks``.

    Chunk 0 (opening the session, with ``info``) is submitted by the constructor. Every method
    returns at once: Kafka trouble is absorbed by the transport's spool. ``close`` submits the
    final chunk with the exit code. Thread-safe.
    """

    def __init__(
        self,
        settings: Settings,
        info: SessionInfo,
        *,
        sid: str | None = None,
        transport: Transport | None = None,
        record_input: bool = True,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.sid = sid or new_session_id()
        self.record_input = record_input
        self._own_transport = transport is None
        self.transport = transport or Transport(settings)
        self._key = self.sid.encode()
        self._lock = threading.Lock()
        # Exit code reported on a kubectl exec error channel (record_channel), if any.
        self._kube_exit_code: int | None = None
        self._builder = ChunkBuilder(
            settings.tenant,
            self.sid,
            info,
            ChunkLimits(settings.chunk_max_bytes, settings.chunk_linger_ms),
            clock=clock,
        )
        with self._lock:
            self._ship([self._builder.open()])
        self.transport.register_ticker(self)

    @property
    def closed(self) -> bool:
        return self._builder.closed

    def offset_ms(self) -> int:
        """Milliseconds since this session started (the frames' time base)."""
        return self._builder.offset_ms()

    def output(self, data: bytes) -> None:
        self._add(Stream.OUTPUT, data)

    def input(self, data: bytes) -> None:
        if self.record_input:
            self._add(Stream.INPUT, data)

    def resize(self, cols: int, rows: int) -> None:
        self._add(Stream.RESIZE, f"{cols}x{rows}".encode())

    def marker(self, label: str) -> None:
        self._add(Stream.MARKER, label.encode())

    def write(self, stream: Stream, data: bytes, *, offset_ms: int | None = None) -> None:
        """Record a frame on any stream (kubectl exec: stdout/stderr/error).

        ``offset_ms`` overrides the clock (non-decreasing), for callers that carry their own
        timings.
        """
        self._add(stream, data, offset_ms=offset_ms)

    def record_channel(self, channel: int, payload: bytes) -> None:
        """Record one Kubernetes exec/attach stream-protocol payload (``v4``/``v5.channel.k8s.io``).

        stdin 0 -> ``i`` (subject to ``record_input``), stdout 1 -> ``o``, stderr 2 -> ``e``,
        error 3 -> ``x`` (the Status JSON kept byte for byte; its exit code becomes the default
        of :meth:`close`), resize 4 -> ``r``; close 255 records nothing. Raises
        :class:`~sessionvault.errors.ValidationError` for an undefined channel or a malformed
        resize payload.
        """
        from ingest.kube_exec import Channel, exit_code_from_status, frame_from_channel

        if channel == Channel.STDIN and not self.record_input:
            return
        frame = frame_from_channel(channel, payload, 0)
        if frame is None:
            return
        if channel == Channel.ERROR:
            code = exit_code_from_status(frame.data)
            if code is not None:
                self._kube_exit_code = code
        self._add(frame.stream, frame.data)

    def kube_message(self, message: bytes) -> None:
        """:meth:`record_channel` for a whole message that starts with its channel byte."""
        from ingest.kube_exec import split_message

        channel, payload = split_message(message)
        self.record_channel(channel, payload)

    def tick(self) -> None:
        """Cut a chunk that has lingered long enough (called by the transport's ticker)."""
        with self._lock:
            if not self._builder.closed:
                self._ship(self._builder.poll())

    def close(self, exit_code: int | None = None, *, flush_timeout_s: float = 5.0) -> bool:
        """Submit the final chunk; when the transport is our own, flush and close it.

        Without ``exit_code``, the one a kubectl exec error channel reported is used.

        Returns True when everything reached Kafka (False: the rest waits in the spool).
        """
        if exit_code is None:
            exit_code = self._kube_exit_code
        with self._lock:
            if self._builder.closed:
                return True
            self._ship([self._builder.finish(exit_code)])
        self.transport.unregister_ticker(self)
        if self._own_transport:
            return self.transport.close(flush_timeout_s)
        return True

    def _add(self, stream: Stream, data: bytes, *, offset_ms: int | None = None) -> None:
        with self._lock:
            if self._builder.closed:
                raise SessionVaultError(f"session {self.sid} is closed")
            self._ship(self._builder.add(stream, bytes(data), offset_ms=offset_ms))

    def _ship(self, chunks: list[Chunk]) -> None:
        # Under self._lock: submission order is seq order.
        for chunk in chunks:
            self.transport.submit(
                self.settings.topic_chunks,
                self._key,
                encode_chunk(chunk, version=self.settings.chunk_wire_version),
            )


class AuditEmitter:
    """Emits audit events (Teleport field names) to ``settings.topic_events``.

    ``emit`` fills ``sv_version``, ``tenant``, ``uid`` (uuid4) and ``time`` (RFC 3339 UTC, ms)
    when missing, validates against the event contract (raising
    :class:`~sessionvault.errors.ValidationError` for a malformed event: a caller bug), and
    queues it keyed by ``sid`` (or ``uid`` when the event has no session).
    """

    def __init__(self, settings: Settings, *, transport: Transport | None = None) -> None:
        self.settings = settings
        self._own_transport = transport is None
        self.transport = transport or Transport(settings)

    def emit(self, event_fields: dict[str, Any]) -> dict[str, Any]:
        fields = dict(event_fields)
        fields.setdefault("sv_version", EVENT_VERSION)
        fields.setdefault("tenant", self.settings.tenant)
        fields.setdefault("uid", str(uuid.uuid4()))
        fields.setdefault("time", utc_now_rfc3339())
        validate_event(fields)
        key = str(fields.get("sid") or fields["uid"]).encode()
        self.transport.submit(self.settings.topic_events, key, encode_event(fields))
        return fields

    def flush(self, timeout_s: float = 10.0) -> bool:
        return self.transport.flush(timeout_s)

    def close(self, timeout_s: float = 5.0) -> bool:
        if self._own_transport:
            return self.transport.close(timeout_s)
        return self.transport.flush(timeout_s)


# -- draining spools left behind -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What ``drain_spool`` did: directories emptied, records sent, live owners skipped."""

    directories: int
    records: int
    skipped_live: int
    remaining: int


def drain_spool(
    settings: Settings,
    *,
    producer_factory: ProducerFactory = _default_producer,
    confirm_timeout_s: float = 15.0,
    batch_max_records: int = 1000,
    progress: Callable[[str, int], None] | None = None,
) -> DrainReport:
    """Send every spool left by a dead producer (directory lock free), oldest record first.

    A live producer's directory is skipped: it drains its own spool. Segments are deleted only
    after all their records are confirmed; on a Kafka error the function raises
    :class:`TransportError` and leaves the rest for the next run.
    """
    root = settings.resolved_spool_dir
    dirs = records_sent = skipped = 0
    producer: Producer | None = None
    try:
        for owner in owner_dirs(root):
            with claim_abandoned(owner) as claimed:
                if not claimed:
                    skipped += 1
                    continue
                for seg in list_segments(owner):
                    recs = read_segment(seg)
                    for i in range(0, len(recs), batch_max_records):
                        if producer is None:
                            producer = producer_factory(settings)
                        part = recs[i : i + batch_max_records]
                        _send_confirmed(producer, part, confirm_timeout_s)
                        records_sent += len(part)
                    seg.unlink()
                    if progress is not None:
                        progress(str(seg), records_sent)
                with contextlib.suppress(OSError):
                    (owner / "LOCK").unlink()
                    owner.rmdir()
                dirs += 1
    finally:
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=2)
    remaining = sum(len(list_segments(d)) for d in owner_dirs(root))
    return DrainReport(dirs, records_sent, skipped, remaining)


def _send_confirmed(producer: Producer, records: list[SpoolRecord], timeout_s: float) -> None:
    items = [(r.topic, r.key or None, r.value) for r in records]
    send_confirmed(producer, items, timeout_s=timeout_s, what="spool drain")
