"""The index worker: Kafka (consumer group "index") -> PostgreSQL rows -> OpenSearch -> commit.

Design (PostgreSQL is the source of truth; OpenSearch is a derived copy):

The worker consumes the same topics as the persist worker (``sv.events.v1`` and
``sv.chunks.v1``) in its OWN consumer group, so it never slows down or blocks persistence: with
OpenSearch down the persist group goes on, this group stops committing and catches up later.
Kafka records are used as *notifications* of what changed, never as the documents themselves:
every document is built from the PostgreSQL row by the model's builders
(:func:`storage.search.reindex.event_action` / ``segment_action``), because the stored row is
what search must show (kube.request stages merged across deliveries, session fields re-synced
into segments by ``session.start``, segments rendered deterministically by the segmenter).

Per polled batch (:meth:`IndexWorker.handle_batch`):

1. each event record gives its key (tenant, uid, time); each chunk record its (tenant, sid, seq);
   a record that does not decode is skipped (the persist worker dead-letters it);
2. wait until each is durable in PostgreSQL: the event row / the chunk row exists, and for a
   chunk, the segmenter (:mod:`ingest.segmenter`) has rendered past its seq (segments are
   written after the chunk's transaction). A key still absent after the persist group
   committed past its record was refused by the persist worker (dead-lettered there): skipped.
   Otherwise the persist worker or the segmenter is behind: wait and look again (never commit
   past them);
3. documents: the events' rows, and for each session with chunks in the batch its segments
   from the first one this worker has not indexed yet (all of them after a session.start /
   session.end event, which re-syncs the session's fields into its segments);
4. bulk-index them under idempotent ``_id``s (:func:`storage.search.opensearch.index_documents`:
   one bounded request in flight, retry with backoff on connection errors/429/5xx, forever);
   an item OpenSearch refuses for good (a 4xx such as a mapping error) goes to the dead-letter
   topic with reason ``index_rejected``, the original record's bytes and the refusal;
5. only then commit the Kafka offsets.

A crash anywhere before 5 redelivers the batch; indexing the same rows again changes nothing.

OpenSearch that lost its data (a restarted in-memory server, a wiped cluster, or a first start
against a database that already has rows): OpenSearch holds a marker document written by the
last complete ``reindex``. Before its first bulk, and again before every bulk that follows a
failed request, the worker installs missing index templates (so no index is ever created with
dynamic mappings) and checks the marker; when it is absent the worker rebuilds OpenSearch from
PostgreSQL (:func:`storage.search.reindex.reindex`) before going on, then writes the marker.
So after an outage the index converges to PostgreSQL's content with no operator action; the
``sessionvault reindex`` command does the same rebuild by hand.

Known limit: with several members in the group, a member that read a row before another member
re-read it after a change (a later kube.request stage, a session.start re-sync) may write its
older copy last; the next change to that row or a ``reindex`` repairs it.

Kafka calls run on one dedicated thread (kafka-python's consumer is not thread-safe);
PostgreSQL uses asyncpg on the event loop; OpenSearch calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from ingest import metrics
from ingest.consumer import BatchConsumer, Record
from ingest.deadletter import DeadLetterProducer
from ingest.kafka import security_config
from ingest.runtime import BatchReport as StageReport
from ingest.runtime import DeadLetter, KafkaRuntime, StageStats
from ingest.topics import admin_client, group_offsets
from schemas.codec import decode_chunk_header, decode_event
from sessionvault.backoff import backoff_ms
from sessionvault.errors import (
    SearchBackendError,
    StorageError,
    TransportError,
    ValidationError,
)
from sessionvault.settings import Settings, require
from storage import pg
from storage.persist_logic import parse_time
from storage.search import model, watermark
from storage.search.opensearch import BulkAction, OpenSearchStore, index_documents
from storage.search.reindex import (
    event_action,
    load_events,
    load_segments,
    reindex,
    segment_action,
    stored_chunks,
)
from storage.segment_store import rendered_through, unsynced_sessions

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_GROUP = "index"
PERSIST_GROUP = "persist"
#: Longest pause between two looks at PostgreSQL while the persist worker is behind.
DURABLE_WAIT_MAX_MS = 2_000
#: Sessions whose next segment number is remembered (least recently used dropped first).
SEG_CURSOR_CAPACITY = 100_000
#: Event types whose arrival re-syncs the session's fields into its segments.
RESYNC_EVENTS = frozenset({"session.start", "session.end"})
#: Longest time between two checks that OpenSearch still holds a complete copy.
COMPLETENESS_CHECK_S = 5.0


#: How often the index worker refreshes the search watermark's age gauge.
WATERMARK_EVERY_S = 5.0


@dataclass(frozen=True)
class IndexBatchReport(StageReport):
    """What one batch did (passed to ``on_batch``)."""

    events: int
    segments: int
    indexed: int
    skipped: int
    durable_waits: int


@dataclass
class IndexStats(StageStats):
    """Running totals since the worker started."""

    indexed: int = 0
    skipped: int = 0
    reindexes: int = 0
    os_retries: int = 0


@dataclass(frozen=True)
class _Look:
    """What one look at PostgreSQL found for a batch's keys (refs index the batch)."""

    rows: list[Any]
    chunks: set[tuple[str, int]]
    missing: list[int]
    unrendered: list[int]


@dataclass
class _Parsed:
    events: dict[tuple[str, str, datetime], int] = field(default_factory=dict)  # key -> ref
    chunks: dict[tuple[str, int], tuple[int, str]] = field(default_factory=dict)  # -> ref, tenant
    resync: dict[tuple[str, str], int] = field(default_factory=dict)  # (tenant, sid) -> ref
    skipped: int = 0


def parse_records(records: Sequence[Record], settings: Settings) -> _Parsed:
    """What each record notifies (pure). Undecodable records are counted as skipped."""
    out = _Parsed()
    for ref, rec in enumerate(records):
        value = rec.value
        try:
            if value is None:
                raise ValidationError("empty", "record has no value")
            if rec.topic == settings.topic_events:
                event = decode_event(value, max_bytes=settings.max_record_bytes)
                out.events[(event.tenant, event.uid, parse_time(event.time))] = ref
                if event.type in RESYNC_EVENTS and event.sid:
                    out.resync[(event.tenant, event.sid)] = ref
            elif rec.topic == settings.topic_chunks:
                header, _ = decode_chunk_header(value, settings.max_record_bytes)
                sid, seq, tenant = header.get("sid"), header.get("seq"), header.get("tenant")
                if not (isinstance(sid, str) and isinstance(seq, int) and isinstance(tenant, str)):
                    raise ValidationError("missing_field", "chunk header without sid/seq/tenant")
                out.chunks[(sid, seq)] = (ref, tenant)
            else:
                raise ValidationError("unknown_topic", f"no handler for topic {rec.topic!r}")
        except (ValidationError, ValueError) as exc:
            log.debug("index: skipping %s (the persist worker dead-letters it): %s", rec.where, exc)
            out.skipped += 1
    return out


class IndexWorker:
    """One member of the index consumer group; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str = DEFAULT_GROUP,
        persist_group: str = PERSIST_GROUP,
        prefix: str | None = None,
        consumer_factory: Callable[[], BatchConsumer] | None = None,
        deadletter_factory: Callable[[], DeadLetterProducer] | None = None,
        store_factory: Callable[[], OpenSearchStore] | None = None,
        connect: Callable[[str], Awaitable[pg.Connection]] = pg.connect,
        max_bulk_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        require(settings, "kafka_bootstrap", "postgres_dsn", "opensearch_url")
        self.settings = settings
        self.group_id = group_id
        self.persist_group = persist_group
        self.prefix = prefix = prefix or settings.opensearch_index_prefix
        self.stats = IndexStats()
        self._watermark_read_at = 0.0
        self.max_bulk_bytes = max_bulk_bytes
        self.rt = KafkaRuntime(
            settings,
            name="index",
            group_id=group_id,
            topics=[settings.topic_chunks, settings.topic_events],
            consumer_factory=consumer_factory,
            deadletter_factory=deadletter_factory,
            retried=(StorageError, TransportError, SearchBackendError),
            on_failure=self._on_failure,
            logger=log,
            stats=self.stats,
        )
        self.health = self.rt.health
        self.store = (
            store_factory or (lambda: OpenSearchStore(settings.opensearch_url, prefix=prefix))
        )()
        self._db = pg.Reconnecting(settings.postgres_dsn.get(), connector=connect)
        self._ready = False
        self._ready_checked = float("-inf")
        self._known_indices: set[str] = set()
        self._seg_next: OrderedDict[tuple[str, str], int] = OrderedDict()

    # -- plumbing ----------------------------------------------------------------------------

    async def _connection(self) -> pg.Connection:
        return await self._db.get()

    async def _drop_connection(self) -> None:
        await self._db.drop()

    async def _sleep_or_stop(self, seconds: float) -> None:
        await self.rt.sleep_or_stop(seconds)

    async def _on_failure(self, exc: Exception) -> None:
        if isinstance(exc, StorageError):
            await self._drop_connection()
        if isinstance(exc, SearchBackendError):
            self.stats.os_retries += 1
            self._ready = False  # check templates and completeness again before the next bulk

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """:meth:`ingest.runtime.Runtime.retry` (PostgreSQL, Kafka or OpenSearch unreachable:
        back off, capped); raises :class:`~ingest.runtime.Stopped` when asked to stop while
        waiting."""
        result, _ = await self.rt.retry(what, op)
        return result

    # -- OpenSearch readiness ----------------------------------------------------------------

    async def _ensure_ready(self) -> None:
        """Templates installed and OpenSearch complete (else: rebuild). Checked again at least
        every :data:`COMPLETENESS_CHECK_S`, not only after a failed request: a cluster emptied
        behind the worker's back while it answered fine must be rebuilt too, before a bulk
        creates its indices without templates."""
        now = time.monotonic()
        if self._ready and now - self._ready_checked < COMPLETENESS_CHECK_S:
            return
        await self._retry(
            "installing index templates", lambda: asyncio.to_thread(self.store.ensure_templates)
        )
        why = await self._retry(
            "checking the index is complete", lambda: asyncio.to_thread(self.store.completeness)
        )
        if why is not None:
            log.warning("index: %s; rebuilding it from PostgreSQL", why)
            self._seg_next.clear()
            self._known_indices.clear()
            await self._retry("rebuilding OpenSearch from PostgreSQL", self._reindex_all)
            self.stats.reindexes += 1
        self._ready = True
        self._ready_checked = now

    async def _reindex_all(self) -> None:
        conn = await self._connection()
        await reindex(
            conn,
            self.store,
            max_bulk_bytes=self.max_bulk_bytes,
            retry_backoff_max_ms=self.settings.retry_backoff_max_ms,
            sleep=self._sleep_or_stop,
        )

    async def _before_request(self) -> None:
        # Called after a failed bulk request: the cluster may have come back empty.
        self.health.failed("indexing into OpenSearch", "bulk request failed")
        self._ready = False
        await self._ensure_ready()

    # -- step 2: durability ------------------------------------------------------------------

    def _persist_committed(self) -> dict[tuple[str, int], int]:
        with admin_client(
            self.settings.kafka_bootstrap, security=security_config(self.settings)
        ) as admin:
            try:
                offsets = group_offsets(admin, self.persist_group)
            except Exception as exc:
                raise TransportError(
                    f"kafka: cannot read offsets of group {self.persist_group}: {exc}"
                ) from exc
        return {(tp.topic, tp.partition): offset for tp, offset in offsets.items()}

    async def _look(self, parsed: _Parsed) -> _Look:
        """One look at PostgreSQL for the keys of a batch."""
        conn = await self._connection()
        rows = await load_events(conn, parsed.events)
        found = {(r["tenant"], r["uid"], r["time"]) for r in rows}
        chunks = await stored_chunks(conn, parsed.chunks)
        missing = [ref for key, ref in parsed.events.items() if key not in found]
        missing += [ref for key, (ref, _) in parsed.chunks.items() if key not in chunks]
        # Segments are rendered after the chunk's commit, by the segmenter: a stored chunk
        # counts once the segmenter's position is past it (the segmenter never gives up
        # on a stored chunk, so this wait ends when it runs).
        through = await rendered_through(conn, [sid for sid, _ in chunks])
        unrendered = [
            ref
            for (sid, seq), (ref, _) in parsed.chunks.items()
            if (sid, seq) in chunks and through.get(sid, -1) < seq
        ]
        # A session.start/end re-indexes the session's segments: only once the segmenter
        # copied the enriched who/where into them.
        unsynced = await unsynced_sessions(conn, [sid for _, sid in parsed.resync])
        unrendered += [ref for (_, sid), ref in parsed.resync.items() if sid in unsynced]
        return _Look(rows, chunks, missing, unrendered)

    async def _durable_rows(
        self, records: Sequence[Record], parsed: _Parsed
    ) -> tuple[list[Any], set[tuple[str, int]], int]:
        """(event rows, stored chunk keys, waits) once every notified key is durable in
        PostgreSQL or known to be refused by the persist worker.

        Invariant: a key is judged refused only when it is absent from a look at PostgreSQL
        made AFTER reading the persist group's committed offsets past its record. The persist
        worker commits only after its write is durable, so by the time those offsets were read
        the row was either stored or refused for good. Reading the offsets after the look
        instead races the persist worker (write and commit landing between the two) and skips
        rows that are stored: their documents would never be indexed.
        """
        waits = 0
        while True:
            look = await self._look(parsed)
            committed: dict[tuple[str, int], int] = {}
            if look.missing:
                committed = await self.rt.kafka(self._persist_committed)
                look = await self._look(parsed)
            behind = [
                ref
                for ref in look.missing
                if committed.get((records[ref].topic, records[ref].partition), -1)
                <= records[ref].offset
            ]
            if not behind and not look.unrendered:
                # The persist worker committed past them without storing them: refused there.
                for ref in look.missing:
                    log.info(
                        "index: %s was not stored by the persist worker; skipped",
                        records[ref].where,
                    )
                return look.rows, look.chunks, waits
            waits += 1
            delay = min(DURABLE_WAIT_MAX_MS, backoff_ms(waits, DURABLE_WAIT_MAX_MS)) / 1000
            # Not an error, but no progress either: a stopped persist worker or segmenter holds
            # this worker too, and status must say so.
            self.health.failed(
                "waiting for PostgreSQL to hold the batch",
                f"{len(behind)} records not persisted, {len(look.unrendered)} not rendered"
                " (persist worker or segmenter behind)",
            )
            if not behind:
                log.log(
                    logging.WARNING if waits % 30 == 0 else logging.DEBUG,
                    "index: %d records stored but not rendered into text yet (e.g. %s); waiting"
                    " %.1fs (is a segmenter running? sessionvault worker segments)",
                    len(look.unrendered),
                    records[look.unrendered[0]].where,
                    delay,
                )
                await self._sleep_or_stop(delay)
                continue
            log.debug(
                "index: %d records not yet persisted, %d not rendered (e.g. %s); waiting %.1fs",
                len(behind),
                len(look.unrendered),
                records[(behind or look.unrendered)[0]].where,
                delay,
            )
            await self._sleep_or_stop(delay)

    # -- step 3: documents -------------------------------------------------------------------

    async def _segment_start(self, tenant: str, sid: str) -> int:
        """First segment of ``sid`` not known to be indexed: remembered, else asked of
        OpenSearch (a contiguous prefix 0..n-1 indexed means n; anything else means 0)."""
        key = (tenant, sid)
        if key in self._seg_next:
            self._seg_next.move_to_end(key)
            return self._seg_next[key]
        body = {
            "query": {
                "bool": {
                    "filter": [
                        {"term": {"tenant": tenant}},
                        {"term": {"kind": model.KIND_OUTPUT}},
                        {"term": {"sid": sid}},
                    ]
                }
            },
            "sort": [{"seg_no": {"order": "desc"}}],
            "size": 1,
            "_source": ["seg_no"],
            "track_total_hits": True,
        }
        result = await asyncio.to_thread(self.store.search, body)
        hits = result["hits"]["hits"]
        total = result["hits"].get("total", {})
        count = int(total.get("value", 0)) if isinstance(total, dict) else int(total or 0)
        if hits and int(hits[0]["_source"]["seg_no"]) + 1 == count:
            return count
        return 0

    def _remember(self, tenant: str, sid: str, seg_next: int) -> None:
        key = (tenant, sid)
        self._seg_next[key] = max(seg_next, self._seg_next.get(key, 0))
        self._seg_next.move_to_end(key)
        while len(self._seg_next) > SEG_CURSOR_CAPACITY:
            self._seg_next.popitem(last=False)

    async def _documents(
        self, parsed: _Parsed, rows: list[Any], chunks: set[tuple[str, int]]
    ) -> tuple[list[BulkAction], dict[str, int], dict[tuple[str, str], int], int, int]:
        refs: dict[str, int] = {}
        actions: list[BulkAction] = []
        for row in rows:
            action = event_action(row, prefix=self.prefix)
            actions.append(action)
            refs[action.id] = parsed.events[(row["tenant"], row["uid"], row["time"])]
        n_events = len(actions)
        sessions: dict[tuple[str, str], tuple[int, bool]] = {}
        for (sid, seq), (ref, tenant) in parsed.chunks.items():
            if (sid, seq) in chunks:
                sessions[(tenant, sid)] = (ref, False)
        for key, ref in parsed.resync.items():
            sessions[key] = (ref, True)
        cursors: dict[tuple[str, str], int] = {}
        conn = await self._connection()
        for (tenant, sid), (ref, full) in sessions.items():
            start = (
                0
                if full
                else await self._retry(
                    "asking OpenSearch for a session's segments",
                    lambda t=tenant, s=sid: self._segment_start(t, s),  # type: ignore[misc]
                )
            )
            seg_rows = await load_segments(conn, tenant, sid, from_seg_no=start)
            for r in seg_rows:
                action = segment_action(r, prefix=self.prefix)
                actions.append(action)
                refs[action.id] = ref
            if seg_rows:
                cursors[(tenant, sid)] = int(seg_rows[-1]["seg_no"]) + 1
        return actions, refs, cursors, n_events, len(actions) - n_events

    # -- the batch step ----------------------------------------------------------------------

    async def handle_batch(
        self, records: Sequence[Record], *, commit: bool = True
    ) -> IndexBatchReport:
        """Steps 1-5 of the module docstring for one polled batch."""
        t0 = time.monotonic()
        parsed = parse_records(records, self.settings)
        rows, chunks, waits = await self._retry(
            "reading PostgreSQL", lambda: self._durable_rows(records, parsed)
        )
        actions, refs, cursors, n_events, n_segments = await self._retry(
            "reading PostgreSQL", lambda: self._documents(parsed, rows, chunks)
        )
        indexed = 0
        rejects: dict[int, list[str]] = {}
        if actions:
            await self._ensure_ready()
            done = await index_documents(
                self.store,
                actions,
                max_bulk_bytes=self.max_bulk_bytes,
                retry_backoff_max_ms=self.settings.retry_backoff_max_ms,
                sleep=self._sleep_or_stop,
                before_request=self._before_request,
            )
            indexed = done.indexed
            self.stats.os_retries += done.retries
            for action, failure in done.rejected:
                rejects.setdefault(refs[action.id], []).append(
                    f"{action.id}: HTTP {failure.status} {failure.reason}"
                )
            refused = [
                (str(a.doc.get("tenant", "")), int(a.doc.get("time_us", 0)))
                for a, _ in done.rejected
            ]
            if refused:
                # Before the commit clears these records' pending rows: search keeps answering
                # this tenant's time from PostgreSQL, where the refused document is.
                await self._retry(
                    "recording refused documents",
                    lambda: self._on_conn(lambda c: watermark.record_refused(c, refused)),
                )
            written = {a.index for a in actions} - self._known_indices
            if written:
                await self._retry(
                    "listing new indices in the marker",
                    lambda: asyncio.to_thread(self.store.note_indices, written),
                )
                self._known_indices |= written
        letters = [
            DeadLetter(ref, "index_rejected", "OpenSearch refused: " + "; ".join(reasons))
            for ref, reasons in sorted(rejects.items())
        ]
        for (tenant, sid), nxt in cursors.items():
            self._remember(tenant, sid, nxt)
        done_batch = await self.rt.finish(records, letters, commit=commit)
        offsets, committed = done_batch.offsets, done_batch.committed
        if committed:
            await self._clear_pending(offsets)
        report = IndexBatchReport(
            records=len(records),
            events=n_events,
            segments=n_segments,
            indexed=indexed,
            skipped=parsed.skipped,
            dead_letters=len(rejects),
            durable_waits=waits,
            offsets=offsets,
            committed=committed,
            seconds=time.monotonic() - t0,
        )
        self.stats.indexed += report.indexed
        self.stats.skipped += report.skipped
        return report

    async def _on_conn(self, op: Callable[[pg.Connection], Awaitable[T]]) -> T:
        return await op(await self._connection())

    async def _clear_pending(self, offsets: dict[tuple[str, int], int]) -> None:
        """Move the search watermark past what was just committed. Never blocks indexing: a
        failure leaves the rows, which only keeps search on PostgreSQL a little longer (the next
        commit on the partition deletes them too)."""
        try:
            await self._on_conn(lambda c: watermark.clear_pending(c, offsets))
            if time.monotonic() - self._watermark_read_at >= WATERMARK_EVERY_S:
                self._watermark_read_at = time.monotonic()
                behind = await self._on_conn(watermark.backlog)
                oldest = behind.oldest_created_us
                age_s = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1e6)
                metrics.WATERMARK_AGE.set(age_s)
        except StorageError as exc:
            log.warning("index: search watermark not moved yet: %s", exc)
            await self._drop_connection()

    # -- the loop ----------------------------------------------------------------------------

    async def run(
        self,
        stop: asyncio.Event | None = None,
        on_batch: Callable[[IndexBatchReport], object] | None = None,
    ) -> None:
        """Consume until ``stop`` is set (see the module docstring for guarantees)."""
        try:
            await self.rt.run(
                self.handle_batch, stop=stop, on_batch=on_batch, on_start=self._ensure_ready
            )
        finally:
            await self._close()

    async def _close(self) -> None:
        await self.rt.close()
        await self._drop_connection()
        self.store.close()


async def run_index_worker(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_batch: Callable[[IndexBatchReport], object] | None = None,
    group_id: str = DEFAULT_GROUP,
    prefix: str | None = None,
) -> None:
    """Run one index worker until ``stop`` is set (see the module docstring)."""
    await IndexWorker(settings, group_id=group_id, prefix=prefix).run(stop=stop, on_batch=on_batch)


__all__ = [
    "DEFAULT_GROUP",
    "IndexBatchReport",
    "IndexStats",
    "IndexWorker",
    "parse_records",
    "run_index_worker",
]
