"""Terminal output for the detect worker: the ``detect_feed`` outbox (migration 006).

The segmenter appends ``(tenant, sid, seg_from, seg_to)`` in the transaction that commits the
segments. :class:`OutputFeed` hands them to the detect worker in feed order:

1. :meth:`OutputFeed.take` opens a transaction, locks up to ``max_rows`` feed rows with
   ``FOR UPDATE SKIP LOCKED`` (several detect members split the feed; none waits for another)
   and loads their segments as engine records (:func:`storage.search.model.segment_document`:
   ``kind: output``, ``text``, per-character ``times``);
2. the worker evaluates them and produces the alerts, waiting for the broker's ack;
3. :meth:`OutputFeed.done` deletes the rows and commits; :meth:`OutputFeed.abort` rolls back
   (the rows are taken again later).

Invariant: a feed row is deleted only in the transaction that ran after its alerts were
acknowledged by Kafka, so a crash loses no alert; it may repeat one, with the same uid and time
(the events table stores it once). Rows whose session retention deleted load no segment and
are simply deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from storage.pg import Connection, map_pg_errors
from storage.pg_sync import SyncPostgres
from storage.search.model import segment_document
from storage.search.reindex import load_segment_ranges, load_segments, segment_row

#: Feed rows taken per transaction (one row is one segmenter step of one session).
MAX_ROWS = 200


@dataclass(frozen=True)
class FeedRow:
    """One feed row: a run of new segments of one session, as records for the Sigma engine."""

    id: int
    records: list[dict[str, Any]]


@dataclass(frozen=True)
class FeedBatch:
    """Feed rows taken (locked), in feed order."""

    rows: tuple[FeedRow, ...]

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.rows]

    @property
    def segments(self) -> int:
        return sum(len(r.records) for r in self.rows)


def segment_record(row: Any) -> dict[str, Any]:
    """The engine record of a ``text_segments`` row (its search document, less search-only
    keys)."""
    doc = segment_document(segment_row(row))
    for key in ("_id", "text_norm"):
        doc.pop(key, None)
    return doc


async def session_records(
    conn: Connection, tenant: str, sid: str
) -> list[tuple[int, dict[str, Any]]]:
    """A stored session as the detect worker sees it, for testing rules after the fact:
    (time in microseconds, record) of its audit events and its rendered output lines, in time
    order; only ``tenant``'s (another tenant's sid gives nothing)."""
    with map_pg_errors(f"cannot read session {sid}"):
        events = await conn.fetch(
            "SELECT time_us, body::text AS body FROM events WHERE tenant = $1 AND sid = $2",
            tenant,
            sid,
        )
    out: list[tuple[int, dict[str, Any]]] = [
        (int(e["time_us"] or 0), orjson.loads(e["body"])) for e in events
    ]
    rows = await load_segments(conn, tenant, sid)
    out += [(int(r["time_us"]), segment_record(r)) for r in rows]
    out.sort(key=lambda x: x[0])
    return out


class OutputFeed:
    """The detect worker's view of ``detect_feed``; see the module docstring. One batch at a
    time: :meth:`take`, then :meth:`done` or :meth:`abort`."""

    def __init__(self, db: SyncPostgres, *, max_rows: int = MAX_ROWS) -> None:
        self._db = db
        self._max_rows = max_rows
        self._tx: Any = None

    @property
    def open(self) -> bool:
        """Whether a taken batch awaits :meth:`done` / :meth:`abort`."""
        return self._tx is not None

    def take(self) -> FeedBatch | None:
        """Lock the oldest free feed rows and load their segments; None (and no transaction
        left open) when there are none."""
        if self._tx is not None:
            raise RuntimeError("take() twice without done()/abort()")

        async def op(conn: Connection) -> FeedBatch | None:
            tx = conn.transaction()
            await tx.start()
            try:
                rows = await conn.fetch(
                    "SELECT id, tenant, sid, seg_from, seg_to FROM detect_feed ORDER BY id"
                    " LIMIT $1 FOR UPDATE SKIP LOCKED",
                    self._max_rows,
                )
                if not rows:
                    await tx.rollback()
                    return None
                segs = await load_segment_ranges(
                    conn, [(r["tenant"], r["sid"], r["seg_from"], r["seg_to"]) for r in rows]
                )
            except BaseException:
                await tx.rollback()
                raise
            self._tx = tx
            by_range: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for seg in segs:
                by_range.setdefault((seg["tenant"], seg["sid"]), []).append(segment_record(seg))
            out = []
            for r in rows:
                same = by_range.get((r["tenant"], r["sid"]), [])
                mine = [x for x in same if r["seg_from"] <= x["seg_no"] < r["seg_to"]]
                out.append(FeedRow(int(r["id"]), mine))
            return FeedBatch(tuple(out))

        return self._db.run("take terminal output for detection", op)

    def done(self, ids: Sequence[int]) -> None:
        """Delete the taken rows and commit (after their alerts were acknowledged)."""
        tx, self._tx = self._tx, None
        if tx is None:
            raise RuntimeError("done() without take()")

        async def op(conn: Connection) -> None:
            await conn.execute("DELETE FROM detect_feed WHERE id = ANY($1::bigint[])", list(ids))
            await tx.commit()

        self._db.run("delete the detected terminal output from the feed", op)

    def abort(self) -> None:
        """Give the taken rows back (roll back); never raises."""
        tx, self._tx = self._tx, None
        if tx is None:
            return

        async def op(_: Connection) -> None:
            await tx.rollback()

        try:
            self._db.run("roll back the terminal output batch", op)
        except Exception:  # the connection is dropped, which rolls back too
            self._db.drop()

    def backlog(self) -> int:
        """Feed rows not yet detected."""

        async def op(conn: Connection) -> int:
            return int(await conn.fetchval("SELECT count(*) FROM detect_feed"))

        return self._db.run("count the terminal output feed", op)


__all__ = [
    "MAX_ROWS",
    "FeedBatch",
    "FeedRow",
    "OutputFeed",
    "segment_record",
    "session_records",
]
