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

The worker runs on the worker runtime (:mod:`ingest.runtime`: Kafka calls on its own
thread, the sink's blocking calls in a worker thread, one at a time, everything else on the
event loop); :meth:`SinkWorker.run` returns when its ``stop`` event is set. It never logs event
bodies.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ingest.consumer import BatchConsumer, Record
from ingest.deadletter import DeadLetterProducer
from ingest.health import Health
from ingest.runtime import BatchReport as StageReport
from ingest.runtime import DeadLetter, KafkaRuntime, PollLimits, StageStats
from schemas.codec import decode_event
from sessionvault.backoff import backoff_ms
from sessionvault.errors import TransportError, ValidationError
from sessionvault.settings import Settings, require
from siem.config import HecOptions, RetryPolicy, SinkConfig, SinkFilter
from siem.sinks.base import FormatError, Sink, SinkError, SinkRejectedError
from siem.state import write_state

log = logging.getLogger(__name__)

T = TypeVar("T")

FETCH_MAX_WAIT_MS = 50
STATE_EVERY_S = 1.0

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
class SinkStats(StageStats):
    """Running totals since the worker started (written to the state file for ``status``)."""

    skipped: int = 0
    delivered: int = 0
    failures: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    last_delivery_at: float = 0.0
    started_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class BatchOutcome(StageReport):
    """What one polled batch did (passed to ``on_batch``)."""

    delivered: int
    skipped: int
    failures: int


@dataclass(frozen=True)
class _Reject:
    record: Record
    reason: str
    message: str


# --- the worker -----------------------------------------------------------------------------


class SinkWorker:
    """One member of the consumer group of one sink; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        config: SinkConfig,
        *,
        sink: Sink | None = None,
        consumer_factory: Callable[[], BatchConsumer] | None = None,
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
            lambda: BatchConsumer(
                settings,
                config.group_id,
                topics,
                max_poll_records=max(config.batch.max_events, 1),
                # The broker may hold an idle fetch this long: part of every event's latency.
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                max_poll_interval_ms=max_poll_interval_ms(config, settings),
            )
        )
        b = config.batch
        self.rt = KafkaRuntime(
            settings,
            name=f"siem[{config.name}]",
            group_id=config.group_id,
            topics=topics,
            consumer_factory=self._consumer_factory,
            deadletter_factory=deadletter_factory,
            health=self.health,
            retried=(TransportError,),
            logger=log,
            stats=self.stats,
            limits=PollLimits(b.max_events, b.max_bytes, b.linger_ms, settings.worker_poll_wait_ms),
        )
        self._state_home = state_home if state_home is not None else settings.home
        self._state_written = 0.0
        self._on_delivered = on_delivered

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            from siem.sinks import make_sink

            self._sink = make_sink(self.config)
        return self._sink

    # -- waiting and retrying ----------------------------------------------------------------

    async def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` while keeping the consumer in its group; Stopped on stop."""
        await self.rt.sleep_or_stop(seconds)

    def _note_failure(self, message: str) -> None:
        self.health.failed("delivering to the sink", message)
        self.stats.failures += 1
        self.stats.last_error = message
        self.stats.last_error_at = time.time()
        self._write_state(force=True)

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

    async def _deliver_run(self, items: Sequence[tuple[Record, bytes]]) -> list[_Reject]:
        """Deliver ``items`` in order (step 3); returns the ones dead-lettered."""
        if not items:
            return []
        attempt = 0
        name = self.config.name
        while True:
            attempt += 1
            try:
                await asyncio.to_thread(self.sink.deliver, [u for _, u in items])
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
                    out += await self._deliver_run(part)
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
                await self._wait(delay)
                continue
            self.stats.delivered += len(items)
            self.stats.last_delivery_at = time.time()
            if self._on_delivered is not None:
                self._on_delivered([r for r, _ in items])
            return []

    async def handle_batch(self, records: Sequence[Record], *, commit: bool = True) -> BatchOutcome:
        """Steps 2-6 of the module invariant for one polled batch.

        Raises :class:`ingest.runtime.Stopped` when asked to stop while waiting to retry; the
        batch is then left uncommitted and will be redelivered.
        """
        t0 = time.monotonic()
        failures0 = self.stats.failures
        skipped0 = self.stats.skipped
        items, rejects = self.prepare(records)
        delivered = 0
        attempt = 0
        while True:
            dead = await self._deliver_all(items)
            delivered = len(items) - len(dead)
            rejects += dead
            if dead:
                gone = {id(r.record) for r in dead}
                items = [it for it in items if id(it[0]) not in gone]
            try:
                await asyncio.to_thread(self.sink.sync)
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
                await self._wait(delay)
        index = {id(r): i for i, r in enumerate(records)}
        letters = [DeadLetter(index[id(r.record)], r.reason, r.message) for r in rejects]
        done = await self.rt.finish(records, letters, commit=commit)
        committed = done.committed
        s = self.stats
        self._write_state(force=bool(rejects))
        return BatchOutcome(
            records=len(records),
            delivered=delivered,
            skipped=s.skipped - skipped0,
            dead_letters=len(rejects),
            failures=s.failures - failures0,
            offsets=done.offsets,
            committed=committed,
            seconds=time.monotonic() - t0,
        )

    async def _deliver_all(self, items: Sequence[tuple[Record, bytes]]) -> list[_Reject]:
        """Step 3 over the whole batch: sub-batches in order; returns the dead-lettered."""
        b = self.config.batch
        dead: list[_Reject] = []
        for part in split_batches([len(u) for _, u in items], b.max_events, b.max_bytes):
            dead += await self._deliver_run(items[part.start : part.stop])
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

    async def lag(self) -> int | None:
        """Records behind the high watermark on this member's partitions (None: unknown)."""
        return await self.rt.lag()

    async def run(
        self,
        stop: asyncio.Event | None = None,
        on_batch: Callable[[BatchOutcome], object] | None = None,
    ) -> None:
        """Consume until ``stop`` is set; see the module docstring."""

        async def idle() -> None:
            self._write_state()

        try:
            await self.rt.run(self.handle_batch, stop=stop, on_batch=on_batch, on_idle=idle)
        finally:
            await self._close()

    async def _close(self) -> None:
        self._write_state(force=True)
        try:
            await self.rt.close()
        except Exception as exc:  # best effort at shutdown
            log.debug("siem[%s]: close: %s", self.config.name, exc)
        if self._sink is not None:
            try:
                self._sink.close()
            except Exception as exc:  # best effort at shutdown
                log.debug("siem[%s]: close: %s", self.config.name, exc)


__all__ = [
    "BatchOutcome",
    "SinkStats",
    "SinkWorker",
    "exhausted",
    "max_poll_interval_ms",
    "retry_delay_ms",
    "selected",
    "split_batches",
]
