"""The segmenter's tables: ``segment_queue``, ``session_text``, ``text_segments`` and the
``detect_feed`` outbox. Every SQL statement of the segmenter (:mod:`ingest.segmenter`) is here;
the segmenter decides, in one transaction per session, in what order they run.

Driver errors leave as the project's errors (:func:`storage.pg.map_pg_errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from storage.pg import Connection, map_pg_errors
from storage.search.model import SegmentRow

#: The session columns stamped on its segments (search filters use them).
WHO_COLUMNS = ("user_name", "login", "server_id", "cluster_name", "kubernetes_cluster")

Who = tuple[str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class SessionForText:
    """What rendering needs to know of a session."""

    tenant: str
    started_at: datetime
    who: Who
    cols: int
    rows: int


@dataclass(frozen=True, slots=True)
class TextPosition:
    """Where rendering of a session stands (``session_text``)."""

    state: bytes | None
    seg_next: int
    text_seq: int
    who: Who
    kf_bytes: int = 0


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A stored chunk as the segmenter reads it (payload still compressed)."""

    seq: int
    frames: bytes
    codec: int
    dict_id: int | None
    raw_len: int
    payload: bytes
    final: bool
    key_id: int | None = None


def _who(row: Any) -> Who:
    user, login, server_id, cluster_name, kube_cluster = (row[c] for c in WHO_COLUMNS)
    return (user, login, server_id, cluster_name, kube_cluster)


async def try_lock_session(conn: Connection, sid: str) -> bool:
    """Take the session's segmenter lock for this transaction; False when another holds it."""
    with map_pg_errors(f"cannot lock session {sid} for rendering"):
        return bool(
            await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtextextended('sv_segments/' || $1, 0))",
                sid,
            )
        )


async def queue_generation(conn: Connection, sid: str) -> int | None:
    """The session's ``segment_queue`` generation (None: not queued)."""
    with map_pg_errors("cannot read the segment queue"):
        gen = await conn.fetchval("SELECT gen FROM segment_queue WHERE sid = $1", sid)
    return None if gen is None else int(gen)


async def dequeue(conn: Connection, sid: str, gen: int) -> None:
    """Remove the session from the queue unless work was enqueued since ``gen``."""
    with map_pg_errors("cannot update the segment queue"):
        await conn.execute("DELETE FROM segment_queue WHERE sid = $1 AND gen = $2", sid, gen)


async def session_for_text(conn: Connection, sid: str) -> SessionForText | None:
    """The session (``FOR KEY SHARE``: no conflict with the persist worker, but retention
    cannot delete it under us); None when it was never opened or was deleted."""
    with map_pg_errors(f"cannot read session {sid}"):
        row = await conn.fetchrow(
            "SELECT tenant, started_at, user_name, login, server_id, cluster_name,"
            " kubernetes_cluster, cols, rows FROM sessions WHERE sid = $1 FOR KEY SHARE",
            sid,
        )
    if row is None:
        return None
    return SessionForText(row["tenant"], row["started_at"], _who(row), row["cols"], row["rows"])


async def text_position(conn: Connection, sid: str) -> TextPosition | None:
    """Where rendering of the session stands (None: nothing rendered yet)."""
    with map_pg_errors(f"cannot read the text position of {sid}"):
        row = await conn.fetchrow(
            "SELECT text_state, text_seg_next, text_seq, user_name, login, server_id,"
            " cluster_name, kubernetes_cluster, kf_bytes FROM session_text WHERE sid = $1",
            sid,
        )
    if row is None:
        return None
    state = None if row["text_state"] is None else bytes(row["text_state"])
    return TextPosition(
        state, int(row["text_seg_next"]), int(row["text_seq"]), _who(row), int(row["kf_bytes"])
    )


async def restamp_segments(conn: Connection, sid: str, who: Who) -> int:
    """Give the session's segments its current who/where; returns how many rows changed."""
    with map_pg_errors(f"cannot update the segments of {sid}"):
        status = await conn.execute(
            "UPDATE text_segments SET user_name = $2, login = $3, server_id = $4,"
            " cluster_name = $5, kubernetes_cluster = $6 WHERE sid = $1",
            sid,
            *who,
        )
    return int(status.split()[-1])


async def chunks_after(conn: Connection, sid: str, after: int, limit: int) -> list[StoredChunk]:
    """Up to ``limit`` stored chunks of the session with ``seq > after``, in seq order."""
    with map_pg_errors(f"cannot read the chunks of {sid}"):
        rows = await conn.fetch(
            "SELECT seq, frames, codec, dict_id, raw_len, payload, final, key_id FROM chunks"
            " WHERE sid = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            sid,
            after,
            limit,
        )
    return [
        StoredChunk(
            int(r["seq"]),
            bytes(r["frames"]),
            int(r["codec"]),
            r["dict_id"],
            int(r["raw_len"]),
            bytes(r["payload"]),
            bool(r["final"]),
            r["key_id"],
        )
        for r in rows
    ]


_INSERT_SEGMENTS = (
    "INSERT INTO text_segments (sid, seg_no, tenant, start_ms, end_ms, time_us, text,"
    " text_norm, times, user_name, login, server_id, cluster_name, kubernetes_cluster)"
    " SELECT $1, seg_no, $2, start_ms, end_ms, time_us, text, text_norm,"
    " translate(times, '[]', '{}')::bigint[], $3, $4, $5, $6, $7"
    " FROM unnest($8::int[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[],"
    " $13::text[], $14::text[]) AS x(seg_no, start_ms, end_ms, time_us, text, text_norm, times)"
    " ON CONFLICT (sid, seg_no) DO NOTHING"
)


async def insert_segments(conn: Connection, segments: Sequence[SegmentRow]) -> None:
    """Insert rendered segments; a segment already there is kept (``ON CONFLICT DO NOTHING``:
    rendering is deterministic, so a re-render writes the same rows).

    One statement per session (in practice one per call): the columns a session's segments
    share (sid, tenant, who/where) travel once as parameters, not once per row, since encoding
    them per row was a fifth of the segmenter's CPU (issue 16)."""
    groups: dict[tuple[str, str, str, str, str, str, str], list[SegmentRow]] = {}
    for g in segments:
        key = (g.sid, g.tenant, g.user, g.login, g.server_id, g.cluster_name, g.kubernetes_cluster)
        groups.setdefault(key, []).append(g)
    with map_pg_errors("cannot insert text segments"):
        for shared, rows in groups.items():
            await conn.execute(
                _INSERT_SEGMENTS,
                *shared,
                [g.seg_no for g in rows],
                [g.start_ms for g in rows],
                [g.end_ms for g in rows],
                [g.time_us for g in rows],
                [g.text for g in rows],
                [g.text_norm for g in rows],
                [orjson.dumps(g.times).decode() for g in rows],
            )


async def append_detect_feed(
    conn: Connection, tenant: str, sid: str, seg_from: int, seg_to: int
) -> None:
    """Hand segments ``[seg_from, seg_to)`` to the detect worker. In the transaction that
    inserts them, so detection sees a segment exactly when it is committed (migration 006)."""
    with map_pg_errors("cannot append to the detect feed"):
        await conn.execute(
            "INSERT INTO detect_feed (tenant, sid, seg_from, seg_to) VALUES ($1, $2, $3, $4)",
            tenant,
            sid,
            seg_from,
            seg_to,
        )


async def save_text_position(
    conn: Connection, sid: str, tenant: str, position: TextPosition
) -> None:
    """Store where rendering of the session stands (with the segments it produced)."""
    with map_pg_errors(f"cannot store the text position of {sid}"):
        await conn.execute(
            "INSERT INTO session_text AS t (sid, tenant, text_state, text_seg_next, text_seq,"
            " user_name, login, server_id, cluster_name, kubernetes_cluster, kf_bytes)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            " ON CONFLICT (sid) DO UPDATE SET text_state = EXCLUDED.text_state,"
            " kf_bytes = EXCLUDED.kf_bytes,"
            " text_seg_next = EXCLUDED.text_seg_next, text_seq = EXCLUDED.text_seq,"
            " user_name = EXCLUDED.user_name, login = EXCLUDED.login,"
            " server_id = EXCLUDED.server_id, cluster_name = EXCLUDED.cluster_name,"
            " kubernetes_cluster = EXCLUDED.kubernetes_cluster",
            sid,
            tenant,
            position.state,
            position.seg_next,
            position.text_seq,
            *position.who,
            position.kf_bytes,
        )


#: A keyframe as stored: ``(after_seq, at_ms, screen)`` (:class:`replay.keyframe.Keyframe`).
StoredKeyframe = tuple[int, int, bytes]


async def insert_keyframes(
    conn: Connection, tenant: str, sid: str, keyframes: Sequence[StoredKeyframe]
) -> None:
    """Store the session's new keyframes (a re-render writes the same ones: kept)."""
    if not keyframes:
        return
    with map_pg_errors(f"cannot store the keyframes of {sid}"):
        await conn.executemany(
            "INSERT INTO session_keyframes (sid, tenant, after_seq, at_ms, screen)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sid, after_seq) DO NOTHING",
            [(sid, tenant, after_seq, at_ms, screen) for after_seq, at_ms, screen in keyframes],
        )


async def insert_markers(
    conn: Connection, tenant: str, sid: str, markers: Sequence[tuple[int, str, str]]
) -> None:
    """Store the session's new timeline markers ``(at_ms, kind, label)`` (kept on re-render)."""
    if not markers:
        return
    with map_pg_errors(f"cannot store the markers of {sid}"):
        await conn.executemany(
            "INSERT INTO session_markers (sid, tenant, at_ms, kind, label)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            [(sid, tenant, at_ms, kind, label) for at_ms, kind, label in markers],
        )


async def queued_sessions(conn: Connection, limit: int) -> list[str]:
    """Up to ``limit`` queued sids, oldest first."""
    with map_pg_errors("cannot read the segment queue"):
        rows = await conn.fetch(
            "SELECT sid FROM segment_queue ORDER BY enqueued_at, sid LIMIT $1", limit
        )
    return [r["sid"] for r in rows]


async def queue_length(conn: Connection) -> int:
    """Sessions in the queue (0: every stored chunk is rendered)."""
    with map_pg_errors("cannot read the segment queue"):
        return int(await conn.fetchval("SELECT count(*) FROM segment_queue"))


async def rendered_through(conn: Connection, sids: Sequence[str]) -> dict[str, int]:
    """Per sid, the last chunk seq the segmenter has rendered (absent: none yet). A chunk
    ``(sid, seq)`` stored in ``chunks`` has its segments in ``text_segments`` once
    ``rendered_through[sid] >= seq``."""
    wanted = sorted(set(sids))
    if not wanted:
        return {}
    with map_pg_errors("cannot read the segmenter's positions"):
        rows = await conn.fetch(
            "SELECT sid, text_seq FROM session_text WHERE sid = ANY($1::text[])", wanted
        )
    return {r["sid"]: int(r["text_seq"]) for r in rows}


async def unsynced_sessions(conn: Connection, sids: Sequence[str]) -> set[str]:
    """The sids of ``sids`` whose segments do not carry their session's current who/where yet
    (enrichment committed, the segmenter not past it)."""
    wanted = sorted(set(sids))
    if not wanted:
        return set()
    with map_pg_errors("cannot read the segmenter's positions"):
        rows = await conn.fetch(
            "SELECT s.sid FROM sessions s JOIN session_text t ON t.sid = s.sid"
            " WHERE s.sid = ANY($1::text[]) AND"
            " (s.user_name, s.login, s.server_id, s.cluster_name, s.kubernetes_cluster)"
            " IS DISTINCT FROM"
            " (t.user_name, t.login, t.server_id, t.cluster_name, t.kubernetes_cluster)",
            wanted,
        )
    return {r["sid"] for r in rows}


__all__ = [
    "WHO_COLUMNS",
    "SessionForText",
    "StoredChunk",
    "TextPosition",
    "Who",
    "append_detect_feed",
    "chunks_after",
    "dequeue",
    "insert_segments",
    "queue_generation",
    "queue_length",
    "queued_sessions",
    "rendered_through",
    "restamp_segments",
    "save_text_position",
    "session_for_text",
    "text_position",
    "try_lock_session",
    "unsynced_sessions",
]
