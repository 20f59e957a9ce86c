"""The segmenter: stored chunks -> rendered text segments (``text_segments``), after the fact.

Why a stage of its own: rendering terminal output and inserting the lines into the pg_trgm
GIN index inside the persist worker's transaction cut persistence from ~30 MB/s to 0.5 MB/s per
worker (docs/benchmarks.md). Durability of a recording must never wait for search, so the
persist worker only enqueues (:func:`storage.chunkstore.enqueue_segments`: a ``segment_queue``
upsert and ``NOTIFY sv_segments`` in its own transaction) and this stage does the rest.

It is driven by PostgreSQL alone (no Kafka): it LISTENs on ``sv_segments`` and also polls every
``poll_s`` seconds (a notification sent while it was reconnecting is not lost work, only a
later wake-up). Per queued session, ONE transaction:

1. ``pg_try_advisory_xact_lock`` on the session (several segmenters may run; a session being
   rendered by another one is skipped, not waited for);
2. read the queue row's ``gen``, the session's who/where (``FOR KEY SHARE``: it does not
   conflict with the persist worker's ``FOR NO KEY UPDATE``, but retention cannot delete the
   session under us), the position in ``session_text``, and up to ``chunk_batch`` chunks after
   ``text_seq`` in seq order;
3. if the session's who/where changed since its segments were written (``session.start``
   enrichment), update the segments (search filters use them);
4. render with :func:`replay.segments.render_session` (the same deterministic rendering
   the persist worker used to do), insert the segments (``ON CONFLICT DO NOTHING``), append
   their range to ``detect_feed`` (the detect worker's input, :mod:`storage.detect_feed`), store
   the new position;
5. if fewer than ``chunk_batch`` chunks were read (caught up), delete the queue row, but only
   if ``gen`` is unchanged: work enqueued meanwhile keeps it.

A crash (or a kill) between transactions loses nothing: an uncommitted transaction changed
nothing, so the next run starts from the same position and renders the same segments. The
rendering position only moves with the segments it produced, in the same commit.

Ordering: chunks are rendered in seq order from the last rendered seq. A chunk stored after
later chunks were rendered (a hole filled late) is not rendered (its text would be out of
order); a gap is rendered across. This is what the in-transaction renderer did too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ingest import metrics
from ingest.runtime import Runtime, Stopped
from replay.segments import SessionText, render_session
from schemas.frameindex import unpack_frames
from schemas.models import Chunk
from sessionvault.errors import IntegrityError, ShreddedError, StorageError
from sessionvault.settings import Settings, require
from storage import pg
from storage import segment_store as store
from storage.chunkstore import SEGMENT_CHANNEL
from storage.codec import Decompressor, load_index
from storage.datakeys import DATA_KEYS, configure, text_kept
from storage.dicts import dictionary
from storage.pg import translate
from storage.search.model import to_us

log = logging.getLogger(__name__)

#: Chunks rendered per session per transaction (bounds memory and transaction length).
CHUNK_BATCH = 64
#: Queued sessions taken per round.
SESSIONS_PER_ROUND = 64
#: Seconds between looks at the queue when no notification arrives.
POLL_S = 5.0

_WHO = ("user_name", "login", "server_id", "cluster_name", "kubernetes_cluster")


@dataclass
class SegmenterStats:
    """Running totals since the segmenter started."""

    rounds: int = 0
    sessions: int = 0
    chunks: int = 0
    segments: int = 0
    resynced: int = 0
    skipped_locked: int = 0
    bad_chunks: int = 0
    db_retries: int = 0


@dataclass(frozen=True)
class SessionStep:
    """What one transaction did for one session."""

    sid: str
    chunks: int
    segments: int
    resynced: int
    caught_up: bool
    locked: bool = False


class Segmenter:
    """Renders queued sessions' chunks into ``text_segments``; see the module docstring.

    :meth:`run` is the long-running loop; :meth:`step` one round (every queued session once)
    and :meth:`catch_up` rounds until the queue is empty (tests, benches, one-off backfills).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        connect: Callable[[str], Awaitable[pg.Connection]] = pg.connect,
        chunk_batch: int = CHUNK_BATCH,
        sessions_per_round: int = SESSIONS_PER_ROUND,
        poll_s: float = POLL_S,
    ) -> None:
        require(settings, "postgres_dsn")
        self.settings = settings
        configure(settings)
        self.chunk_batch = chunk_batch
        self.sessions_per_round = sessions_per_round
        self.poll_s = poll_s
        self.keyframe_every_bytes = settings.keyframe_every_bytes
        self.stats = SegmenterStats()
        self.rt = Runtime(
            settings,
            name="segmenter",
            retried=(StorageError,),
            on_failure=self._on_failure,
            logger=log,
        )
        self.health = self.rt.health
        self._db = pg.Reconnecting(
            settings.postgres_dsn.get(), connector=connect, on_connect=self._listen
        )
        self._decompressor = Decompressor()
        self._wake = asyncio.Event()

    # -- PostgreSQL --------------------------------------------------------------------------

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _listen(self, conn: pg.Connection) -> None:
        await conn.add_listener(SEGMENT_CHANNEL, self._notified)
        # Work may have been enqueued while we were not listening.
        self._wake.set()

    async def _connection(self) -> pg.Connection:
        return await self._db.get()

    async def close(self) -> None:
        await self._db.drop()

    async def _on_failure(self, exc: Exception) -> None:
        self.stats.db_retries += 1
        await self.close()

    async def _payload(
        self, conn: pg.Connection, tenant: str, sid: str, chunk: store.StoredChunk
    ) -> bytes:
        stored = await DATA_KEYS.open_payload(
            conn, tenant, sid, chunk.seq, chunk.key_id, chunk.payload
        )
        dict_id = chunk.dict_id
        if dict_id is not None and not self._decompressor.has_dictionary(dict_id):
            data = await dictionary(conn, dict_id)
            if data is None:
                raise ValueError(f"zstd dictionary {dict_id} is gone")
            self._decompressor.add_dictionary(dict_id, data)
        return self._decompressor.decompress(chunk.codec, dict_id, stored, chunk.raw_len)

    async def _chunks(self, conn: pg.Connection, tenant: str, sid: str, after: int) -> list[Chunk]:
        out = []
        for stored in await store.chunks_after(conn, sid, after, self.chunk_batch):
            try:
                payload = await self._payload(conn, tenant, sid, stored)
                frames = tuple(unpack_frames(load_index(stored.frames), payload))
            except (ValueError, KeyError, IntegrityError, ShreddedError) as exc:
                # A chunk we cannot decode must not stop the session's text for ever: its text
                # is left out (replay and verify report the damage), the rest is rendered.
                self.stats.bad_chunks += 1
                log.error("segmenter: sid %s seq %d: cannot decode chunk: %s", sid, stored.seq, exc)
                frames = ()
            out.append(Chunk(tenant, sid, stored.seq, frames, "", "", stored.final))
        return out

    async def process_session(self, sid: str) -> SessionStep:
        """One transaction for one queued session (steps 1-5 of the module docstring)."""
        conn = await self._connection()
        try:
            async with conn.transaction():
                return await self._process(conn, sid)
        except StorageError:
            raise
        except Exception as exc:
            raise translate(exc, f"cannot render text of session {sid}") from exc

    async def _process(self, conn: pg.Connection, sid: str) -> SessionStep:
        if not await store.try_lock_session(conn, sid):
            return SessionStep(sid, 0, 0, 0, False, locked=True)
        gen = await store.queue_generation(conn, sid)
        if gen is None:  # done by another segmenter since we listed the queue
            return SessionStep(sid, 0, 0, 0, True)
        sess = await store.session_for_text(conn, sid)
        if sess is None:
            # Never opened (session.start event without chunks) or deleted by retention.
            await store.dequeue(conn, sid, gen)
            return SessionStep(sid, 0, 0, 0, True)
        tenant, who = sess.tenant, sess.who
        if not text_kept(self.settings, tenant):
            # Encryption at rest without searchable text (docs/evidence.md): nothing derived
            # from the recording is stored in the clear.
            await store.dequeue(conn, sid, gen)
            return SessionStep(sid, 0, 0, 0, True)
        pos = await store.text_position(conn, sid)
        resynced = 0
        if pos is not None and pos.who != who:
            resynced = await store.restamp_segments(conn, sid, who)
        ctx = SessionText(
            tenant=tenant,
            sid=sid,
            started_us=to_us(sess.started_at),
            state=None if pos is None else pos.state,
            seg_next=0 if pos is None else pos.seg_next,
            text_seq=-1 if pos is None else pos.text_seq,
            user=who[0],
            login=who[1],
            server_id=who[2],
            cluster_name=who[3],
            kubernetes_cluster=who[4],
            cols=int(sess.cols),
            rows=int(sess.rows),
            kf_bytes=0 if pos is None else pos.kf_bytes,
            keyframe_every_bytes=self.keyframe_every_bytes,
        )
        chunks = await self._chunks(conn, tenant, sid, ctx.text_seq)
        done = render_session(ctx, chunks)
        await store.insert_segments(conn, done.segments)
        await store.insert_keyframes(
            conn, tenant, sid, [(k.after_seq, k.at_ms, k.to_bytes()) for k in done.keyframes]
        )
        await store.insert_markers(
            conn, tenant, sid, [(m.at_ms, m.kind, m.label) for m in done.markers]
        )
        if done.segments:
            # Same transaction as the segments: the detect worker sees a segment exactly when
            # it is committed (migration 006).
            await store.append_detect_feed(
                conn, tenant, sid, done.segments[0].seg_no, done.segments[-1].seg_no + 1
            )
        if pos is None or chunks or resynced or pos.who != who:
            position = store.TextPosition(
                done.state, done.seg_next, done.text_seq, who, done.kf_bytes
            )
            await store.save_text_position(conn, sid, tenant, position)
        caught_up = len(chunks) < self.chunk_batch
        if caught_up:
            # Last statement before the commit: the queue row stays locked only for the commit.
            await store.dequeue(conn, sid, gen)
        return SessionStep(sid, len(chunks), len(done.segments), resynced, caught_up)

    # -- rounds ------------------------------------------------------------------------------

    async def step(self) -> tuple[int, bool]:
        """One round over (up to ``sessions_per_round``) queued sessions, oldest first.
        Returns (sessions that made progress, whether work is known to remain)."""
        conn = await self._connection()
        metrics.SEGMENT_BACKLOG.set(await store.queue_length(conn))
        sids = await store.queued_sessions(conn, self.sessions_per_round)
        self.stats.rounds += 1
        progressed = 0
        remaining = len(sids) == self.sessions_per_round
        for sid in sids:
            st = await self.process_session(sid)
            s = self.stats
            if st.locked:
                s.skipped_locked += 1
                continue
            if st.chunks or st.resynced:
                progressed += 1
            s.sessions += 1
            s.chunks += st.chunks
            metrics.RECORDS.labels(self.rt.name).inc(st.chunks)  # chunks rendered
            s.segments += st.segments
            s.resynced += st.resynced
            remaining = remaining or not st.caught_up
        return progressed, remaining

    async def pending(self) -> int:
        """Sessions in the queue (0: every stored chunk is rendered)."""
        conn = await self._connection()
        return await store.queue_length(conn)

    async def catch_up(self, *, timeout_s: float = 300.0) -> None:
        """Render until the queue is empty (no retry: errors are raised)."""
        deadline = time.monotonic() + timeout_s
        while await self.pending():
            progressed, _ = await self.step()
            if not progressed and time.monotonic() > deadline:
                raise StorageError(f"segment queue not empty after {timeout_s}s")
            if not progressed:
                await asyncio.sleep(0.05)  # another segmenter holds the sessions left

    # -- the loop ----------------------------------------------------------------------------

    async def _wait_for_work(self) -> None:
        waiter = asyncio.ensure_future(self._wake.wait())
        stopper = asyncio.ensure_future(self.rt.stop.wait())
        try:
            await asyncio.wait(
                {waiter, stopper}, timeout=self.poll_s, return_when="FIRST_COMPLETED"
            )
        finally:
            waiter.cancel()
            stopper.cancel()

    async def run(
        self,
        stop: asyncio.Event | None = None,
        on_round: Callable[[SegmenterStats], object] | None = None,
    ) -> None:
        """Render queued sessions until ``stop`` is set. PostgreSQL unreachable: retry with
        capped exponential backoff (:meth:`ingest.runtime.Runtime.retry`), never crash."""
        try:
            async with self.rt.watching(stop):
                while not self.rt.stop.is_set():
                    self._wake.clear()
                    (_, remaining), _ = await self.rt.retry("rendering queued sessions", self.step)
                    self.health.progressed()
                    if on_round is not None:
                        on_round(self.stats)
                    if not remaining:
                        await self._wait_for_work()
        except Stopped:
            pass
        finally:
            await self.close()


async def run_segmenter(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_round: Callable[[SegmenterStats], object] | None = None,
) -> None:
    """Run one segmenter until ``stop`` is set (see the module docstring)."""
    await Segmenter(settings).run(stop=stop, on_round=on_round)


__all__ = [
    "CHUNK_BATCH",
    "Segmenter",
    "SegmenterStats",
    "SessionStep",
    "run_segmenter",
]
