"""The persist worker: Kafka (chunks + events) -> validate -> zstd -> PostgreSQL -> commit.

The invariant, enforced by the order of the calls in :meth:`PersistWorker.handle_batch`:

1. poll a batch (records in offset order per partition);
2. decode and validate every record; a bad one becomes a dead letter, the rest go on;
3. write the whole batch to PostgreSQL in ONE transaction and commit it (retried with
   exponential backoff while PostgreSQL is unreachable; nothing later happens before it
   succeeds);
4. send the batch's dead letters and flush them (confirmed by the broker);
5. only then commit the Kafka offsets (last processed + 1 per partition).

A crash anywhere before 5 redelivers the batch; every write is idempotent (``(sid, seq)``,
``(uid, time)``, counters folded from rows actually inserted, see :mod:`storage.chunkstore`),
so a redelivered batch changes nothing. A crash between 4 and 5 may duplicate dead letters,
never stored data.

Kafka calls run on one dedicated thread (kafka-python's consumer is not thread-safe);
PostgreSQL calls use asyncpg on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from operator import attrgetter, itemgetter
from typing import TypeVar

from ingest.consumer import BatchConsumer, Record
from ingest.deadletter import DeadLetterProducer
from ingest.runtime import BatchReport as StageReport
from ingest.runtime import DeadLetter, KafkaRuntime, StageStats
from schemas.codec import decode_event, decode_packed_chunk
from sessionvault.errors import DataRejectedError, StorageError, TransportError, ValidationError
from sessionvault.settings import Settings, require
from storage import pg
from storage.chunkstore import (
    DEFAULT_METHOD,
    ChunkWriteResult,
    close_abandoned,
    enqueue_segments,
    write_chunks,
)
from storage.codec import Compressor, store_index
from storage.datakeys import DATA_KEYS, configure
from storage.dicts import latest_dictionary
from storage.eventstore import (
    SESSION_END,
    SESSION_START,
    enrich_sessions,
    ensure_partitions,
    insert_events,
    known_partitions,
)
from storage.evidence_store import Ledger
from storage.persist_logic import (
    EventRow,
    PreparedChunk,
    Reject,
    check_chunk_storable,
    event_row,
    month_of,
)
from storage.search.model import to_us
from storage.search.watermark import PendingRecord, record_pending

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_GROUP = "persist"
DICT_REFRESH_S = 60.0
ABANDON_CHECK_INTERVAL_S = 60.0


@dataclass
class PreparedBatch:
    """A polled batch after decoding: what to store, what to dead-letter."""

    records: Sequence[Record]
    chunks: list[PreparedChunk] = field(default_factory=list)
    events: list[tuple[int, EventRow]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def subset(self, ref: int) -> PreparedBatch:
        """The part of this batch that came from record ``ref`` (for isolating a bad one)."""
        return PreparedBatch(
            self.records,
            [c for c in self.chunks if c.ref == ref],
            [e for e in self.events if e[0] == ref],
        )

    def refs(self) -> list[int]:
        return sorted({c.ref for c in self.chunks} | {ref for ref, _ in self.events})


def prepare_batch(
    records: Sequence[Record], settings: Settings, compressor: Compressor
) -> PreparedBatch:
    """Decode, validate and compress a batch (pure CPU work, no I/O)."""
    out = PreparedBatch(records)
    for i, rec in enumerate(records):
        value = rec.value
        try:
            if value is None:
                raise ValidationError("empty", "record has no value")
            if rec.topic == settings.topic_chunks:
                # Packed: the frame index as the record carries it (version 2) or built from
                # the header's list (version 1), the payload the record's tail; no frame
                # object is made (per-frame work was most of this stage).
                chunk = decode_packed_chunk(value, max_bytes=settings.max_record_bytes)
                check_chunk_storable(chunk)
                codec, dict_id, stored = compressor.compress(chunk.payload)
                index = store_index(chunk.index)
                out.chunks.append(
                    PreparedChunk(i, chunk, codec, dict_id, stored, index, chunk.payload_len)
                )
            elif rec.topic == settings.topic_events:
                event = decode_event(value, max_bytes=settings.max_record_bytes)
                out.events.append((i, event_row(event, value)))
            else:
                raise ValidationError("unknown_topic", f"no handler for topic {rec.topic!r}")
        except ValidationError as exc:
            out.rejects.append(Reject(i, exc.reason, str(exc)))
    return out


def merge_pieces(
    records: Sequence[Record], pieces: Sequence[PreparedBatch]
) -> PreparedBatch | None:
    """The batch ``records`` from pieces of it prepared apart, as they were fetched (each
    piece's refs index its own ``records``): refs re-pointed into ``records`` and every list in
    ref order, so the result equals ``prepare_batch(records, ...)``. None when the pieces hold
    other records than exactly those of the batch (the caller then prepares it whole)."""
    if sum(len(p.records) for p in pieces) != len(records):
        return None
    where = {id(r): i for i, r in enumerate(records)}
    out = PreparedBatch(records)
    seen: set[int] = set()
    for piece in pieces:
        own = [where.get(id(r), -1) for r in piece.records]
        seen.update(own)
        out.chunks.extend(replace(c, ref=own[c.ref]) for c in piece.chunks)
        out.events.extend((own[i], row) for i, row in piece.events)
        out.rejects.extend(replace(r, ref=own[r.ref]) for r in piece.rejects)
    if -1 in seen or len(seen) != len(records):
        return None
    out.chunks.sort(key=attrgetter("ref"))
    out.events.sort(key=itemgetter(0))
    out.rejects.sort(key=attrgetter("ref"))
    return out


@dataclass
class StoreResult:
    chunks: ChunkWriteResult = field(default_factory=ChunkWriteResult)
    events_offered: int = 0
    events_inserted: int = 0
    enriched: int = 0


async def store_batch(
    conn: pg.Connection,
    batch: PreparedBatch,
    *,
    partitions: set[str],
    insert_method: str = DEFAULT_METHOD,
    index_pending: bool = False,
    seal: bool = False,
    ledger: bool = True,
) -> StoreResult:
    """Write a prepared batch in ONE transaction (partitions are created before it).

    ``partitions`` caches the event partitions known to exist (updated in place).
    ``index_pending`` (OpenSearch configured): also record, in the same transaction, what
    search has still to index (:mod:`storage.search.watermark`), so that no stored row is ever
    outside the search watermark's pending set before the index worker has indexed it.
    ``seal``: encrypt the payloads at rest (:mod:`storage.datakeys`); ``ledger``: record
    what is stored for the evidence checkpoints (:mod:`storage.evidence_store`).
    """
    rows = [row for _, row in batch.events]
    months = {m for m in (month_of(r.time) for r in rows) if m is not None}
    await ensure_partitions(conn, months, partitions)
    result = StoreResult(events_offered=len(rows))
    try:
        async with conn.transaction():
            # The evidence ledger: what this transaction stored, committed with it (the
            # checkpointer signs it later, storage.evidence_store).
            stored = Ledger() if ledger else None
            # Encryption at rest: sealed here, inside the transaction that locks the live key.
            chunks = await DATA_KEYS.seal_batch(conn, batch.chunks) if seal else batch.chunks
            result.chunks = await write_chunks(conn, chunks, method=insert_method, ledger=stored)
            result.events_inserted = await insert_events(conn, rows, ledger=stored)
            if stored is not None:
                await stored.write(conn)
            keys = {(r.tenant, r.sid) for r in rows if r.sid and r.event in _ENRICHING}
            opened = set(result.chunks.opened)
            keys |= {(c.chunk.tenant, c.sid) for c in batch.chunks if c.sid in opened}
            result.enriched = await enrich_sessions(conn, keys)
            # Text segments are rendered (and copy who/where from their session) by the
            # segmenter, later: here only the cheap enqueue, so search never slows persistence.
            todo = {sid: st.tenant for sid, st in result.chunks.sessions.items()}
            if result.enriched:
                todo.update((sid, tenant) for tenant, sid in keys)
            await enqueue_segments(conn, todo)
            if index_pending:
                await record_pending(conn, pending_records(batch))
    except StorageError:
        raise
    except Exception as exc:  # commit itself failed (connection lost mid-commit, ...)
        raise pg.translate(exc, "cannot commit batch") from exc
    return result


_ENRICHING = frozenset({SESSION_START, SESSION_END})


def pending_records(batch: PreparedBatch) -> list[PendingRecord]:
    """What of ``batch`` the index worker has still to index (pure): each event at its time
    (a session start/end also re-syncs its session's segments), each chunk for its session."""
    out = []
    for c in batch.chunks:
        rec = batch.records[c.ref]
        out.append(PendingRecord(c.chunk.tenant, rec.topic, rec.partition, rec.offset, None, c.sid))
    for ref, row in batch.events:
        rec = batch.records[ref]
        sid = row.sid if row.sid and row.event in _ENRICHING else None
        out.append(
            PendingRecord(row.tenant, rec.topic, rec.partition, rec.offset, to_us(row.time), sid)
        )
    return out


@dataclass(frozen=True)
class BatchReport(StageReport):
    """What one batch did (passed to ``on_batch``)."""

    bytes: int
    chunks_inserted: int
    chunks_duplicate: int
    raw_bytes: int
    stored_bytes: int
    events_inserted: int
    events_duplicate: int
    db_attempts: int


@dataclass
class WorkerStats(StageStats):
    """Running totals since the worker started."""

    bytes: int = 0
    chunks_inserted: int = 0
    events_inserted: int = 0
    db_retries: int = 0
    abandoned: int = 0


class PersistWorker:
    """One member of the persist consumer group. Use :meth:`run` (or
    :func:`run_persist_worker`); :meth:`handle_batch` is the per-batch step (also for benches).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str = DEFAULT_GROUP,
        consumer_factory: Callable[[], BatchConsumer] | None = None,
        deadletter_factory: Callable[[], DeadLetterProducer] | None = None,
        connect: Callable[[str], Awaitable[pg.Connection]] = pg.connect,
        insert_method: str = DEFAULT_METHOD,
    ) -> None:
        require(settings, "kafka_bootstrap", "postgres_dsn")
        self.settings = settings
        configure(settings)
        self.group_id = group_id
        self.stats = WorkerStats()
        self.rt = KafkaRuntime(
            settings,
            name="persist",
            group_id=group_id,
            topics=[settings.topic_chunks, settings.topic_events],
            consumer_factory=consumer_factory,
            deadletter_factory=deadletter_factory,
            retried=(StorageError, TransportError),
            on_failure=self._on_failure,
            logger=log,
            stats=self.stats,
        )
        self.health = self.rt.health
        self._db = pg.Reconnecting(settings.postgres_dsn.get(), connector=connect)
        self._insert_method = insert_method
        self._next_abandon_check = 0.0
        self._partitions: set[str] | None = None
        self._compressor = Compressor(settings.zstd_level)
        self._dict_checked_at = float("-inf")
        # The CPU stage runs on its own thread, one batch at a time (a zstd compressor is not
        # thread-safe), so a prefetched batch is decoded and compressed while the batch before
        # it is written: zstd and sha256 release the GIL.
        self._cpu = ThreadPoolExecutor(1, thread_name_prefix="sv-persist-cpu")
        # A prefetching poll's fetches, handed to the CPU stage as they arrive (on the Kafka
        # thread), then the batch they make up: its CPU stage runs while the poll gathers the
        # rest, not only once the poll is over (KafkaRuntime.run's ahead_piece and ahead).
        self._pieces: list[Future[PreparedBatch]] = []
        self._ahead: tuple[Sequence[Record], list[Future[PreparedBatch]]] | None = None

    # -- PostgreSQL --------------------------------------------------------------------------

    async def _connection(self) -> pg.Connection:
        conn = await self._db.get()
        if self._partitions is None:
            self._partitions = await known_partitions(conn)
        return conn

    async def _drop_connection(self) -> None:
        self._partitions = None  # re-read on the next connection
        await self._db.drop()

    async def _on_failure(self, exc: Exception) -> None:
        if isinstance(exc, StorageError):
            await self._drop_connection()
            self.stats.db_retries += 1

    async def _refresh_dictionary(self) -> None:
        """Switch to the newest trained dictionary (checked at most once a minute). Best
        effort: with PostgreSQL down the batch is compressed with what we have."""
        now = time.monotonic()
        if now - self._dict_checked_at < DICT_REFRESH_S:
            return
        self._dict_checked_at = now
        try:
            latest = await latest_dictionary(await self._connection())
        except StorageError as exc:
            log.debug("persist: dictionary check skipped: %s", exc)
            await self._drop_connection()
            return
        current = self._compressor.dictionary
        if latest is not None and (current is None or current.id != latest.id):
            self._compressor = Compressor(self.settings.zstd_level, latest)
            log.info("persist: using zstd dictionary %d for small payloads", latest.id)

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> tuple[T, int]:
        """:meth:`ingest.runtime.Runtime.retry`; a value PostgreSQL refuses
        (:class:`DataRejectedError`) propagates at once: the caller isolates the record."""
        return await self.rt.retry(what, op, passthrough=(DataRejectedError,))

    async def _store(self, batch: PreparedBatch) -> StoreResult:
        conn = await self._connection()
        assert self._partitions is not None
        return await store_batch(
            conn,
            batch,
            partitions=self._partitions,
            insert_method=self._insert_method,
            index_pending=bool(self.settings.opensearch_url),
            seal=self.settings.encrypt_at_rest,
            ledger=self.settings.evidence_ledger,
        )

    async def _store_with_retry(self, batch: PreparedBatch) -> tuple[StoreResult, int]:
        """Store the batch; if PostgreSQL refuses a value, store record by record and
        dead-letter the refused ones (reason ``storage_rejected``)."""
        try:
            return await self._retry("PostgreSQL write", lambda: self._store(batch))
        except DataRejectedError as exc:
            log.warning("persist: batch refused by PostgreSQL (%s); isolating records", exc)
        total = StoreResult()
        attempts = 0
        for ref in batch.refs():
            try:
                res, n = await self._store_one(batch.subset(ref))
            except DataRejectedError as exc:
                batch.rejects.append(Reject(ref, "storage_rejected", str(exc)))
                continue
            attempts += n
            c = total.chunks
            c.rejects += res.chunks.rejects
            c.offered += res.chunks.offered
            c.inserted += res.chunks.inserted
            c.raw_bytes += res.chunks.raw_bytes
            c.stored_bytes += res.chunks.stored_bytes
            total.events_offered += res.events_offered
            total.events_inserted += res.events_inserted
        return total, attempts

    async def _store_one(self, part: PreparedBatch) -> tuple[StoreResult, int]:
        return await self._retry("PostgreSQL write", lambda: self._store(part))

    # -- the batch step ----------------------------------------------------------------------

    async def handle_batch(self, records: Sequence[Record], *, commit: bool = True) -> BatchReport:
        """Process one polled batch through steps 2-5 of the module invariant.

        Raises :class:`ingest.runtime.Stopped` if asked to stop while PostgreSQL or Kafka is
        unreachable;
        the batch is then left uncommitted and will be redelivered.
        """
        t0 = time.monotonic()
        await self._refresh_dictionary()
        batch = await self._prepared(records)
        # Step 3: durable write (returns only once committed in PostgreSQL).
        result, attempts = await self._store_with_retry(batch)
        rejects = sorted(batch.rejects + result.chunks.rejects, key=lambda r: r.ref)
        # Steps 4 and 5: dead letters, confirmed; then the offsets, only now.
        done = await self.rt.finish(
            records, [DeadLetter(r.ref, r.reason, r.message) for r in rejects], commit=commit
        )
        offsets, committed = done.offsets, done.committed
        report = BatchReport(
            records=len(records),
            bytes=sum(r.size for r in records),
            chunks_inserted=result.chunks.inserted,
            chunks_duplicate=result.chunks.duplicates,
            raw_bytes=result.chunks.raw_bytes,
            stored_bytes=result.chunks.stored_bytes,
            events_inserted=result.events_inserted,
            events_duplicate=result.events_offered - result.events_inserted,
            dead_letters=len(rejects),
            offsets=offsets,
            committed=committed,
            db_attempts=attempts,
            seconds=time.monotonic() - t0,
        )
        s = self.stats
        s.bytes += report.bytes
        s.chunks_inserted += report.chunks_inserted
        s.events_inserted += report.events_inserted
        return report

    def _prepare(self, records: Sequence[Record]) -> Future[PreparedBatch]:
        """The CPU stage of ``records`` on its thread (callable from any thread: one CPU
        thread runs the jobs in turn, so the zstd context is never shared)."""
        return self._cpu.submit(prepare_batch, records, self.settings, self._compressor)

    def _prepare_piece(self, piece: Sequence[Record]) -> None:
        """On the Kafka thread: start the CPU stage of one fetch of a prefetching poll."""
        self._pieces.append(self._prepare(piece))

    def _prepare_ahead(self, records: Sequence[Record]) -> None:
        """The prefetched batch the pieces started so far make up (see
        :meth:`KafkaRuntime.run`); without pieces its CPU stage starts now, whole."""
        pieces, self._pieces = self._pieces, []
        self._ahead = (records, pieces or [self._prepare(records)])

    async def _prepared(self, records: Sequence[Record]) -> PreparedBatch:
        """``records`` decoded and compressed: from the work started ahead for them, or now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] is records:
            parts = [await asyncio.wrap_future(f) for f in ahead[1]]
            merged = merge_pieces(records, parts)
            if merged is not None:
                return merged
        return await asyncio.wrap_future(self._prepare(records))

    async def _close_abandoned(self) -> None:
        """When idle (caught up), at most once a minute: close sessions whose recorder stopped
        without a final chunk (:func:`storage.chunkstore.close_abandoned`). Never fails the
        worker: PostgreSQL down only postpones it."""
        idle_ms = self.settings.session_abandon_after_ms
        now = time.monotonic()
        if idle_ms <= 0 or now < self._next_abandon_check:
            return
        self._next_abandon_check = now + min(ABANDON_CHECK_INTERVAL_S, idle_ms / 2000)
        try:
            closed = await close_abandoned(await self._connection(), idle_ms)
        except StorageError as exc:
            log.warning("persist: closing abandoned sessions postponed: %s", exc)
            await self._drop_connection()
            return
        for a in closed:
            log.warning(
                "persist: session %s of tenant %s abandoned: no final chunk, none for %d s"
                " after seq %d",
                a.sid,
                a.tenant,
                idle_ms // 1000,
                a.last_seq,
            )
        self.stats.abandoned += len(closed)

    # -- the loop ----------------------------------------------------------------------------

    async def lag(self) -> int | None:
        """Records behind the high watermark on this member's partitions (None: unknown)."""
        return await self.rt.lag()

    async def run(
        self,
        stop: asyncio.Event | None = None,
        on_batch: Callable[[BatchReport], object] | None = None,
    ) -> None:
        """Consume until ``stop`` is set. The batch in hand is finished and committed before
        returning (unless PostgreSQL or Kafka is unreachable at that moment: then it is left
        uncommitted, to be redelivered)."""
        try:
            await self.rt.run(
                self.handle_batch,
                stop=stop,
                on_batch=on_batch,
                on_idle=self._close_abandoned,
                prefetch=self.settings.persist_prefetch,
                ahead=self._prepare_ahead,
                ahead_piece=self._prepare_piece,
            )
        finally:
            await self._close()

    async def _close(self) -> None:
        await self.rt.close()
        await self._drop_connection()
        self._cpu.shutdown(wait=True)


async def run_persist_worker(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_batch: Callable[[BatchReport], object] | None = None,
    group_id: str = DEFAULT_GROUP,
) -> None:
    """Run one persist worker until ``stop`` is set (see the module docstring for guarantees)."""
    await PersistWorker(settings, group_id=group_id).run(stop=stop, on_batch=on_batch)


__all__ = [
    "BatchReport",
    "PersistWorker",
    "PreparedBatch",
    "StoreResult",
    "WorkerStats",
    "merge_pieces",
    "prepare_batch",
    "run_persist_worker",
    "store_batch",
]
