"""The search watermark: per tenant, the time from which OpenSearch may not hold what PostgreSQL
holds (the SQL side; the decision is :func:`storage.search.model.split_at`).

Invariant (what makes an OpenSearch answer trustworthy): every stored row that OpenSearch may
not hold yet lies inside a row of ``sv_index_pending`` for its tenant, with ``since_us`` at or
before the earliest ``time_us`` of any document the row can create or change.

* The persist worker adds the rows of a batch (:func:`record_pending`) in the same transaction
  as the batch's writes, one per (tenant, topic, partition): ``last_offset`` is the highest
  record offset, ``since_us`` the earliest event time or, for terminal chunks and session
  start/end events (which re-render or re-sync a session's segments), the session's start.
* The index worker deletes the rows below the offsets it committed (:func:`clear_pending`) only
  after that commit: in between the rows still stand, which only makes answers more cautious.
* A full rebuild (:func:`storage.search.reindex.reindex`) deletes the rows it covered
  (:func:`settled_ids` read before it starts, :func:`clear_ids` once it completes).
* A document OpenSearch refused for good stays pending (``topic = ''``,
  :func:`record_refused`) until a full rebuild that refused nothing (:func:`clear_refused`).

So for a tenant with no pending row OpenSearch holds everything PostgreSQL holds (given the
completeness marker, :meth:`storage.search.opensearch.OpenSearchStore.completeness`); otherwise
it holds everything before ``min(since_us)``.

Known limit: one index consumer group per installation (whichever group passes a record first
deletes its row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from storage import pg

#: ``topic`` of the rows standing for documents OpenSearch refused.
REFUSED = ""


@dataclass(frozen=True)
class PendingRecord:
    """One stored record the index worker has still to index (the persist worker's view).

    ``time_us``: the event's time (None for a chunk); ``sid``: the session whose segments the
    record re-renders or re-syncs (a chunk, a session.start/end event), else None.
    """

    tenant: str
    topic: str
    partition: int
    offset: int
    time_us: int | None
    sid: str | None


@dataclass(frozen=True)
class Pending:
    """What OpenSearch may miss for one tenant: nothing (``since_us`` None), or everything from
    ``since_us`` on, because of ``batches`` pending rows (``refused`` of them refusals)."""

    since_us: int | None
    batches: int
    refused: int = 0


async def record_pending(conn: asyncpg.Connection, records: Sequence[PendingRecord]) -> int:
    """Add the pending rows of a batch (inside the caller's transaction, after its writes, so
    sessions the batch opened have their start). Returns the rows added."""
    if not records:
        return 0
    try:
        status = await conn.execute(
            "INSERT INTO sv_index_pending (tenant, topic, partition, last_offset, since_us,"
            " records)"
            " SELECT x.tenant, x.topic, x.part, max(x.off),"
            # least() skips NULLs: an event without a session is pending from its own time,
            # a chunk from its session's start; a chunk of an unknown session (refused) has
            # neither and is left out.
            " min(least(x.t, (extract(epoch FROM s.started_at) * 1000000)::bigint)), count(*)"
            " FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::bigint[],"
            " $6::text[]) AS x(tenant, topic, part, off, t, sid)"
            " LEFT JOIN sessions s ON s.sid = x.sid AND s.tenant = x.tenant"
            " WHERE x.t IS NOT NULL OR s.started_at IS NOT NULL"
            " GROUP BY x.tenant, x.topic, x.part",
            [r.tenant for r in records],
            [r.topic for r in records],
            [r.partition for r in records],
            [r.offset for r in records],
            [r.time_us for r in records],
            [r.sid for r in records],
        )
    except Exception as exc:
        raise pg.translate(exc, "cannot record what search has still to index") from exc
    return int(status.split()[-1])


async def clear_pending(conn: asyncpg.Connection, offsets: Mapping[tuple[str, int], int]) -> int:
    """Delete the pending rows the index worker committed past (``offsets``: the next offset
    per (topic, partition), as committed). Returns the rows deleted."""
    if not offsets:
        return 0
    keys = sorted(offsets)
    try:
        status = await conn.execute(
            "DELETE FROM sv_index_pending p"
            " USING unnest($1::text[], $2::int[], $3::bigint[]) AS c(topic, part, nxt)"
            " WHERE p.topic = c.topic AND p.partition = c.part AND p.last_offset < c.nxt",
            [t for t, _ in keys],
            [p for _, p in keys],
            [offsets[k] for k in keys],
        )
    except Exception as exc:
        raise pg.translate(exc, "cannot clear what search has indexed") from exc
    return int(status.split()[-1])


async def record_refused(conn: asyncpg.Connection, docs: Sequence[tuple[str, int]]) -> None:
    """Keep (tenant, time_us) of documents OpenSearch refused for good pending."""
    if not docs:
        return
    try:
        await conn.execute(
            "INSERT INTO sv_index_pending (tenant, topic, partition, last_offset, since_us,"
            " records)"
            " SELECT tenant, $3, 0, 0, min(t), count(*)"
            " FROM unnest($1::text[], $2::bigint[]) AS x(tenant, t) GROUP BY tenant",
            [d[0] for d in docs],
            [d[1] for d in docs],
            REFUSED,
        )
    except Exception as exc:
        raise pg.translate(exc, "cannot record documents OpenSearch refused") from exc


async def clear_refused(conn: asyncpg.Connection, *, through_id: int) -> int:
    """After a full rebuild that refused nothing: drop refusals recorded up to ``through_id``
    (:func:`last_id` read before the rebuild started)."""
    try:
        status = await conn.execute(
            "DELETE FROM sv_index_pending WHERE topic = $1 AND id <= $2", REFUSED, through_id
        )
    except Exception as exc:
        raise pg.translate(exc, "cannot clear refused documents") from exc
    return int(status.split()[-1])


async def settled_ids(conn: asyncpg.Connection) -> list[int]:
    """Pending rows a full rebuild starting now will cover: committed by now, of tenants with no
    session waiting for the segmenter (a chunk's segments are in ``text_segments`` only once it
    rendered them; the queue row goes in the same transaction as that rendering)."""
    try:
        ids = await conn.fetchval(
            "SELECT coalesce(array_agg(id), '{}') FROM sv_index_pending p WHERE topic <> $1"
            " AND NOT EXISTS (SELECT 1 FROM segment_queue q WHERE q.tenant = p.tenant)",
            REFUSED,
        )
    except Exception as exc:
        raise pg.translate(exc, "cannot read the search watermark") from exc
    return [int(i) for i in ids]


async def clear_ids(conn: asyncpg.Connection, ids: Sequence[int]) -> int:
    """Delete the pending rows ``ids`` (those :func:`settled_ids` gave, after the rebuild)."""
    if not ids:
        return 0
    try:
        status = await conn.execute(
            "DELETE FROM sv_index_pending WHERE id = ANY($1::bigint[])", list(ids)
        )
    except Exception as exc:
        raise pg.translate(exc, "cannot move the search watermark") from exc
    return int(status.split()[-1])


async def last_id(conn: asyncpg.Connection) -> int:
    """The highest pending row id now (0: none)."""
    try:
        return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM sv_index_pending"))
    except Exception as exc:
        raise pg.translate(exc, "cannot read the search watermark") from exc


async def pending(conn: asyncpg.Connection | asyncpg.Pool, tenant: str) -> Pending:
    """What OpenSearch may miss for ``tenant`` (one index lookup)."""
    try:
        row: Any = await conn.fetchrow(
            "SELECT min(since_us) AS since_us, count(*) AS batches,"
            " count(*) FILTER (WHERE topic = $2) AS refused"
            " FROM sv_index_pending WHERE tenant = $1",
            tenant,
            REFUSED,
        )
    except Exception as exc:
        raise pg.translate(exc, "cannot read the search watermark") from exc
    since = row["since_us"]
    return Pending(None if since is None else int(since), int(row["batches"]), int(row["refused"]))


@dataclass(frozen=True)
class Backlog:
    """The whole installation's indexing backlog (for ``status``)."""

    batches: int
    tenants: int
    oldest_created_us: int | None
    refused: int


async def backlog(conn: asyncpg.Connection | asyncpg.Pool) -> Backlog:
    """How much search has still to index, over every tenant."""
    try:
        row: Any = await conn.fetchrow(
            "SELECT count(*) AS batches, count(DISTINCT tenant) AS tenants,"
            " (extract(epoch FROM min(created_at)) * 1000000)::bigint AS oldest,"
            " count(*) FILTER (WHERE topic = $1) AS refused FROM sv_index_pending",
            REFUSED,
        )
    except Exception as exc:
        raise pg.translate(exc, "cannot read the search backlog") from exc
    oldest = row["oldest"]
    return Backlog(
        int(row["batches"]),
        int(row["tenants"]),
        None if oldest is None else int(oldest),
        int(row["refused"]),
    )


__all__ = [
    "REFUSED",
    "Backlog",
    "Pending",
    "PendingRecord",
    "backlog",
    "clear_ids",
    "clear_pending",
    "clear_refused",
    "last_id",
    "pending",
    "record_pending",
    "record_refused",
    "settled_ids",
]
