"""The persist worker's decisions, as pure functions (no Kafka, no PostgreSQL).

The worker (:mod:`ingest.persist`) feeds these functions what it polled and what the database
holds; they say what to store, what to dead-letter, and how each session row changes.

Session rules (chunks of one session travel in order on one partition):

* Chunk seq 0 carries :class:`~schemas.models.SessionInfo` and opens the session.
* A chunk of a session that was never opened is rejected (``unknown_session``); so is one whose
  tenant differs from the session's (``tenant_mismatch``). Within one batch, seq 0 opens the
  session only from its own position on: a seq 1 *before* its seq 0 is still unknown.
* A chunk whose (sid, seq) is already stored (or stored by this batch) with another hash is
  rejected (``conflicting_duplicate``): the first copy stays, the other is dead-lettered with
  its bytes. The same hash is a redelivery: a silent duplicate.
* Every other chunk is a candidate for ``INSERT ... ON CONFLICT DO NOTHING``. Counters are folded
  by :func:`fold_inserted` from the rows the database reports as *actually inserted*, never from
  what was offered, so a redelivered batch leaves every counter unchanged.
* ``seq == last_seq + 1`` with ``prev_hash != last_hash`` marks the session ``broken``;
  ``seq > last_seq + 1`` marks it ``gap``; a late chunk (``seq < last_seq``, a hole being filled)
  is stored and counted but moves neither ``last_seq`` nor ``last_hash``.
* A ``final`` chunk closes the session: status ``closed``, ``exit_code``, and ``ended_at`` (the
  session start plus the last frame offset, until a ``session.end`` event gives the real time).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.models import GENESIS_HASH, AuditEvent, PackedChunk, SessionInfo
from sessionvault.errors import ValidationError
from storage.search.model import EventColumns, event_columns, to_us

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# Worst first: a session keeps its worst integrity verdict.
_INTEGRITY_RANK = {"ok": 0, "gap": 1, "broken": 2}

# Partitions are created for event months in this window; events outside it (clock bugs,
# imports of ancient logs) land in the default partition rather than creating hundreds of
# near-empty tables.
PARTITION_MIN_YEAR = 1990
PARTITION_MAX_YEARS_AHEAD = 2


@dataclass(frozen=True, slots=True)
class PreparedChunk:
    """A decoded chunk with its stored form. ``ref`` is the caller's handle for the record."""

    ref: int
    chunk: PackedChunk
    codec: int
    dict_id: int | None
    stored: bytes
    frames_index: bytes
    raw_len: int
    key_id: int | None = None  # the data key ``stored`` is sealed with (storage.datakeys)

    @property
    def sid(self) -> str:
        return self.chunk.sid

    @property
    def seq(self) -> int:
        return self.chunk.seq


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """A ``chunks`` row to insert (offsets resolved, see :func:`classify_chunks`)."""

    prepared: PreparedChunk
    first_offset_ms: int
    last_offset_ms: int


@dataclass(frozen=True, slots=True)
class SessionState:
    """The part of a ``sessions`` row the persist worker reads and writes."""

    sid: str
    tenant: str
    started_at: datetime
    duration_ms: int = 0
    bytes: int = 0
    stored_bytes: int = 0
    chunks: int = 0
    last_seq: int = -1
    last_hash: str = GENESIS_HASH
    status: str = "active"
    integrity: str = "ok"
    exit_code: int | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """A record to dead-letter: ``reason`` is a short code, ``message`` says what is wrong."""

    ref: int
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class SessionOpen:
    """A new ``sessions`` row, opened by chunk seq 0."""

    tenant: str
    sid: str
    info: SessionInfo
    started_at: datetime


@dataclass(frozen=True)
class ChunkPlan:
    """What :func:`classify_chunks` decided for a batch of chunks."""

    opens: list[SessionOpen]
    rows: list[ChunkRow]
    rejects: list[Reject]
    repeats: list[PreparedChunk]
    """Later copies of a (sid, seq) already offered in this batch. Whether each is a
    redelivery or a conflict is decided after the write, against what is actually stored
    (:func:`judge_repeats`): the first copy of the batch may itself be a forgery that the
    stored chunk wins over."""


@dataclass(frozen=True, slots=True)
class EventRow:
    """An ``events`` row. ``body`` is the record's JSON text exactly as it came."""

    tenant: str
    uid: str
    time: datetime
    event: str
    code: str
    sid: str | None
    ei: int | None
    user_name: str
    body: str
    # Search columns (filter values, normalised text), extracted from the body by the writer.
    search: EventColumns | None = None


def parse_time(value: str) -> datetime:
    """RFC 3339 text -> aware UTC datetime (what :func:`schemas.codec.is_rfc3339` accepts)."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return dt.astimezone(UTC)


def _has_nul(value: str) -> bool:
    return "\x00" in value


def check_chunk_storable(chunk: PackedChunk) -> None:
    """Reject values a valid chunk may carry but PostgreSQL columns cannot hold.

    Without this a single such record would fail its whole batch's transaction on every retry.
    """
    if chunk.seq > INT32_MAX:
        raise ValidationError("out_of_range", f"sid {chunk.sid}: seq {chunk.seq} exceeds 2^31-1")
    if chunk.exit_code is not None and not -(2**31) <= chunk.exit_code <= INT32_MAX:
        raise ValidationError("out_of_range", f"sid {chunk.sid}: exit_code out of int32 range")
    if chunk.last_offset_ms is not None and chunk.last_offset_ms > INT64_MAX:
        raise ValidationError(
            "out_of_range", f"sid {chunk.sid} seq {chunk.seq}: offset_ms exceeds 2^63-1"
        )
    info = chunk.session
    if info is not None:
        for name, value in info.to_json().items():
            if isinstance(value, str) and _has_nul(value):
                raise ValidationError(
                    "wrong_type", f"sid {chunk.sid}: session.{name} contains a NUL character"
                )
        try:
            parse_time(info.started_at)
        except ValueError as exc:
            raise ValidationError(
                "wrong_type", f"sid {chunk.sid}: session.started_at: {exc}"
            ) from exc


def _walk_strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _walk_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_strings(v)


def event_row(event: AuditEvent, raw: bytes) -> EventRow:
    """Build the ``events`` row of a validated event; raise ValidationError for values
    PostgreSQL cannot hold (NUL in text or jsonb, integers beyond bigint)."""
    f = event.fields
    # A NUL can only reach a JSON string through a \\u escape; skip the walk when there is none.
    if b"\\u" in raw and any(_has_nul(s) for s in _walk_strings(f)):
        raise ValidationError("wrong_type", f"event {event.uid}: a string contains a NUL character")
    ei = f.get("ei")
    if ei is not None and ei > INT64_MAX:
        raise ValidationError("out_of_range", f"event {event.uid}: ei exceeds 2^63-1")
    try:
        when = parse_time(event.time)
    except ValueError as exc:
        raise ValidationError("wrong_type", f"event {event.uid}: time: {exc}") from exc
    user = f.get("user")
    code = f.get("code")
    return EventRow(
        tenant=event.tenant,
        uid=event.uid,
        time=when,
        event=event.type,
        code=code if isinstance(code, str) else "",
        sid=event.sid,
        ei=ei if isinstance(ei, int) else None,
        user_name=user if isinstance(user, str) else "",
        body=raw.decode("utf-8"),
        search=event_columns(f, to_us(when)),
    )


def month_of(when: datetime, *, now: datetime | None = None) -> tuple[int, int] | None:
    """The (year, month) partition an event time belongs to; None for the default partition."""
    now = now or datetime.now(UTC)
    if not PARTITION_MIN_YEAR <= when.year <= now.year + PARTITION_MAX_YEARS_AHEAD:
        return None
    return (when.year, when.month)


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def partition_name(year: int, month: int) -> str:
    return f"events_y{year:04d}m{month:02d}"


def classify_chunks(
    existing: Mapping[str, SessionState], chunks: Sequence[PreparedChunk]
) -> ChunkPlan:
    """Decide, in batch order, which chunks to insert, which sessions to open, what to reject.

    ``existing`` holds the session rows already in the database for the batch's sids.
    """
    tenants: dict[str, str] = {sid: st.tenant for sid, st in existing.items()}
    duration: dict[str, int] = {sid: st.duration_ms for sid, st in existing.items()}
    seen: dict[tuple[str, int], str] = {}
    opens: list[SessionOpen] = []
    rows: list[ChunkRow] = []
    rejects: list[Reject] = []
    repeats: list[PreparedChunk] = []
    for p in chunks:
        c = p.chunk
        tenant = tenants.get(c.sid)
        if tenant is None:
            if c.seq != 0 or c.session is None:
                rejects.append(
                    Reject(
                        p.ref,
                        "unknown_session",
                        f"sid {c.sid} seq {c.seq}: session was never opened (no chunk 0)",
                    )
                )
                continue
            opens.append(SessionOpen(c.tenant, c.sid, c.session, parse_time(c.session.started_at)))
            tenants[c.sid] = c.tenant
            duration[c.sid] = 0
        elif tenant != c.tenant:
            rejects.append(
                Reject(
                    p.ref,
                    "tenant_mismatch",
                    f"sid {c.sid} seq {c.seq}: chunk tenant {c.tenant!r} is not the session's",
                )
            )
            continue
        key = (c.sid, c.seq)
        if key in seen:
            repeats.append(p)
            continue
        seen[key] = c.hash
        if c.first_offset_ms is not None and c.last_offset_ms is not None:
            first, last = c.first_offset_ms, c.last_offset_ms
        else:
            # An empty chunk (the opening chunk, a bare final one) sits at the session's end so
            # far, which keeps first_offset_ms usable for seeking.
            first = last = duration[c.sid]
        duration[c.sid] = max(duration[c.sid], last)
        rows.append(ChunkRow(p, first, last))
    return ChunkPlan(opens, rows, rejects, repeats)


ABANDONED = "abandoned"
"""Status of a session whose producer stopped without a final chunk (see
:func:`storage.chunkstore.close_abandoned`); a later chunk makes it active again."""

CONFLICT_REASON = "conflicting_duplicate"


def conflict_reject(ref: int, sid: str, seq: int, kept_hash: str, new_hash: str) -> Reject:
    """A chunk whose (sid, seq) is already stored (or earlier in the batch) with other
    content: never overwritten (the first copy is the record), never dropped silently."""
    return Reject(
        ref,
        CONFLICT_REASON,
        f"sid {sid} seq {seq}: a different chunk with this seq is already stored"
        f" (stored hash {kept_hash[:16]}..., this one {new_hash[:16]}...)",
    )


def conflicting_rows(
    offered: Sequence[ChunkRow],
    inserted: Sequence[ChunkRow],
    stored_hash: Mapping[tuple[str, int], str],
) -> list[Reject]:
    """Rejects for the offered rows the database did not insert because a chunk with the same
    (sid, seq) but another hash is stored. Same hash: a redelivery, silently a duplicate."""
    done = {(r.prepared.chunk.sid, r.prepared.chunk.seq) for r in inserted}
    out = []
    for r in offered:
        c = r.prepared.chunk
        key = (c.sid, c.seq)
        if key in done:
            continue
        kept = stored_hash.get(key)
        if kept is not None and kept != c.hash:
            out.append(conflict_reject(r.prepared.ref, c.sid, c.seq, kept, c.hash))
    return out


def judge_repeats(
    repeats: Sequence[PreparedChunk], stored_hash: Mapping[tuple[str, int], str]
) -> tuple[list[Reject], int]:
    """(rejects, silent duplicates) for the later in-batch copies of a (sid, seq), given the
    hash stored for it after the batch's write: the same hash is a redelivery; another hash
    is a conflict, reported with the hash that IS stored (never the batch's first copy's,
    which may have lost to an older stored chunk)."""
    rejects: list[Reject] = []
    dups = 0
    for p in repeats:
        c = p.chunk
        kept = stored_hash.get((c.sid, c.seq))
        if kept == c.hash:
            dups += 1
        else:
            rejects.append(conflict_reject(p.ref, c.sid, c.seq, kept or "(nothing)", c.hash))
    return rejects, dups


def opened_state(o: SessionOpen) -> SessionState:
    return SessionState(sid=o.sid, tenant=o.tenant, started_at=o.started_at)


def fold_inserted(
    states: Mapping[str, SessionState], inserted: Iterable[ChunkRow]
) -> dict[str, SessionState]:
    """Apply the rows actually inserted (in batch order) to their sessions' states.

    Returns only the states that changed. Pure and deterministic: the same inputs give the same
    row, so computing it inside the write transaction makes counters exactly-once.
    """
    changed: dict[str, SessionState] = {}
    for row in inserted:
        p = row.prepared
        c = p.chunk
        st = changed.get(c.sid) or states[c.sid]
        updates: dict[str, Any] = {
            "bytes": st.bytes + p.raw_len,
            "stored_bytes": st.stored_bytes + len(p.stored),
            "chunks": st.chunks + 1,
            "duration_ms": max(st.duration_ms, row.last_offset_ms),
        }
        integrity = st.integrity
        if c.seq > st.last_seq:
            if c.seq > st.last_seq + 1:
                verdict = "gap"
            elif c.prev_hash != st.last_hash:
                verdict = "broken"
            else:
                verdict = "ok"
            if _INTEGRITY_RANK[verdict] > _INTEGRITY_RANK[integrity]:
                integrity = verdict
            updates["last_seq"] = c.seq
            updates["last_hash"] = c.hash
        updates["integrity"] = integrity
        if st.status == ABANDONED:
            # Its recorder came back (a spool drained late): the session goes on.
            updates["status"] = "active"
            updates["ended_at"] = None
            st = dataclasses.replace(st, ended_at=None)
        if c.final:
            updates["status"] = "closed"
            updates["exit_code"] = c.exit_code
            if st.ended_at is None:
                updates["ended_at"] = st.started_at + timedelta(milliseconds=updates["duration_ms"])
        changed[c.sid] = dataclasses.replace(st, **updates)
    return changed
