"""Rebuild OpenSearch from PostgreSQL (the source of truth), and the reads the index worker uses.

Every OpenSearch document is built from a PostgreSQL row by the model's document builders
(:func:`model.event_document`, :func:`model.segment_document`), never from a Kafka record, so
what OpenSearch holds is always a copy of what PostgreSQL holds (merged kube.request stages,
session fields re-synced into segments, ...).

:func:`reindex` walks ``events`` and ``text_segments`` in primary-key order (keyset pages, no
long transaction), optionally for one tenant and/or from a time on, and indexes every row
under its idempotent ``_id``: running it twice, or while the index worker runs, changes
nothing but the documents' versions. A full reindex (no tenant, no since) ends by writing the
completeness marker (:meth:`OpenSearchStore.set_marker`), which the index worker checks to
detect a cluster that lost its data, and by moving the search watermark past what it covered
(:mod:`storage.search.watermark`).

Documents are never deleted here: a row removed from PostgreSQL (retention) is removed from
OpenSearch by whoever removes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from storage.pg import translate
from storage.search import model, watermark
from storage.search.opensearch import BulkAction, OpenSearchStore, document_action, index_documents

log = logging.getLogger(__name__)

PAGE_ROWS = 1000

_EVENT_COLUMNS = "tenant, uid, time, time_us, body"
_SEGMENT_COLUMNS = (
    "tenant, sid, seg_no, start_ms, end_ms, time_us, text, times, user_name, login, server_id,"
    " cluster_name, kubernetes_cluster"
)

Progress = Callable[[int], object]


# -- rows -> documents (pure) ----------------------------------------------------------------


def event_action(record: Any, *, prefix: str = "sv") -> BulkAction:
    """The bulk action of an ``events`` row (``tenant, uid, time, time_us, body``)."""
    body = record["body"]
    fields = orjson.loads(body) if isinstance(body, str | bytes) else dict(body)
    time_us = record["time_us"]
    if time_us is None:  # a row written before migration 003 and not backfilled yet
        time_us = model.to_us(record["time"])
    return document_action(
        model.event_document(record["tenant"], fields, time_us=int(time_us)), prefix=prefix
    )


def segment_row(record: Any) -> model.SegmentRow:
    """A :class:`model.SegmentRow` from a ``text_segments`` row."""
    return model.SegmentRow(
        tenant=record["tenant"],
        sid=record["sid"],
        seg_no=int(record["seg_no"]),
        start_ms=int(record["start_ms"]),
        end_ms=int(record["end_ms"]),
        time_us=int(record["time_us"]),
        text=record["text"],
        times=tuple(int(t) for t in record["times"]),
        user=record["user_name"],
        login=record["login"],
        server_id=record["server_id"],
        cluster_name=record["cluster_name"],
        kubernetes_cluster=record["kubernetes_cluster"],
    )


def segment_action(record: Any, *, prefix: str = "sv") -> BulkAction:
    return document_action(model.segment_document(segment_row(record)), prefix=prefix)


# -- PostgreSQL reads ------------------------------------------------------------------------


async def _fetch(conn: asyncpg.Connection, what: str, sql: str, *args: Any) -> list[Any]:
    try:
        return list(await conn.fetch(sql, *args))
    except Exception as exc:
        raise translate(exc, f"cannot read {what}") from exc


async def load_events(
    conn: asyncpg.Connection, keys: Iterable[tuple[str, str, datetime]]
) -> list[Any]:
    """The ``events`` rows with these (tenant, uid, time) keys (absent ones are left out)."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    return await _fetch(
        conn,
        "events",
        f"SELECT {_EVENT_COLUMNS} FROM events e"
        " JOIN unnest($1::text[], $2::text[], $3::timestamptz[]) AS k(tenant, uid, time)"
        " USING (tenant, uid, time)",
        [k[0] for k in wanted],
        [k[1] for k in wanted],
        [k[2] for k in wanted],
    )


async def stored_chunks(
    conn: asyncpg.Connection, keys: Iterable[tuple[str, int]]
) -> set[tuple[str, int]]:
    """Which (sid, seq) of ``keys`` are stored in ``chunks``."""
    wanted = sorted(set(keys))
    if not wanted:
        return set()
    rows = await _fetch(
        conn,
        "chunks",
        "SELECT c.sid, c.seq FROM chunks c"
        " JOIN unnest($1::text[], $2::int[]) AS k(sid, seq) USING (sid, seq)",
        [k[0] for k in wanted],
        [k[1] for k in wanted],
    )
    return {(r["sid"], r["seq"]) for r in rows}


async def load_segments(
    conn: asyncpg.Connection, tenant: str, sid: str, *, from_seg_no: int = 0
) -> list[Any]:
    """The segments of one session from ``from_seg_no`` on, in seg_no order."""
    return await _fetch(
        conn,
        "text_segments",
        f"SELECT {_SEGMENT_COLUMNS} FROM text_segments"
        " WHERE sid = $1 AND tenant = $2 AND seg_no >= $3 ORDER BY seg_no",
        sid,
        tenant,
        from_seg_no,
    )


async def load_segment_ranges(
    conn: asyncpg.Connection, ranges: Sequence[tuple[str, str, int, int]]
) -> list[Any]:
    """The segments in the (tenant, sid, seg_from, seg_to) ranges (``seg_to`` exclusive), in
    the order of ``ranges`` then seg_no; segments since deleted are left out."""
    if not ranges:
        return []
    cols = ", ".join(f"t.{c.strip()}" for c in _SEGMENT_COLUMNS.split(","))
    return await _fetch(
        conn,
        "text_segments",
        f"SELECT {cols} FROM unnest($1::text[], $2::text[], $3::int[], $4::int[])"
        " WITH ORDINALITY AS r(tenant, sid, seg_from, seg_to, ord)"
        " JOIN text_segments t ON t.sid = r.sid AND t.tenant = r.tenant"
        " AND t.seg_no >= r.seg_from AND t.seg_no < r.seg_to"
        " ORDER BY r.ord, t.seg_no",
        [r[0] for r in ranges],
        [r[1] for r in ranges],
        [r[2] for r in ranges],
        [r[3] for r in ranges],
    )


async def _count(conn: asyncpg.Connection, table: str, where: str, args: Sequence[Any]) -> int:
    rows = await _fetch(conn, table, f"SELECT count(*) AS n FROM {table} WHERE {where}", *args)
    return int(rows[0]["n"])


def _where(tenant: str | None, since_us: int | None, time_col: str) -> tuple[str, list[Any]]:
    clauses = ["true"]
    args: list[Any] = []
    if tenant is not None:
        args.append(tenant)
        clauses.append(f"tenant = ${len(args)}")
    if since_us is not None:
        args.append(model.from_us(since_us) if time_col == "time" else since_us)
        clauses.append(f"{time_col} >= ${len(args)}")
    return " AND ".join(clauses), args


async def _event_pages(
    conn: asyncpg.Connection, tenant: str | None, since_us: int | None, page_rows: int
) -> Any:
    where, args = _where(tenant, since_us, "time")
    after: tuple[str, str, datetime] | None = None
    while True:
        extra = ""
        page_args = list(args)
        if after is not None:
            page_args += list(after)
            n = len(page_args)
            extra = f" AND (tenant, uid, time) > (${n - 2}, ${n - 1}, ${n})"
        rows = await _fetch(
            conn,
            "events",
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {where}{extra}"
            f" ORDER BY tenant, uid, time LIMIT {int(page_rows)}",
            *page_args,
        )
        if not rows:
            return
        yield rows
        last = rows[-1]
        after = (last["tenant"], last["uid"], last["time"])


async def _segment_pages(
    conn: asyncpg.Connection, tenant: str | None, since_us: int | None, page_rows: int
) -> Any:
    where, args = _where(tenant, since_us, "time_us")
    after: tuple[str, int] | None = None
    while True:
        extra = ""
        page_args = list(args)
        if after is not None:
            page_args += list(after)
            n = len(page_args)
            extra = f" AND (sid, seg_no) > (${n - 1}, ${n})"
        rows = await _fetch(
            conn,
            "text_segments",
            f"SELECT {_SEGMENT_COLUMNS} FROM text_segments WHERE {where}{extra}"
            f" ORDER BY sid, seg_no LIMIT {int(page_rows)}",
            *page_args,
        )
        if not rows:
            return
        yield rows
        last = rows[-1]
        after = (last["sid"], last["seg_no"])


# -- reindex ---------------------------------------------------------------------------------


@dataclass
class ReindexReport:
    """What :func:`reindex` did."""

    total: int = 0
    events: int = 0
    segments: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (doc id, reason)
    seconds: float = 0.0
    complete: bool = False  # a full rebuild that wrote the completeness marker


async def count_rows(
    conn: asyncpg.Connection, *, tenant: str | None = None, since: datetime | None = None
) -> int:
    """How many documents :func:`reindex` would write (for a progress bar)."""
    since_us = None if since is None else model.to_us(since)
    w1, a1 = _where(tenant, since_us, "time")
    w2, a2 = _where(tenant, since_us, "time_us")
    return await _count(conn, "events", w1, a1) + await _count(conn, "text_segments", w2, a2)


async def reindex(
    conn: asyncpg.Connection,
    store: OpenSearchStore,
    *,
    tenant: str | None = None,
    since: datetime | None = None,
    progress: Progress | None = None,
    page_rows: int = PAGE_ROWS,
    max_bulk_bytes: int = 4 * 1024 * 1024,
    retry_backoff_max_ms: int = 30_000,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> ReindexReport:
    """Index every event and segment of PostgreSQL (or of ``tenant``, from ``since``) into
    OpenSearch; see the module docstring. ``progress`` gets the number of documents done
    after each bulk. Documents OpenSearch refuses for good are logged and reported, never
    fatal. Raises StorageError when PostgreSQL fails (OpenSearch failures are retried)."""
    t0 = time.monotonic()
    since_us = None if since is None else model.to_us(since)
    await asyncio.to_thread(store.ensure_templates)
    full = tenant is None and since is None
    # Refusals recorded before a full rebuild are settled by it (indexed now, or recorded again).
    through = await watermark.last_id(conn) if full else 0
    settled = await watermark.settled_ids(conn) if full else []
    report = ReindexReport()
    refused: list[tuple[str, int]] = []
    kwargs: dict[str, Any] = {
        "max_bulk_bytes": max_bulk_bytes,
        "retry_backoff_max_ms": retry_backoff_max_ms,
    }
    if sleep is not None:
        kwargs["sleep"] = sleep

    async def send(actions: list[BulkAction]) -> int:
        done = await index_documents(store, actions, **kwargs)
        for action, failure in done.rejected:
            log.error("reindex: OpenSearch refused %s: %s", action.id, failure.reason)
            report.rejected.append((action.id, failure.reason))
            refused.append((str(action.doc.get("tenant", "")), int(action.doc.get("time_us", 0))))
        if progress is not None:
            progress(len(actions))
        return done.indexed

    async for rows in _event_pages(conn, tenant, since_us, page_rows):
        report.events += await send([event_action(r, prefix=store.prefix) for r in rows])
    async for rows in _segment_pages(conn, tenant, since_us, page_rows):
        report.segments += await send([segment_action(r, prefix=store.prefix) for r in rows])
    report.total = report.events + report.segments
    await asyncio.to_thread(store.refresh)
    # What OpenSearch refused stays out of its watermark (search answers it from PostgreSQL).
    await watermark.record_refused(conn, refused)
    if full:
        await watermark.clear_refused(conn, through_id=through)
        await watermark.clear_ids(conn, settled)
        await asyncio.to_thread(
            store.set_marker,
            {
                "completed_at": datetime.now(UTC).isoformat(),
                "events": report.events,
                "segments": report.segments,
            },
        )
        report.complete = True
    report.seconds = time.monotonic() - t0
    log.info(
        "reindex: %d events and %d segments in %.1fs (%d refused)",
        report.events,
        report.segments,
        report.seconds,
        len(report.rejected),
    )
    return report


__all__ = [
    "ReindexReport",
    "count_rows",
    "event_action",
    "load_events",
    "load_segment_ranges",
    "load_segments",
    "reindex",
    "segment_action",
    "segment_row",
    "stored_chunks",
]
