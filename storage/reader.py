"""The read side of the chunk store: sessions and their frames, always scoped by tenant.

Invariants:

* Every query names the tenant. A session that does not exist and a session of another tenant
  raise the same :class:`NotFoundError` with the same message, so session ids of other tenants
  cannot be probed.
* :func:`iter_frames` streams: it fetches ``chunk_batch`` chunks at a time with keyset
  pagination on ``(sid, seq)`` and decompresses one chunk at a time, so memory is bounded by
  ``chunk_batch`` chunks, never by the session's size. No transaction or connection is held
  between batches (a slow consumer such as a real-time player may take hours).
* Frame offsets are non-decreasing across a session (the SDK stamps them from one monotonic
  clock); the seek in :func:`iter_frames` relies on it.
* asyncpg exceptions never leave this module: they are translated with
  :func:`storage.pg.translate`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeAlias

import orjson

from schemas.chain import chain_hash, verify_chain
from schemas.frameindex import unpack_frames
from schemas.models import Chunk, Frame
from sessionvault.errors import (
    NotFoundError,
    SessionVaultError,
    ShreddedError,
    StorageError,
    ValidationError,
)
from storage.codec import Decompressor, RawOutput, load_index, raw_output
from storage.datakeys import DATA_KEYS
from storage.pg import translate

log = logging.getLogger(__name__)

# An asyncpg Pool or Connection (asyncpg ships no type information).
Executor: TypeAlias = Any


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One row of ``sessions`` (field names are the column names)."""

    sid: str
    tenant: str
    kind: str
    user_name: str
    login: str
    server_id: str
    cluster_name: str
    kubernetes_cluster: str
    command: str
    term: str
    started_at: datetime
    ended_at: datetime | None
    cols: int
    rows: int
    duration_ms: int
    bytes: int
    stored_bytes: int
    chunks: int
    last_seq: int
    last_hash: str
    status: str
    integrity: str
    exit_code: int | None
    legal_hold: bool
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> SessionRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of :func:`verify_session`. ``message`` names the first fault when not ``ok``."""

    ok: bool
    chunks: int
    message: str


_SESSION_COLUMNS = ", ".join(f.name for f in fields(SessionRecord))


def _not_found(sid: str) -> NotFoundError:
    # Deliberately the same text whether the row is missing or belongs to another tenant.
    return NotFoundError(f"session {sid!r} not found")


async def get_session(db: Executor, tenant: str, sid: str) -> SessionRecord:
    """The session row of ``sid`` within ``tenant``; :class:`NotFoundError` otherwise."""
    try:
        row = await db.fetchrow(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE sid = $1 AND tenant = $2", sid, tenant
        )
    except Exception as exc:
        raise translate(exc, f"cannot read session {sid}") from exc
    if row is None:
        raise _not_found(sid)
    return SessionRecord.from_row(row)


async def session_exists(db: Executor, tenant: str, sid: str) -> bool:
    """Whether session ``sid`` of ``tenant`` is stored."""
    try:
        return bool(
            await db.fetchval("SELECT 1 FROM sessions WHERE sid = $1 AND tenant = $2", sid, tenant)
        )
    except Exception as exc:
        raise translate(exc, f"cannot read session {sid}") from exc


async def session_start_ms(db: Executor, tenant: str, sid: str) -> int | None:
    """When session ``sid`` of ``tenant`` started, in ms since the epoch (None: not stored)."""
    try:
        value = await db.fetchval(
            "SELECT (extract(epoch FROM started_at) * 1000)::bigint FROM sessions"
            " WHERE tenant = $1 AND sid = $2",
            tenant,
            sid,
        )
    except Exception as exc:
        raise translate(exc, f"cannot read session {sid}") from exc
    return None if value is None else int(value)


MIN_SID_PREFIX_CHARS = 4
"""A session may be named by a unique prefix of its id this long or longer (as git does)."""
_AMBIGUOUS_SHOWN = 5


async def resolve_sid(db: Executor, tenant: str, sid: str) -> str:
    """The full id of the ``tenant`` session that ``sid`` names: the id itself, else the one
    session whose id starts with ``sid`` (at least :data:`MIN_SID_PREFIX_CHARS` characters).
    :class:`NotFoundError` when none matches, :class:`ValidationError` (``ambiguous_sid``,
    listing some matches) when several do. Never looks outside ``tenant``."""
    from storage.search.model import escape_like

    try:
        if await db.fetchval("SELECT 1 FROM sessions WHERE sid = $1 AND tenant = $2", sid, tenant):
            return sid
        if len(sid) < MIN_SID_PREFIX_CHARS:
            raise _not_found(sid)
        rows = await db.fetch(
            "SELECT sid FROM sessions WHERE tenant = $1 AND sid LIKE $2 ESCAPE '\\'"
            " ORDER BY sid LIMIT $3",
            tenant,
            escape_like(sid) + "%",
            _AMBIGUOUS_SHOWN + 1,
        )
    except SessionVaultError:
        raise
    except Exception as exc:
        raise translate(exc, f"cannot look up session {sid}") from exc
    if not rows:
        raise _not_found(sid)
    if len(rows) > 1:
        shown = ", ".join(str(r["sid"]) for r in rows[:_AMBIGUOUS_SHOWN])
        more = ", ..." if len(rows) > _AMBIGUOUS_SHOWN else ""
        raise ValidationError(
            "ambiguous_sid",
            f"session prefix {sid!r} is ambiguous: {shown}{more} (give more characters)",
        )
    return str(rows[0]["sid"])


#: Session statuses as the console names them -> as stored.
SESSION_STATUSES = {"active": "active", "ended": "closed", "abandoned": "abandoned"}


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """Which sessions a list returns: every non-empty field must match (a tuple: any of its
    values). ``clusters`` is the reader's scope (:meth:`storage.tokens.Principal.cluster_scope`):
    None for every session of the tenant, else only Kubernetes sessions of those clusters."""

    user: tuple[str, ...] = ()
    login: tuple[str, ...] = ()
    server_id: tuple[str, ...] = ()
    cluster_name: tuple[str, ...] = ()
    kubernetes_cluster: tuple[str, ...] = ()
    kind: tuple[str, ...] = ()
    status: tuple[str, ...] = ()  # keys of SESSION_STATUSES
    since: datetime | None = None  # started at or after
    until: datetime | None = None  # started before
    clusters: tuple[str, ...] | None = None


_LIST_SQL = (
    f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE tenant = $1"
    " AND ($2::timestamptz IS NULL OR (started_at, sid) < ($2, $3))"
    " AND (cardinality($4::text[]) = 0 OR user_name = ANY($4))"
    " AND (cardinality($5::text[]) = 0 OR login = ANY($5))"
    " AND (cardinality($6::text[]) = 0 OR server_id = ANY($6))"
    " AND (cardinality($7::text[]) = 0 OR cluster_name = ANY($7))"
    " AND (cardinality($8::text[]) = 0 OR kubernetes_cluster = ANY($8))"
    " AND (cardinality($9::text[]) = 0 OR kind = ANY($9))"
    " AND (cardinality($10::text[]) = 0 OR status = ANY($10))"
    " AND ($11::timestamptz IS NULL OR started_at >= $11)"
    " AND ($12::timestamptz IS NULL OR started_at < $12)"
    " AND ($13::text[] IS NULL OR kubernetes_cluster = ANY($13))"
    " ORDER BY started_at DESC, sid DESC LIMIT $14"
)


async def list_sessions(
    db: Executor,
    tenant: str,
    *,
    limit: int = 50,
    after: tuple[datetime, str] | None = None,
    where: SessionFilter = SessionFilter(),
) -> list[SessionRecord]:
    """The tenant's sessions matching ``where``, newest first. Keyset paging: ``after`` is the
    ``(started_at, sid)`` of the last session of the previous page, so a page costs the same
    at any depth (index ``sessions_tenant_started_sid``)."""
    unknown = set(where.status) - set(SESSION_STATUSES)
    if unknown:
        raise ValidationError("bad_status", f"unknown session status {sorted(unknown)[0]!r}")
    try:
        rows = await db.fetch(
            _LIST_SQL,
            tenant,
            after[0] if after else None,
            after[1] if after else "",
            list(where.user),
            list(where.login),
            list(where.server_id),
            list(where.cluster_name),
            list(where.kubernetes_cluster),
            list(where.kind),
            [SESSION_STATUSES[s] for s in where.status],
            where.since,
            where.until,
            None if where.clusters is None else list(where.clusters),
            limit,
        )
    except Exception as exc:
        raise translate(exc, "cannot list sessions") from exc
    return [SessionRecord.from_row(r) for r in rows]


_CHUNK_BATCH_SQL = (
    "SELECT seq, first_offset_ms, last_offset_ms, frames, codec, dict_id, raw_len, payload,"
    " prev_hash, hash, key_id FROM chunks WHERE sid = $1 AND tenant = $2 AND seq > $3"
    " ORDER BY seq LIMIT $4"
)

# The last chunk starting strictly before the seek point may still hold frames at or after it;
# every earlier chunk ends at or before that chunk's first offset (offsets never decrease).
# Served by the (sid, first_offset_ms) index.
_SEEK_SQL = (
    "SELECT seq FROM chunks WHERE sid = $1 AND tenant = $2 AND first_offset_ms < $3"
    " ORDER BY first_offset_ms DESC, seq DESC LIMIT 1"
)


class _ChunkDecoder:
    """Decompresses stored chunks, fetching zstd dictionaries the first time one is needed."""

    def __init__(self, db: Executor, tenant: str, decompressor: Decompressor | None = None) -> None:
        self._db = db
        self._tenant = tenant
        self._dec = decompressor or Decompressor()

    async def payload(self, sid: str, row: Any) -> bytes:
        dict_id = row["dict_id"]
        if dict_id is not None and not self._dec.has_dictionary(dict_id):
            try:
                data = await self._db.fetchval("SELECT data FROM zstd_dicts WHERE id = $1", dict_id)
            except Exception as exc:
                raise translate(exc, f"cannot read zstd dictionary {dict_id}") from exc
            if data is None:
                raise StorageError(f"sid {sid} seq {row['seq']}: zstd dictionary {dict_id} is gone")
            self._dec.add_dictionary(dict_id, bytes(data))
        stored = await DATA_KEYS.open_payload(
            self._db, self._tenant, sid, row["seq"], row["key_id"], bytes(row["payload"])
        )
        try:
            payload = self._dec.decompress(row["codec"], dict_id, stored, row["raw_len"])
        except Exception as exc:
            err = StorageError(f"sid {sid} seq {row['seq']}: cannot decompress payload: {exc}")
            err.retriable = False
            raise err from exc
        return payload

    async def frames(self, sid: str, row: Any) -> list[Frame]:
        payload = await self.payload(sid, row)
        try:
            return unpack_frames(load_index(bytes(row["frames"])), payload)
        except Exception as exc:
            raise _index_error(sid, row, exc) from exc

    async def raw(self, sid: str, row: Any, from_ms: int) -> RawOutput:
        """The chunk's :class:`RawOutput` (output bytes from ``from_ms``, no frame objects)."""
        payload = await self.payload(sid, row)
        try:
            return raw_output(load_index(bytes(row["frames"])), payload, from_ms=from_ms)
        except Exception as exc:
            raise _index_error(sid, row, exc) from exc


def _index_error(sid: str, row: Any, exc: Exception) -> StorageError:
    """A stored frame index that does not fit its payload: the store is at fault, for good."""
    err = StorageError(f"sid {sid} seq {row['seq']}: frame index does not fit: {exc}")
    err.retriable = False
    return err


async def _iter_chunk_rows(
    db: Executor, tenant: str, sid: str, *, after_seq: int, chunk_batch: int
) -> AsyncIterator[Sequence[Any]]:
    last = after_seq
    while True:
        try:
            rows = await db.fetch(_CHUNK_BATCH_SQL, sid, tenant, last, chunk_batch)
        except Exception as exc:
            raise translate(exc, f"cannot read chunks of session {sid} after seq {last}") from exc
        if not rows:
            return
        yield rows
        if len(rows) < chunk_batch:
            return
        last = rows[-1]["seq"]


async def _seek_seq(db: Executor, tenant: str, sid: str, start_ms: int) -> int:
    """seq - 1 of the first chunk that may hold a frame at or after ``start_ms``."""
    if start_ms <= 0:
        return -1
    try:
        seq = await db.fetchval(_SEEK_SQL, sid, tenant, start_ms)
    except Exception as exc:
        raise translate(exc, f"cannot seek session {sid} to {start_ms} ms") from exc
    return -1 if seq is None else int(seq) - 1


async def check_readable(db: Executor, tenant: str, sid: str) -> None:
    """Raise :class:`ShreddedError` when a chunk of the session is sealed with a destroyed
    data key (crypto-shredding), before anything of it is sent."""
    try:
        row = await db.fetchrow(
            "SELECT k.key_id, k.destroyed_at FROM tenant_data_keys k WHERE k.tenant = $1"
            " AND k.wrapped IS NULL AND k.key_id IN (SELECT DISTINCT key_id FROM chunks"
            " WHERE sid = $2 AND tenant = $1 AND key_id IS NOT NULL) LIMIT 1",
            tenant,
            sid,
        )
    except Exception as exc:
        raise translate(exc, f"cannot read the data keys of session {sid}") from exc
    if row is not None:
        raise ShreddedError(
            f"session {sid} was crypto-shredded on {row['destroyed_at']:%Y-%m-%d %H:%M} UTC"
            f" (tenant {tenant}, data key {row['key_id']}): its recording cannot be read"
        )


async def iter_chunks(
    db: Executor, tenant: str, sid: str, *, chunk_batch: int = 8
) -> AsyncIterator[Chunk]:
    """Every stored chunk of the session (frames decompressed, hashes as stored), in seq
    order, one batch in memory at a time."""
    await get_session(db, tenant, sid)
    await check_readable(db, tenant, sid)
    decoder = _ChunkDecoder(db, tenant)
    async for rows in _iter_chunk_rows(db, tenant, sid, after_seq=-1, chunk_batch=chunk_batch):
        for row in rows:
            frames = tuple(await decoder.frames(sid, row))
            yield Chunk(tenant, sid, row["seq"], frames, row["prev_hash"], row["hash"])


async def iter_frames(
    db: Executor,
    tenant: str,
    sid: str,
    *,
    start_ms: int = 0,
    chunk_batch: int = 8,
    decompressor: Decompressor | None = None,
) -> AsyncIterator[Frame]:
    """Every frame of the session in order, streamed chunk by chunk (see
    :func:`iter_frame_lists`, which gives them a chunk at a time)."""
    async for frames in iter_frame_lists(
        db, tenant, sid, start_ms=start_ms, chunk_batch=chunk_batch, decompressor=decompressor
    ):
        for frame in frames:
            yield frame


async def iter_frame_lists(
    db: Executor,
    tenant: str,
    sid: str,
    *,
    start_ms: int = 0,
    chunk_batch: int = 8,
    decompressor: Decompressor | None = None,
) -> AsyncIterator[list[Frame]]:
    """The session's frames in order, one stored chunk's at a time (none empty).

    With ``start_ms``, exactly the frames with ``offset_ms >= start_ms`` (reading starts at the
    chunk that holds that offset, found through the ``(sid, first_offset_ms)`` index). Raises
    :class:`NotFoundError` when the session is not visible to ``tenant``, ShreddedError
    when it was crypto-shredded.
    """
    decoder = _ChunkDecoder(db, tenant, decompressor)
    async for row in _rows_from(db, tenant, sid, start_ms, chunk_batch):
        frames = await decoder.frames(sid, row)
        if frames and frames[0].offset_ms < start_ms:
            frames = [f for f in frames if f.offset_ms >= start_ms]
        if frames:
            yield frames


async def iter_raw_output(
    db: Executor,
    tenant: str,
    sid: str,
    *,
    start_ms: int = 0,
    chunk_batch: int = 8,
) -> AsyncIterator[RawOutput]:
    """The raw export's view of the session (:func:`storage.codec.raw_output`), one stored
    chunk at a time, from ``start_ms`` on; the same errors as :func:`iter_frame_lists`."""
    decoder = _ChunkDecoder(db, tenant)
    async for row in _rows_from(db, tenant, sid, start_ms, chunk_batch):
        yield await decoder.raw(sid, row, start_ms)


async def _rows_from(
    db: Executor, tenant: str, sid: str, start_ms: int, chunk_batch: int
) -> AsyncIterator[Any]:
    """The session's stored chunk rows that hold frames at or after ``start_ms``, in order
    (after the visibility and shredding checks every read makes)."""
    await get_session(db, tenant, sid)
    await check_readable(db, tenant, sid)
    after = await _seek_seq(db, tenant, sid, start_ms)
    async for rows in _iter_chunk_rows(db, tenant, sid, after_seq=after, chunk_batch=chunk_batch):
        for row in rows:
            if row["last_offset_ms"] >= start_ms:
                yield row


@dataclass(frozen=True, slots=True)
class ChunkFrames:
    """The frames of one stored chunk (a window of a session, read by :func:`read_window`)."""

    seq: int
    frames: list[Frame]


async def keyframe_at(
    db: Executor, tenant: str, sid: str, at_ms: int
) -> tuple[int, int, bytes] | None:
    """The session's latest keyframe at or before ``at_ms`` as ``(after_seq, at_ms, screen)``
    (:class:`replay.keyframe.Keyframe`), or None (seek from the start)."""
    try:
        row = await db.fetchrow(
            "SELECT after_seq, at_ms, screen FROM session_keyframes"
            " WHERE sid = $1 AND tenant = $2 AND at_ms <= $3"
            " ORDER BY at_ms DESC, after_seq DESC LIMIT 1",
            sid,
            tenant,
            at_ms,
        )
    except Exception as exc:
        raise translate(exc, f"cannot read the keyframes of session {sid}") from exc
    if row is None:
        return None
    return int(row["after_seq"]), int(row["at_ms"]), bytes(row["screen"])


async def iter_chunk_frames(
    db: Executor,
    tenant: str,
    sid: str,
    *,
    after_seq: int,
    until_ms: int | None = None,
    decompressor: Decompressor | None = None,
) -> AsyncIterator[ChunkFrames]:
    """The session's chunks after ``after_seq`` in seq order, decoded one at a time; with
    ``until_ms``, none that starts after it."""
    await check_readable(db, tenant, sid)
    decoder = _ChunkDecoder(db, tenant, decompressor)
    async for rows in _iter_chunk_rows(db, tenant, sid, after_seq=after_seq, chunk_batch=8):
        for row in rows:
            if until_ms is not None and row["first_offset_ms"] > until_ms:
                return
            yield ChunkFrames(int(row["seq"]), await decoder.frames(sid, row))


@dataclass(frozen=True, slots=True)
class SessionEventMark:
    """An audit event of a session, where it falls in the recording (clamped into it)."""

    at_ms: int
    event: str
    body: dict[str, Any]


async def session_markers(
    db: Executor, tenant: str, sid: str, *, limit: int
) -> tuple[list[tuple[int, str, str]], list[SessionEventMark]]:
    """The session's timeline: markers the segmenter found ``(at_ms, kind, label)`` and its
    audit events (views of the recording left out), each in time order, at most ``limit``."""
    try:
        marks = await db.fetch(
            "SELECT at_ms, kind, label FROM session_markers WHERE sid = $1 AND tenant = $2"
            " ORDER BY at_ms, kind, label LIMIT $3",
            sid,
            tenant,
            limit,
        )
        events = await db.fetch(
            "SELECT e.event, e.body, greatest(0, least(s.duration_ms,"
            " (extract(epoch FROM e.time - s.started_at) * 1000)::bigint)) AS at_ms"
            " FROM events e JOIN sessions s ON s.sid = e.sid AND s.tenant = e.tenant"
            " WHERE e.tenant = $1 AND e.sid = $2 AND e.event <> 'session.recording.access'"
            " ORDER BY e.time, e.uid LIMIT $3",
            tenant,
            sid,
            limit,
        )
    except Exception as exc:
        raise translate(exc, f"cannot read the timeline of session {sid}") from exc
    return (
        [(int(r["at_ms"]), str(r["kind"]), str(r["label"])) for r in marks],
        [
            SessionEventMark(int(r["at_ms"]), str(r["event"]), _json_object(r["body"]))
            for r in events
        ],
    )


def _json_object(value: Any) -> dict[str, Any]:
    data = orjson.loads(value) if isinstance(value, str | bytes) else value
    return data if isinstance(data, dict) else {}


async def read_window(
    db: Executor,
    tenant: str,
    sid: str,
    *,
    after_seq: int,
    max_bytes: int,
    decompressor: Decompressor | None = None,
) -> list[ChunkFrames]:
    """Whole chunks of the session after ``after_seq``, in seq order, until their frames
    reach ``max_bytes`` (at least one chunk when there is one). What a player streams: a
    window at a time, so its memory stays bounded whatever the session's size."""
    out: list[ChunkFrames] = []
    total = 0
    async for chunk in iter_chunk_frames(
        db, tenant, sid, after_seq=after_seq, decompressor=decompressor
    ):
        out.append(chunk)
        total += sum(len(f.data) for f in chunk.frames)
        if total >= max_bytes:
            break
    return out


async def verify_session(
    db: Executor, tenant: str, sid: str, *, chunk_batch: int = 8
) -> VerifyResult:
    """Check the session's hash chain over the stored chunks (see :mod:`schemas.chain`).

    Detects changed bytes, timings, streams or chunk boundaries (every later link breaks), a
    missing chunk in the middle (seq gap), and a truncated tail (fewer chunks than the sessions
    row recorded, or a last hash that differs from the row's ``last_hash``). Memory holds one
    batch of chunks.
    """
    result = await _verify(db, tenant, sid, chunk_batch)
    if not result.ok:
        log.warning("hash chain check failed sid=%s tenant=%s: %s", sid, tenant, result.message)
    return result


async def _verify(db: Executor, tenant: str, sid: str, chunk_batch: int) -> VerifyResult:
    session = await get_session(db, tenant, sid)
    await check_readable(db, tenant, sid)
    decoder = _ChunkDecoder(db, tenant)
    prev: Chunk | None = None
    count = 0
    async for rows in _iter_chunk_rows(db, tenant, sid, after_seq=-1, chunk_batch=chunk_batch):
        for row in rows:
            try:
                frames = tuple(await decoder.frames(sid, row))
            except StorageError as exc:
                if exc.retriable:
                    raise
                return VerifyResult(False, count, str(exc))
            chunk = Chunk(tenant, sid, row["seq"], frames, row["prev_hash"], row["hash"])
            # The first link goes through the contract's own verify_chain (seq 0, genesis).
            ok, message = verify_chain([chunk]) if prev is None else _verify_link(prev, chunk)
            if not ok:
                return VerifyResult(False, count, message)
            prev = chunk
            count += 1
    if prev is None:
        return VerifyResult(False, 0, f"sid {sid}: no chunks stored")
    if count < session.last_seq + 1:
        return VerifyResult(
            False,
            count,
            f"sid {sid}: {count} chunks stored but the session recorded seq up to "
            f"{session.last_seq} (tail missing)",
        )
    if session.last_seq == prev.seq and session.last_hash and session.last_hash != prev.hash:
        return VerifyResult(
            False, count, f"sid {sid}: last chunk hash differs from the session's last_hash"
        )
    if session.status == "abandoned":
        # The chain is intact; the recording is incomplete, and says where it stops.
        return VerifyResult(
            True,
            count,
            f"{count} chunks verified; ended without a final chunk after seq {prev.seq}"
            " (abandoned: its recorder stopped)",
        )
    return VerifyResult(True, count, f"{count} chunks verified")


def _verify_link(prev: Chunk, chunk: Chunk) -> tuple[bool, str]:
    """The rule of :func:`schemas.chain.verify_chain` for one link, given the previous chunk."""
    if chunk.seq != prev.seq + 1:
        return False, f"sid {chunk.sid}: expected seq {prev.seq + 1}, found {chunk.seq}"
    if chunk.prev_hash != prev.hash:
        return False, f"sid {chunk.sid} seq {chunk.seq}: prev_hash does not match chunk {prev.seq}"
    if chain_hash(chunk.prev_hash, chunk.sid, chunk.seq, chunk.frames) != chunk.hash:
        return False, f"sid {chunk.sid} seq {chunk.seq}: content does not match its hash"
    return True, ""
