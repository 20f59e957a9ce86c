"""The write side of the event store: audit events, monthly partitions, session enrichment.

Invariants:

* Events are idempotent on ``(tenant, uid, time)``: :func:`insert_events` uses ``ON CONFLICT DO
  NOTHING``, so a redelivered event is a no-op.
* ``events`` is partitioned by month. :func:`ensure_partitions` creates a month's partition
  before its events are written; rows that reached the default partition for that month
  earlier are moved into the new partition in the same transaction (PostgreSQL refuses to
  attach a partition whose range the default partition already holds rows for). Creation is
  serialised across writers by an advisory lock.
* Enrichment only reads events of the session's own tenant.
* asyncpg exceptions never leave this module (translated by
  :func:`storage.pg.translate`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import orjson

from schemas.kube import merge_kube_requests
from sessionvault.errors import StorageError
from storage.evidence_store import SELF_SIGNED_EVENTS, Ledger
from storage.persist_logic import EventRow, month_bounds, partition_name
from storage.pg import translate
from storage.search.model import EventColumns, event_columns, to_us

log = logging.getLogger(__name__)

_PARTITION_LOCK = 7413002

SESSION_START = "session.start"
SESSION_END = "session.end"
KUBE_REQUEST = "kube.request"

# The search columns (migration 003) are written with every event: see
# storage.search.model.event_columns.
_INSERT_EVENTS = (
    "INSERT INTO events (tenant, uid, time, event, code, sid, ei, user_name, body, time_us,"
    " login, server_id, cluster_name, kubernetes_cluster, kubernetes_namespace,"
    " kubernetes_resource_kind, kubernetes_resource_name, verb, text_norm,"
    " kubernetes_subresource)"
    " SELECT t, u, ti, e, c, s, ei, un, b::jsonb, tu, lo, si, cn, kc, kn, kk, kr, vb, tn, ks"
    " FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],"
    " $6::text[], $7::bigint[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::text[],"
    " $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[],"
    " $20::text[])"
    " AS x(t, u, ti, e, c, s, ei, un, b, tu, lo, si, cn, kc, kn, kk, kr, vb, tn, ks)"
)


def _search_arrays(rows: Sequence[EventRow]) -> list[list[Any]]:
    cols = [
        r.search if r.search is not None else event_columns(orjson.loads(r.body), to_us(r.time))
        for r in rows
    ]
    return search_column_arrays(cols)


def search_column_arrays(cols: Sequence[EventColumns]) -> list[list[Any]]:
    """The search columns of events as one array each, in the order the writers bind them:
    time_us, login, server_id, cluster_name, kubernetes_cluster, kubernetes_namespace,
    kubernetes_resource_kind, kubernetes_resource_name, verb, text_norm,
    kubernetes_subresource."""
    return [
        [c.time_us for c in cols],
        [c.login for c in cols],
        [c.server_id for c in cols],
        [c.cluster_name for c in cols],
        [c.kubernetes_cluster for c in cols],
        [c.kubernetes_namespace for c in cols],
        [c.kubernetes_resource_kind for c in cols],
        [c.kubernetes_resource_name for c in cols],
        [c.verb for c in cols],
        [c.text_norm for c in cols],
        [c.kubernetes_subresource for c in cols],
    ]


async def known_partitions(conn: asyncpg.Connection) -> set[str]:
    """Names of the partitions ``events`` has now."""
    try:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'events'::regclass"
        )
    except Exception as exc:
        raise translate(exc, "cannot list event partitions") from exc
    return {r["relname"] for r in rows}


async def ensure_partitions(
    conn: asyncpg.Connection, months: Iterable[tuple[int, int]], known: set[str]
) -> list[str]:
    """Create the monthly partitions of ``months`` not in ``known`` (updated in place).

    Each partition is created in its own short transaction, outside the batch transaction, so
    the DDL's locks are held only briefly. Returns the names created.
    """
    created: list[str] = []
    for year, month in sorted(set(months)):
        name = partition_name(year, month)
        if name in known:
            continue
        start, end = month_bounds(year, month)
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK)
                exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
                if not exists:
                    await conn.execute(
                        f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS INCLUDING STORAGE)"
                    )
                    moved = await conn.fetchval(
                        f"WITH m AS (DELETE FROM events_default WHERE time >= $1 AND time < $2"
                        f" RETURNING *), i AS (INSERT INTO {name} SELECT * FROM m RETURNING 1)"
                        " SELECT count(*) FROM i",
                        start,
                        end,
                    )
                    await conn.execute(
                        f"ALTER TABLE events ATTACH PARTITION {name}"
                        f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                    )
                    created.append(name)
                    log.info("created event partition %s (moved %d rows from default)", name, moved)
        except Exception as exc:
            raise translate(exc, f"cannot create event partition {name}") from exc
        known.add(name)
    return created


# What a stored row is, for the evidence ledger: PostgreSQL's own text of the jsonb body is
# hashed (schemas.evidence: "event" leaves), so verify recomputes it the same way.
_RETURNING_LEAF = (
    " RETURNING tenant, uid, time_us, event, coalesce(sid, '') AS sid,"
    " encode(sha256(convert_to(body::text, 'UTF8')), 'hex') AS sha"
)


def _to_ledger(ledger: Ledger | None, done: Sequence[Any]) -> None:
    if ledger is not None:
        for r in done:
            if r["event"] in SELF_SIGNED_EVENTS:
                continue
            ledger.add(r["tenant"], ("event", r["uid"], r["time_us"], r["sid"], r["sha"]))


async def insert_events(
    conn: asyncpg.Connection, rows: Sequence[EventRow], *, ledger: Ledger | None = None
) -> int:
    """Insert events idempotently; return how many were new. ``ledger``: record each stored
    (or, for ``kube.request``, changed) row as an evidence leaf.

    ``kube.request`` events are merged instead (see :func:`upsert_kube_requests`): the stages
    of one API request arrive as separate records with the same ``(uid, time)``.
    """
    kube = [r for r in rows if r.event == KUBE_REQUEST]
    if kube:
        rows = [r for r in rows if r.event != KUBE_REQUEST]
        return await upsert_kube_requests(conn, kube, ledger=ledger) + await insert_events(
            conn, rows, ledger=ledger
        )
    if not rows:
        return 0
    try:
        done = await conn.fetch(
            _INSERT_EVENTS + " ON CONFLICT (tenant, uid, time) DO NOTHING" + _RETURNING_LEAF,
            [r.tenant for r in rows],
            [r.uid for r in rows],
            [r.time for r in rows],
            [r.event for r in rows],
            [r.code for r in rows],
            [r.sid for r in rows],
            [r.ei for r in rows],
            [r.user_name for r in rows],
            [r.body for r in rows],
            *_search_arrays(rows),
        )
    except StorageError:
        raise
    except Exception as exc:
        raise translate(exc, "cannot insert events") from exc
    _to_ledger(ledger, done)
    return len(done)


async def enrich_sessions(conn: asyncpg.Connection, keys: Iterable[tuple[str, str]]) -> int:
    """Copy who/where from stored ``session.start`` events and the end time from
    ``session.end`` events into the sessions ``keys`` ((tenant, sid) pairs) name.

    Run after both the batch's chunks and events are written: events and chunks travel on
    different topics, so either may arrive first; whichever comes second triggers this.
    Non-empty event values win over the opening chunk's; returns the rows updated.
    """
    pairs = sorted(set(keys))
    if not pairs:
        return 0
    tenants = [t for t, _ in pairs]
    sids = [s for _, s in pairs]
    try:
        started = await conn.execute(
            "UPDATE sessions s SET"
            " user_name = COALESCE(NULLIF(e.body->>'user', ''), s.user_name),"
            " login = COALESCE(NULLIF(e.body->>'login', ''), s.login),"
            " server_id = COALESCE(NULLIF(e.body->>'server_id', ''), s.server_id),"
            " cluster_name = COALESCE(NULLIF(e.body->>'cluster_name', ''), s.cluster_name),"
            " updated_at = now()"
            " FROM (SELECT DISTINCT ON (ev.tenant, ev.sid) ev.tenant, ev.sid, ev.body"
            "       FROM events ev JOIN unnest($1::text[], $2::text[]) AS k(tenant, sid)"
            "         ON ev.tenant = k.tenant AND ev.sid = k.sid"
            "       WHERE ev.event = $3 ORDER BY ev.tenant, ev.sid, ev.time) e"
            " WHERE s.sid = e.sid AND s.tenant = e.tenant",
            tenants,
            sids,
            SESSION_START,
        )
        ended = await conn.execute(
            "UPDATE sessions s SET ended_at = e.time, updated_at = now()"
            " FROM (SELECT ev.tenant, ev.sid, max(ev.time) AS time"
            "       FROM events ev JOIN unnest($1::text[], $2::text[]) AS k(tenant, sid)"
            "         ON ev.tenant = k.tenant AND ev.sid = k.sid"
            "       WHERE ev.event = $3 GROUP BY ev.tenant, ev.sid) e"
            " WHERE s.sid = e.sid AND s.tenant = e.tenant"
            " AND s.ended_at IS DISTINCT FROM e.time",
            tenants,
            sids,
            SESSION_END,
        )
    except Exception as exc:
        raise translate(exc, "cannot enrich sessions from events") from exc
    return int(started.split()[-1]) + int(ended.split()[-1])


async def upsert_kube_requests(
    conn: asyncpg.Connection, rows: Sequence[EventRow], *, ledger: Ledger | None = None
) -> int:
    """Store ``kube.request`` events, merging the stages of one request into one row.

    Rows with the same ``(uid, time)`` (in this batch, and the one already stored) are combined
    with :func:`schemas.kube.merge_kube_requests`, which is commutative and idempotent, so
    any arrival order and any redelivery give the same row. The stored row is locked (``FOR
    UPDATE``) between reading and writing it. The key includes the tenant, so tenants never merge.
    Returns how many rows were new.
    """
    merged: dict[tuple[str, str, Any], tuple[EventRow, dict[str, Any]]] = {}
    for r in rows:
        body = orjson.loads(r.body)
        key = (r.tenant, r.uid, r.time)
        if key in merged:
            first, prev = merged[key]
            body = merge_kube_requests(prev, body)
            r = first
        merged[key] = (r, body)
    try:
        existing = await conn.fetch(
            "SELECT e.uid, e.time, e.tenant, e.body::text AS body FROM events e"
            " JOIN unnest($1::text[], $2::text[], $3::timestamptz[]) AS k(tenant, uid, time)"
            " ON e.tenant = k.tenant AND e.uid = k.uid AND e.time = k.time FOR UPDATE OF e",
            [k[0] for k in merged],
            [k[1] for k in merged],
            [k[2] for k in merged],
        )
    except Exception as exc:
        raise translate(exc, "cannot read stored kube.request events") from exc
    stored = {(e["tenant"], e["uid"], e["time"]): e for e in existing}
    out: list[EventRow] = []
    new = 0
    for key, (row, body) in merged.items():
        old = stored.get(key)
        if old is None:
            new += 1
        else:
            body = merge_kube_requests(orjson.loads(old["body"]), body)
        # The merged body is what is stored, so its search columns are computed from it.
        out.append(
            dataclasses.replace(
                row,
                body=orjson.dumps(body).decode(),
                search=event_columns(body, to_us(row.time)),
            )
        )
    if not out:
        return 0
    try:
        done = await conn.fetch(
            _INSERT_EVENTS + " ON CONFLICT (tenant, uid, time) DO UPDATE SET body = excluded.body,"
            " user_name = excluded.user_name, code = excluded.code, login = excluded.login,"
            " server_id = excluded.server_id, cluster_name = excluded.cluster_name,"
            " kubernetes_cluster = excluded.kubernetes_cluster,"
            " kubernetes_namespace = excluded.kubernetes_namespace,"
            " kubernetes_resource_kind = excluded.kubernetes_resource_kind,"
            " kubernetes_resource_name = excluded.kubernetes_resource_name,"
            " verb = excluded.verb, text_norm = excluded.text_norm,"
            " kubernetes_subresource = excluded.kubernetes_subresource"
            " WHERE events.body <> excluded.body" + _RETURNING_LEAF,
            [r.tenant for r in out],
            [r.uid for r in out],
            [r.time for r in out],
            [r.event for r in out],
            [r.code for r in out],
            [r.sid for r in out],
            [r.ei for r in out],
            [r.user_name for r in out],
            [r.body for r in out],
            *_search_arrays(out),
        )
    except Exception as exc:
        raise translate(exc, "cannot upsert kube.request events") from exc
    _to_ledger(ledger, done)
    return new
