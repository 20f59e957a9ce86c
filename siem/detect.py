"""The detection worker: consumer group ``detect`` on the events topic -> Sigma rules -> alert
events produced back to the events topic -> commit.

Per polled batch (:meth:`DetectWorker.handle_batch`), in this order:

1. decode each record (:func:`schemas.decode_event`). A record that does not decode is skipped:
   the persist worker dead-letters it, so doing it here too would double every dead letter.
   ``alert.*`` events (ours, coming back round) are skipped: no alerts on alerts;
2. evaluate every other event with the :class:`~siem.rules.SigmaEngine` (starter rules plus
   ``SESSIONVAULT_SIGMA_RULES``), in offset order per partition;
3. produce the resulting ``alert.sigma`` events to the events topic (keyed by the session id,
   else the alert uid) and wait until the broker acknowledged every one (retried with backoff
   until it does, or the worker is stopped);
4. only then commit the Kafka offsets.

Delivery: at-least-once. A crash before 4 re-reads the batch and produces its alerts again.
That is harmless: an alert's ``uid`` is derived from the rule and the matched event(s), its
``time`` is the matched event's time, and the events table is idempotent on
(tenant, uid, time), so the persist worker stores one row; sinks may see an alert twice
(sinks are at-least-once anyway). Within one process, a record that comes back (a commit
refused after a rebalance that handed the partition back) is not evaluated a second time,
so it cannot count twice in a correlation window.

Terminal output: sessions recorded as raw bytes carry no command events, so typed commands
(``curl ... | sh``) are only visible in the rendered output. Between polls the worker takes the
segmenter's feed (:mod:`storage.detect_feed`, rows appended in the segmenter's own transaction),
evaluates the new output lines (``kind: output``), produces their alerts, waits for the acks
and only then deletes the feed rows (:meth:`DetectWorker.detect_output`). Same guarantee as
above: at-least-once with deterministic alert uids and times. A failure there gives the rows
back and backs off without holding up the Kafka side. An output alert's offset is when the
matched text started to be written (see ``SigmaEngine``), so the replay link opens right before
the command is typed.

Correlation state (the sliding windows of ``event_count`` rules) lives in this process's
memory and is NOT rebuilt: after a restart the worker resumes at the last committed offset
with empty windows, so a correlation whose events straddle the restart (some before the last
commit, some after) can be missed. It is also per member: with several members in the group,
events of one ``group-by`` value that land on different partitions are counted separately
(login events are keyed by their uid, so run ONE detect member when correlations matter).

Replay links need the session's start time: taken from a ``session.start`` event the engine
saw, else from PostgreSQL (``sessions.started_at`` by tenant and sid, cached; see
:class:`SessionStarts`). When neither knows the session yet (its first chunk is not stored),
the alert goes out without ``offset_ms``/``replay``; PostgreSQL being down has the same effect
and never blocks detection.

The worker runs on the worker runtime (:mod:`ingest.runtime`: Kafka calls on its own thread,
the engine and every PostgreSQL call on one thread of the worker's own);
:meth:`DetectWorker.run` returns when ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ingest.consumer import BatchConsumer, Record
from ingest.health import Health
from ingest.kafka import Producer, make_producer, send_confirmed
from ingest.runtime import BatchReport as StageReport
from ingest.runtime import KafkaRuntime, PollLimits, StageStats
from schemas.codec import decode_event, encode_event, validate_event
from sessionvault.backoff import backoff_ms
from sessionvault.errors import (
    ConfigError,
    SessionVaultError,
    StorageError,
    TransportError,
    ValidationError,
)
from sessionvault.settings import Settings, require
from siem.detect_config import parse_business_hours, rule_paths
from siem.rules import STARTER_DIR, SigmaEngine, load_rules
from storage import pg
from storage.detect_feed import FeedBatch, OutputFeed
from storage.pg_sync import SyncPostgres
from storage.reader import session_start_ms

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_GROUP = "detect"
#: How long an empty output feed is left alone before it is looked at again.
FEED_IDLE_S = 2.0
BATCH_MAX_RECORDS = 500
BATCH_MAX_BYTES = 16 * 1024 * 1024
PRODUCE_TIMEOUT_S = 30.0


# --- building the engine --------------------------------------------------------------------


def rule_sources(settings: Settings) -> list[Path]:
    """The starter set, then the files/directories of ``SESSIONVAULT_SIGMA_RULES``."""
    extra = rule_paths(settings.sigma_rules)
    missing = [str(p) for p in extra if not p.exists()]
    if missing:
        raise ConfigError(f"SESSIONVAULT_SIGMA_RULES: no such file or directory: {missing}")
    return [STARTER_DIR, *extra]


def build_engine(
    settings: Settings, *, session_start_ms: Callable[[str], int | None] | None = None
) -> SigmaEngine:
    """The engine the detect worker runs: :func:`rule_sources` with the business hours of
    ``SESSIONVAULT_BUSINESS_HOURS``. Raises ConfigError / RuleError on bad settings or rules."""
    return SigmaEngine(
        load_rules(rule_sources(settings)),
        business_hours=parse_business_hours(settings.business_hours),
        session_start_ms=session_start_ms,
    )


# --- the per-batch logic (no I/O) -----------------------------------------------------------


@dataclass
class Detection:
    """What evaluating a batch gave: alerts to produce and what was skipped."""

    alerts: list[dict[str, Any]]
    evaluated: int = 0
    undecodable: int = 0
    own_alerts: int = 0
    repeated: int = 0


def detect(
    records: Sequence[Record],
    engine: SigmaEngine,
    *,
    max_record_bytes: int,
    evaluated_up_to: dict[tuple[str, int], int] | None = None,
    on_tenant: Callable[[str], None] | None = None,
) -> Detection:
    """Steps 1-2 of the module docstring for one batch (CPU only; the engine keeps state).

    ``evaluated_up_to`` maps (topic, partition) to the next offset not yet evaluated; records
    below it are skipped and it is advanced. ``on_tenant`` is told each event's tenant before
    it is evaluated (the session-start lookup is scoped by it).
    """
    out = Detection(alerts=[])
    for rec in records:
        tp = (rec.topic, rec.partition)
        if evaluated_up_to is not None:
            if rec.offset < evaluated_up_to.get(tp, -1):
                out.repeated += 1
                continue
            evaluated_up_to[tp] = rec.offset + 1
        if rec.value is None:
            out.undecodable += 1
            continue
        try:
            event = decode_event(rec.value, max_bytes=max_record_bytes)
        except ValidationError:
            out.undecodable += 1  # the persist worker dead-letters it
            continue
        if event.type.startswith("alert."):
            out.own_alerts += 1
            continue
        if on_tenant is not None:
            on_tenant(event.tenant)
        out.evaluated += 1
        out.alerts.extend(detect_records([event.fields], engine))
    return out


def detect_records(
    records: Sequence[Mapping[str, Any]], engine: SigmaEngine
) -> list[dict[str, Any]]:
    """The valid alerts of ``records`` (already decoded: e.g. output segments), in order."""
    out: list[dict[str, Any]] = []
    for rec in records:
        for alert in engine.evaluate(rec):
            try:
                validate_event(alert)
            except ValidationError as exc:  # a rule/engine bug: never emit an invalid event
                log.error(
                    "detect: alert of rule %s on %s is invalid, dropped: %s",
                    alert.get("rule_id"),
                    rec.get("id") or rec.get("uid"),
                    exc,
                )
                continue
            out.append(alert)
    return out


def alert_key(alert: Mapping[str, Any]) -> bytes:
    """Kafka key of an alert: its session id (so it follows the session's partition), else its
    uid."""
    return str(alert.get("sid") or alert["uid"]).encode()


# --- session start lookup -------------------------------------------------------------------


class SessionStarts:
    """``sid -> sessions.started_at`` (epoch ms) from PostgreSQL, for the tenant set in
    :attr:`tenant`; a callable to give :class:`SigmaEngine` as ``session_start_ms``.

    Found values are cached (LRU, ``max_entries``); misses are not (the session row may be
    written later). After a PostgreSQL error the lookup answers None for ``retry_after_s``
    instead of blocking detection. Call it from one thread only (:class:`SyncPostgres`).
    """

    def __init__(
        self, db: SyncPostgres, *, max_entries: int = 10_000, retry_after_s: float = 5.0
    ) -> None:
        self.tenant = ""
        self.lookups = 0
        self._db = db
        self._max = max_entries
        self._retry_after_s = retry_after_s
        self._cache: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._down_until = 0.0

    def set_tenant(self, tenant: str) -> None:
        self.tenant = tenant

    def __call__(self, sid: str) -> int | None:
        key = (self.tenant, sid)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if time.monotonic() < self._down_until:
            return None
        self.lookups += 1
        tenant = self.tenant

        async def fetch(conn: pg.Connection) -> int | None:
            return await session_start_ms(conn, tenant, sid)

        try:
            ms = self._db.run("read session start", fetch)
        except SessionVaultError as exc:
            log.warning("detect: session start of %s unavailable (no replay offset): %s", sid, exc)
            self._down_until = time.monotonic() + self._retry_after_s
            return None
        if ms is not None:
            self._cache[key] = ms
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return ms


# --- the worker -----------------------------------------------------------------------------


@dataclass
class DetectStats(StageStats):
    """Running totals since the worker started."""

    evaluated: int = 0
    alerts: int = 0
    undecodable: int = 0
    own_alerts: int = 0
    repeated: int = 0
    produce_retries: int = 0
    output_batches: int = 0
    output_segments: int = 0
    output_alerts: int = 0
    output_retries: int = 0


@dataclass(frozen=True)
class DetectBatchReport(StageReport):
    """What one batch did (passed to ``on_batch``)."""

    evaluated: int
    alerts: int


class DetectWorker:
    """One member of the ``detect`` consumer group; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str = DEFAULT_GROUP,
        engine: SigmaEngine | None = None,
        session_starts: SessionStarts | None = None,
        output_feed: OutputFeed | None = None,
        consumer_factory: Callable[[], BatchConsumer] | None = None,
        producer_factory: Callable[[], Producer] | None = None,
    ) -> None:
        require(settings, "kafka_bootstrap")
        self.settings = settings
        self.group_id = group_id
        self.stats = DetectStats()
        self.health = Health(settings.worker_stall_after_ms / 1000)
        self._db: SyncPostgres | None = None
        if settings.postgres_dsn and (session_starts is None or output_feed is None):
            self._db = SyncPostgres(settings.postgres_dsn.get())
            if session_starts is None and engine is None:
                session_starts = SessionStarts(self._db)
            if output_feed is None:
                output_feed = OutputFeed(self._db)
        self._starts = session_starts
        self._feed = output_feed
        self._feed_attempt = 0
        self._feed_retry_at = 0.0
        # Alerts of feed rows evaluated but not yet deleted (a produce or commit failed): a
        # retry of the same rows reuses them instead of counting the segments twice.
        self._feed_alerts: dict[int, list[dict[str, Any]]] = {}
        self.engine = engine or build_engine(settings, session_start_ms=session_starts)
        self.rt = KafkaRuntime(
            settings,
            name="detect",
            group_id=group_id,
            topics=[settings.topic_events],
            consumer_factory=consumer_factory
            or (
                lambda: BatchConsumer(
                    settings, group_id, [settings.topic_events], max_poll_records=BATCH_MAX_RECORDS
                )
            ),
            health=self.health,
            retried=(TransportError,),
            logger=log,
            stats=self.stats,
            limits=PollLimits(
                BATCH_MAX_RECORDS,
                BATCH_MAX_BYTES,
                settings.persist_linger_ms,
                settings.worker_poll_wait_ms,
            ),
        )
        self._producer_factory: Callable[[], Producer] = producer_factory or (
            lambda: make_producer(settings, client_id=f"sessionvault-{group_id}")
        )
        self._producer: Producer | None = None
        self._evaluated: dict[tuple[str, int], int] = {}
        # Every PostgreSQL call (the feed, and the session-start lookups the engine makes while
        # evaluating) runs on this one thread: SyncPostgres is a connection for one thread.
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix=f"sv-{group_id}-pg")

    async def _on_db_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, lambda: fn(*args, **kwargs))

    # -- producing ---------------------------------------------------------------------------

    async def _produce(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Send every alert and wait for every acknowledgement (raises TransportError); on the
        runtime's Kafka thread."""
        await self.rt.kafka(self._produce_now, alerts)

    def _produce_now(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        if self._producer is None:
            self._producer = self._producer_factory()
        producer = self._producer
        topic = self.settings.topic_events
        try:
            send_confirmed(
                producer,
                [(topic, alert_key(a), encode_event(dict(a))) for a in alerts],
                timeout_s=PRODUCE_TIMEOUT_S,
                what="produce alerts",
            )
        except TransportError:
            # A fresh producer for the retry: the failed one may hold half-sent batches.
            self.stats.produce_retries += 1
            self._producer = None
            try:
                producer.close(timeout=1)
            except Exception as exc:
                log.debug("detect: closing the failed producer: %s", exc)
            raise

    # -- the batch step ----------------------------------------------------------------------

    async def handle_batch(
        self, records: Sequence[Record], *, commit: bool = True
    ) -> DetectBatchReport:
        """Steps 1-4 of the module docstring for one polled batch."""
        t0 = time.monotonic()
        # On the PostgreSQL thread: the engine may look up a session's start there
        # (SessionStarts, a blocking client), which must not run on the event loop.
        found = await self._on_db_thread(
            detect,
            records,
            self.engine,
            max_record_bytes=self.settings.max_record_bytes,
            evaluated_up_to=self._evaluated,
            on_tenant=self._starts.set_tenant if self._starts is not None else None,
        )
        if found.alerts:
            await self.rt.retry("producing alerts", lambda: self._produce(found.alerts))
            for a in found.alerts:
                log.info(
                    "detect: alert %s rule=%s level=%s tenant=%s sid=%s",
                    a["uid"],
                    a["rule_id"],
                    a["level"],
                    a["tenant"],
                    a.get("sid", "-"),
                )
        done = await self.rt.finish(records, (), commit=commit)
        committed = done.committed
        s = self.stats
        s.evaluated += found.evaluated
        s.alerts += len(found.alerts)
        s.undecodable += found.undecodable
        s.own_alerts += found.own_alerts
        s.repeated += found.repeated
        return DetectBatchReport(
            records=len(records),
            evaluated=found.evaluated,
            alerts=len(found.alerts),
            dead_letters=0,
            offsets=done.offsets,
            committed=committed,
            seconds=time.monotonic() - t0,
        )

    # -- terminal output (the segmenter's feed) -----------------------------------------------

    def _feed_failed(self, exc: SessionVaultError) -> None:
        self._feed_attempt += 1
        self.stats.output_retries += 1
        delay = backoff_ms(self._feed_attempt, self.settings.retry_backoff_max_ms) / 1000
        self._feed_retry_at = time.monotonic() + delay
        log.warning(
            "detect: terminal output batch failed (attempt %d), retrying in %.1fs: %s",
            self._feed_attempt,
            delay,
            exc,
        )

    def _evaluate_output(self, batch: FeedBatch) -> list[dict[str, Any]]:
        cached = {i: self._feed_alerts[i] for i in batch.ids if i in self._feed_alerts}
        self._feed_alerts = cached  # rows another member took meanwhile are forgotten
        alerts: list[dict[str, Any]] = []
        for row in batch.rows:
            if row.id not in self._feed_alerts:
                if self._starts is not None and row.records:
                    self._starts.set_tenant(str(row.records[0]["tenant"]))
                found = detect_records(row.records, self.engine)
                self._feed_alerts[row.id] = found
                self.stats.output_segments += len(row.records)
            alerts.extend(self._feed_alerts[row.id])
        return alerts

    async def detect_output(self, *, max_batches: int = 5) -> int:
        """Evaluate terminal output segments from the segmenter's feed (:mod:`storage.detect_feed`):
        take rows, evaluate, produce the alerts and wait for their acks, then delete the rows.
        Returns the feed rows done. Never raises and never blocks on a retry: a PostgreSQL or
        Kafka failure gives the rows back and backs off (the Kafka side goes on meanwhile)."""
        feed = self._feed
        if feed is None or time.monotonic() < self._feed_retry_at:
            return 0
        done = 0
        for _ in range(max_batches):
            try:
                batch = await self._on_db_thread(feed.take)
            except StorageError as exc:
                self._feed_failed(exc)
                return done
            if batch is None:
                self._feed_attempt = 0
                if done == 0:
                    # Nothing waiting: look again in FEED_IDLE_S, not on every poll (an idle
                    # worker's feed queries were most of its CPU). Terminal-output alerts after
                    # a quiet spell wait at most that much longer.
                    self._feed_retry_at = time.monotonic() + FEED_IDLE_S
                return done
            try:
                alerts = await self._on_db_thread(self._evaluate_output, batch)
                if alerts:
                    await self._produce(alerts)
                await self._on_db_thread(feed.done, batch.ids)
            except (StorageError, TransportError) as exc:
                await self._on_db_thread(feed.abort)
                self._feed_failed(exc)
                return done
            for i in batch.ids:
                self._feed_alerts.pop(i, None)
            self._feed_attempt = 0
            done += len(batch.rows)
            self.stats.output_batches += 1
            self.stats.output_alerts += len(alerts)
            self.stats.alerts += len(alerts)
            for a in alerts:
                log.info(
                    "detect: alert %s rule=%s level=%s tenant=%s sid=%s offset_ms=%s",
                    a["uid"],
                    a["rule_id"],
                    a["level"],
                    a["tenant"],
                    a.get("sid", "-"),
                    a.get("offset_ms", "-"),
                )
        return done

    async def output_backlog(self) -> int | None:
        """Feed rows waiting for detection (None: no feed, or PostgreSQL unreachable)."""
        if self._feed is None or self._feed.open:
            return None
        try:
            return await self._on_db_thread(self._feed.backlog)
        except StorageError:
            return None

    # -- the loop ----------------------------------------------------------------------------

    async def lag(self) -> int | None:
        """Records behind the high watermark on this member's partitions (None: unknown)."""
        return await self.rt.lag()

    async def run(
        self,
        stop: asyncio.Event | None = None,
        on_batch: Callable[[DetectBatchReport], object] | None = None,
    ) -> None:
        """Consume until ``stop`` is set; see the module docstring. After every poll (records
        or none), the segmenter's feed: an output line waits at most one poll wait."""

        async def output() -> None:
            await self.detect_output()

        try:
            await self.rt.run(self.handle_batch, stop=stop, on_batch=on_batch, after_poll=output)
        finally:
            await self._close()

    async def _close(self) -> None:
        producer, self._producer = self._producer, None
        try:
            await self.rt.close()
        except Exception as exc:  # best effort at shutdown
            log.debug("detect: close: %s", exc)
        for closer in (
            (lambda: producer.close(timeout=5)) if producer is not None else None,
            self._feed.abort if self._feed is not None else None,
            self._db.close if self._db is not None else None,
        ):
            if closer is not None:
                try:
                    await self._on_db_thread(closer)
                except Exception as exc:  # best effort at shutdown
                    log.debug("detect: close: %s", exc)
        self._db_thread.shutdown(wait=True)


async def run_detect_worker(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_batch: Callable[[DetectBatchReport], object] | None = None,
    group_id: str = DEFAULT_GROUP,
) -> None:
    """Run one detect worker until ``stop`` is set (see the module docstring)."""
    await DetectWorker(settings, group_id=group_id).run(stop=stop, on_batch=on_batch)


__all__ = [
    "DEFAULT_GROUP",
    "DetectBatchReport",
    "DetectStats",
    "DetectWorker",
    "Detection",
    "SessionStarts",
    "alert_key",
    "build_engine",
    "detect",
    "detect_records",
    "rule_sources",
    "run_detect_worker",
]
