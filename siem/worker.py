"""The SIEM sink worker: one consumer group ``siem-<sink>`` per sink on the events topic.

The invariant, enforced by the order of the calls in :meth:`SinkWorker.handle_batch`:

1. poll a batch (records in offset order per partition);
2. decode each record; keep those the sink's filter selects (tenants, event-type globs,
   terminal output skipped unless asked for); encode each for the sink. An undecodable
   record or one the format refuses becomes a dead letter; the rest go on;
3. deliver the encoded events in sub-batches (``max_events`` / ``max_bytes``), in order. A
   failed sub-batch is retried, the SAME events in the same order, with exponential backoff
   (``retry.max_attempts`` tries, delays capped at ``retry.backoff_max_ms``); nothing later
   in the batch is sent while it is pending, so per-partition (and so per-session) order
   holds after the peer recovers. When the tries are used up the sub-batch is dead-lettered
   (reason ``sink_unavailable``) and the worker moves on; an event the peer refuses for its
   content (4xx) is isolated (bisection, or the index the peer names) and dead-lettered
   alone (``sink_rejected``);
4. send the batch's dead letters (original bytes) and wait until the broker confirmed them;
5. make the deliveries durable (:meth:`~siem.sinks.base.Sink.sync`: fsync for files);
6. only then commit the Kafka offsets.

A crash before 6 redelivers the batch (at-least-once: the peer may see an event twice).
While a sub-batch waits to be retried, the consumer's partitions are paused and it keeps
polling, so the group does not evict it (``max_poll_interval_ms``) and nothing is fetched
ahead.

The worker is synchronous and runs in one thread (kafka-python's consumer is not
thread-safe); :meth:`SinkWorker.run` returns when its ``stop`` event is set. It never logs
event bodies.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ingest.consumer import BatchConsumer, CommitRejectedError, Record, next_offsets
from ingest.deadletter import DeadLetterProducer
from ingest.health import Health
from schemas.codec import decode_event
from sessionvault.backoff import backoff_ms
from sessionvault.errors import SessionVaultError, TransportError, ValidationError
from sessionvault.settings import Settings, require
from siem.config import HecOptions, RetryPolicy, SinkConfig, SinkFilter
from siem.sinks.base import FormatError, Sink, SinkError, SinkRejectedError
from siem.state import write_state

log = logging.getLogger(__name__)

T = TypeVar("T")

FETCH_MAX_WAIT_MS = 50
STATE_EVERY_S = 1.0
#: Longest single sleep while waiting to retry: the consumer is polled (kept in its group)
#: at least this often.
KEEPALIVE_S = 1.0

R_SINK_UNAVAILABLE = "sink_unavailable"
R_SINK_REJECTED = "sink_rejected"
R_FORMAT = "format_error"


# --- pure helpers ---------------------------------------------------------------------------


def is_terminal_output(event: Mapping[str, Any]) -> bool:
    """Records that carry terminal output (Teleport ``print`` ...), skipped by default."""
    from siem.formats.common import is_terminal_output as check

    return check(event)


def selected(event: Mapping[str, Any], f: SinkFilter) -> bool:
    """Whether a sink with filter ``f`` receives ``event`` (pure)."""
    if f.tenants and str(event.get("tenant", "")) not in f.tenants:
        return False
    if not f.include_output and is_terminal_output(event):
        return False
    kind = str(event.get("event", ""))
    if f.event_types and not any(fnmatch.fnmatchcase(kind, g) for g in f.event_types):
        return False
    return not any(fnmatch.fnmatchcase(kind, g) for g in f.exclude_types)


def split_batches(sizes: Sequence[int], max_events: int, max_bytes: int) -> list[range]:
    """Consecutive index ranges, each at most ``max_events`` items and ``max_bytes`` bytes
    (an item larger than ``max_bytes`` travels alone). Order is kept (pure)."""
    out: list[range] = []
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_events or total + size > max_bytes):
            out.append(range(start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        out.append(range(start, len(sizes)))
    return out


def retry_delay_ms(attempt: int, policy: RetryPolicy) -> int:
    """Delay after failed try ``attempt`` (1-based): base * 2^(attempt-1), capped (pure)."""
    return backoff_ms(attempt, policy.backoff_max_ms, base_ms=policy.backoff_base_ms)


def exhausted(attempt: int, policy: RetryPolicy) -> bool:
    return policy.max_attempts > 0 and attempt >= policy.max_attempts


def max_poll_interval_ms(config: SinkConfig, settings: Settings) -> int:
    """The group's poll deadline for this sink: one delivery call (an HTTP timeout, plus the
    wait for a HEC indexer ack) must fit in it with room to spare, or the group would evict
    the member mid-delivery and the batch would be delivered twice (pure)."""
    o = config.options
    longest = int(getattr(o, "timeout_ms", 10_000))
    if isinstance(o, HecOptions) and o.ack:
        longest += o.ack_timeout_ms + o.timeout_ms
    return max(settings.consumer_max_poll_interval_ms, longest + 10_000)


# --- running totals -------------------------------------------------------------------------


@dataclass
class SinkStats:
    """Running totals since the worker started (written to the state file for ``status``)."""

    records: int = 0
    skipped: int = 0
    delivered: int = 0
    batches: int = 0
    failures: int = 0
    dead_letters: int = 0
    commits: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    last_delivery_at: float = 0.0
    started_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class BatchOutcome:
    """What one polled batch did (passed to ``on_batch``)."""

    records: int
    delivered: int
    skipped: int
    dead_letters: int
    failures: int
    committed: bool
    seconds: float


@dataclass(frozen=True)
class _Reject:
    record: Record
    reason: str
    message: str


class _Stopped(Exception):
    """Stop was requested while waiting to retry: leave without committing."""


class SinkConsumer(BatchConsumer):
    """A :class:`BatchConsumer` that can hold its place while a batch is being retried."""

    def hold(self) -> None:
        """Pause every assigned partition and poll (fetching nothing), which keeps this member
        in its group. A record fetched anyway (new partitions after a rebalance) is put back
        by seeking to it, so nothing is skipped."""
        c = self._consumer
        try:
            assigned = c.assignment()
            if assigned:
                c.pause(*assigned)
            got = c.poll(timeout_ms=0, max_records=1)
            for tp, msgs in got.items():
                if msgs:
                    c.seek(tp, msgs[0].offset)
                c.pause(tp)
        except Exception as exc:  # kafka-python errors: the commit will tell; keep retrying
            log.debug("siem: keepalive poll of %s failed: %s", self.group_id, exc)

    def release(self) -> None:
        c = self._consumer
        try:
            paused = c.paused()
            if paused:
                c.resume(*paused)
        except Exception as exc:
            log.debug("siem: resume of %s failed: %s", self.group_id, exc)


# --- the worker -----------------------------------------------------------------------------


class SinkWorker:
    """One member of the consumer group of one sink; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        config: SinkConfig,
        *,
        sink: Sink | None = None,
        consumer_factory: Callable[[], SinkConsumer] | None = None,
        deadletter_factory: Callable[[], DeadLetterProducer] | None = None,
        topics: Sequence[str] | None = None,
        state_home: Path | None = None,
        on_delivered: Callable[[Sequence[Record]], None] | None = None,
    ) -> None:
        require(settings, "kafka_bootstrap")
        self.settings = settings
        self.config = config
        self.group_id = config.group_id
        self.stats = SinkStats()
        self.health = Health(settings.worker_stall_after_ms / 1000)
        self._sink = sink
        topics = list(topics or [settings.topic_events])
        self._consumer_factory = consumer_factory or (
            lambda: SinkConsumer(
                settings,
                config.group_id,
                topics,
                max_poll_records=max(config.batch.max_events, 1),
                # The broker may hold an idle fetch this long: part of every event's latency.
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                max_poll_interval_ms=max_poll_interval_ms(config, settings),
            )
        )
        self._deadletter_factory = deadletter_factory or (
            lambda: DeadLetterProducer(settings, worker=config.group_id)
        )
        self._consumer: SinkConsumer | None = None
        self._deadletters: DeadLetterProducer | None = None
        self._state_home = state_home if state_home is not None else settings.home
        self._state_written = 0.0
        self._on_delivered = on_delivered
        self._stop = threading.Event()

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            from siem.sinks import make_sink

            self._sink = make_sink(self.config)
        return self._sink

    # -- waiting and retrying ----------------------------------------------------------------

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` while keeping the consumer in its group; _Stopped on stop."""
        deadline = time.monotonic() + seconds
        while True:
            if self._consumer is not None:
                self._consumer.hold()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self._stop.wait(min(left, KEEPALIVE_S)):
                raise _Stopped
        if self._stop.is_set():
            raise _Stopped

    def _note_failure(self, message: str) -> None:
        self.health.failed("delivering to the sink", message)
        self.stats.failures += 1
        self.stats.last_error = message
        self.stats.last_error_at = time.time()
        self._write_state(force=True)

    def _retry_kafka(self, what: str, op: Callable[[], T]) -> T:
        """Kafka-side steps (dead letters, commits) retry until they succeed or stop."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return op()
            except CommitRejectedError:
                raise
            except TransportError as exc:
                self.health.failed(what, exc)
                delay = retry_delay_ms(attempt, self.config.retry) / 1000
                log.warning(
                    "siem[%s]: %s failed (attempt %d), retrying in %.1fs: %s",
                    self.config.name,
                    what,
                    attempt,
                    delay,
                    exc,
                )
                self._wait(delay)

    # -- the batch step ----------------------------------------------------------------------

    def prepare(
        self, records: Sequence[Record]
    ) -> tuple[list[tuple[Record, bytes]], list[_Reject]]:
        """Step 2: decode, filter and encode (CPU only). Returns (to deliver, rejects)."""
        items: list[tuple[Record, bytes]] = []
        rejects: list[_Reject] = []
        for rec in records:
            try:
                if rec.value is None:
                    raise ValidationError("empty", "record has no value")
                event = decode_event(rec.value, max_bytes=self.settings.max_record_bytes)
            except ValidationError as exc:
                rejects.append(_Reject(rec, exc.reason, str(exc)))
                continue
            if not selected(event.fields, self.config.filter):
                self.stats.skipped += 1
                continue
            try:
                unit = self.sink.encode(event.fields)
            except FormatError as exc:
                rejects.append(_Reject(rec, exc.reason, str(exc)))
                continue
            except Exception as exc:  # a formatter bug must not stop the sink
                log.error(
                    "siem[%s]: format %s failed on %s: %s",
                    self.config.name,
                    self.config.format,
                    rec.where,
                    type(exc).__name__,
                )
                rejects.append(_Reject(rec, R_FORMAT, f"{type(exc).__name__}: {exc}"[:500]))
                continue
            if unit is None:  # the format maps no such event (OCSF for an unmapped type)
                self.stats.skipped += 1
                continue
            items.append((rec, unit))
        return items, rejects

    def _deliver_run(self, items: Sequence[tuple[Record, bytes]]) -> list[_Reject]:
        """Deliver ``items`` in order (step 3); returns the ones dead-lettered."""
        if not items:
            return []
        attempt = 0
        name = self.config.name
        while True:
            attempt += 1
            try:
                self.sink.deliver([u for _, u in items])
            except SinkRejectedError as exc:
                self._note_failure(str(exc))
                if len(items) == 1:
                    log.warning(
                        "siem[%s]: %s refused by the peer: %s", name, items[0][0].where, exc
                    )
                    return [_Reject(items[0][0], R_SINK_REJECTED, str(exc))]
                # Isolate the refused event: around the index the peer named, else halves.
                if exc.index is not None and 0 <= exc.index < len(items):
                    i = exc.index
                    parts = [items[:i], items[i : i + 1], items[i + 1 :]]
                else:
                    half = len(items) // 2
                    parts = [items[:half], items[half:]]
                out: list[_Reject] = []
                for part in parts:
                    out += self._deliver_run(part)
                return out
            except SinkError as exc:
                self._note_failure(str(exc))
                if exhausted(attempt, self.config.retry):
                    log.error(
                        "siem[%s]: %d events dead-lettered after %d failed tries (%s .. %s): %s",
                        name,
                        len(items),
                        attempt,
                        items[0][0].where,
                        items[-1][0].where,
                        exc,
                    )
                    msg = f"{attempt} tries failed; last: {exc}"
                    return [_Reject(r, R_SINK_UNAVAILABLE, msg) for r, _ in items]
                delay = retry_delay_ms(attempt, self.config.retry) / 1000
                level = logging.WARNING if exc.retriable else logging.ERROR
                log.log(
                    level,
                    "siem[%s]: delivery of %d events failed (try %d), retrying in %.1fs: %s",
                    name,
                    len(items),
                    attempt,
                    delay,
                    exc,
                )
                self._wait(delay)
                continue
            self.stats.delivered += len(items)
            self.stats.last_delivery_at = time.time()
            if self._on_delivered is not None:
                self._on_delivered([r for r, _ in items])
            return []

    def _send_deadletters(self, rejects: Sequence[_Reject]) -> None:
        if self._deadletters is None:
            self._deadletters = self._retry_kafka(
                "opening the dead-letter producer", self._deadletter_factory
            )
        dl = self._deadletters

        def send_all() -> int:
            for r in rejects:
                log.warning(
                    "siem[%s]: dead letter %s reason=%s",
                    self.config.name,
                    r.record.where,
                    r.reason,
                )
                dl.send(r.record, r.reason, r.message)
            return dl.flush()

        self._retry_kafka("dead-letter delivery", send_all)

    def handle_batch(self, records: Sequence[Record], *, commit: bool = True) -> BatchOutcome:
        """Steps 2-6 of the module invariant for one polled batch.

        Raises _Stopped (internal) when asked to stop while waiting to retry; the batch is
        then left uncommitted and will be redelivered.
        """
        t0 = time.monotonic()
        failures0 = self.stats.failures
        skipped0 = self.stats.skipped
        items, rejects = self.prepare(records)
        delivered = 0
        attempt = 0
        while True:
            dead = self._deliver_all(items)
            delivered = len(items) - len(dead)
            rejects += dead
            if dead:
                gone = {id(r.record) for r in dead}
                items = [it for it in items if id(it[0]) not in gone]
            try:
                self.sink.sync()
                break
            except SinkError as exc:
                # What was written may not be durable: write it all again (at-least-once).
                attempt += 1
                self._note_failure(str(exc))
                delay = retry_delay_ms(attempt, self.config.retry) / 1000
                log.error(
                    "siem[%s]: sync failed, delivering the batch again in %.1fs: %s",
                    self.config.name,
                    delay,
                    exc,
                )
                self._wait(delay)
        if rejects:
            self._send_deadletters(rejects)
        committed = False
        offsets = next_offsets(records)
        if commit and offsets and self._consumer is not None:
            consumer = self._consumer
            try:
                self._retry_kafka("offset commit", lambda: consumer.commit(offsets))
                committed = True
                self.stats.commits += 1
            except CommitRejectedError as exc:
                log.warning("siem[%s]: %s; the batch will be redelivered", self.config.name, exc)
        s = self.stats
        s.batches += 1
        s.records += len(records)
        s.dead_letters += len(rejects)
        self._write_state(force=bool(rejects))
        return BatchOutcome(
            records=len(records),
            delivered=delivered,
            skipped=s.skipped - skipped0,
            dead_letters=len(rejects),
            failures=s.failures - failures0,
            committed=committed,
            seconds=time.monotonic() - t0,
        )

    def _deliver_all(self, items: Sequence[tuple[Record, bytes]]) -> list[_Reject]:
        """Step 3 over the whole batch: sub-batches in order; returns the dead-lettered."""
        b = self.config.batch
        dead: list[_Reject] = []
        try:
            for part in split_batches([len(u) for _, u in items], b.max_events, b.max_bytes):
                dead += self._deliver_run(items[part.start : part.stop])
        finally:
            if self._consumer is not None:
                self._consumer.release()
        return dead

    # -- state for `sessionvault status` -----------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "type": self.config.type,
            "format": self.config.format,
            "group": self.group_id,
            "updated_at": time.time(),
            **asdict(self.stats),
        }

    def _write_state(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._state_written >= STATE_EVERY_S:
            self._state_written = now
            write_state(self._state_home, self.config.name, self.state())

    # -- the loop ----------------------------------------------------------------------------

    def lag(self) -> int | None:
        if self._consumer is None:
            return None
        try:
            return self._consumer.lag()
        except TransportError:
            return None

    def stop(self) -> None:
        self._stop.set()

    def run(
        self,
        stop: threading.Event | None = None,
        on_batch: Callable[[BatchOutcome], object] | None = None,
    ) -> None:
        """Consume until ``stop`` (or :meth:`stop`) is set; see the module docstring."""
        if stop is not None:
            self._stop = stop
        name = self.config.name
        try:
            self._consumer = self._open_consumer()
            while not self._stop.is_set():
                # Any wait (a retried delivery, dead letters, a commit) paused the partitions.
                self._consumer.release()
                try:
                    records = self._consumer.poll_batch(
                        max_records=self.config.batch.max_events,
                        max_bytes=self.config.batch.max_bytes,
                        linger_ms=self.config.batch.linger_ms,
                        wait_ms=self.settings.worker_poll_wait_ms,
                    )
                except TransportError as exc:
                    log.warning("siem[%s]: poll failed: %s", name, exc)
                    self.health.failed("polling Kafka", exc)
                    self._wait(1.0)
                    continue
                if not records:
                    self.health.progressed()
                    self._write_state()
                    continue
                outcome = self.handle_batch(records)
                self.health.progressed()
                if on_batch is not None:
                    on_batch(outcome)
        except _Stopped:
            log.info("siem[%s]: stopping with an uncommitted batch; it will be redelivered", name)
        finally:
            self._close()

    def _open_consumer(self) -> SinkConsumer:
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._consumer_factory()
            except SessionVaultError as exc:
                if not exc.retriable:
                    raise
                delay = retry_delay_ms(attempt, self.config.retry) / 1000
                log.warning(
                    "siem[%s]: joining the group failed, retrying in %.1fs: %s",
                    self.config.name,
                    delay,
                    exc,
                )
                if self._stop.wait(delay):
                    raise _Stopped from exc

    def _close(self) -> None:
        self._write_state(force=True)
        for closer in (
            self._consumer.close if self._consumer is not None else None,
            self._deadletters.close if self._deadletters is not None else None,
            self._sink.close if self._sink is not None else None,
        ):
            if closer is not None:
                try:
                    closer()
                except Exception as exc:  # best effort at shutdown
                    log.debug("siem[%s]: close: %s", self.config.name, exc)


__all__ = [
    "BatchOutcome",
    "SinkConsumer",
    "SinkStats",
    "SinkWorker",
    "exhausted",
    "max_poll_interval_ms",
    "retry_delay_ms",
    "selected",
    "split_batches",
]
