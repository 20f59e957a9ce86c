"""The PostgreSQL search backend (the embedded default, and the fallback when OpenSearch is down).

One SQL statement per page, built from the :class:`~storage.search.model.Query` with bind
parameters only: user input never becomes SQL text. Text terms become ``LIKE`` patterns with
``%``, ``_`` and ``\\`` escaped (:func:`~storage.search.model.escape_like`), matched against the
casefolded ``text_norm`` (pg_trgm GIN indexes). The tenant is always bound. Keyset pagination on
``(time_us, id COLLATE "C")`` descending; with both kinds, the events and the text segments
sub-selects are each limited and merged with ``UNION ALL``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg
import orjson

from sessionvault.errors import StorageError
from storage import pg
from storage.eventstore import search_column_arrays
from storage.search.model import (
    AnyHit,
    Page,
    Query,
    SegmentRow,
    escape_like,
    event_columns,
    event_hit,
    make_page,
    segment_hit,
    to_us,
)
from storage.search.watermark import Pending, pending

log = logging.getLogger(__name__)

# Query filter -> column, per table. Filters missing from a table's map exclude that table.
_EVENT_COLUMNS = {
    "user": "user_name",
    "login": "login",
    "server_id": "server_id",
    "cluster_name": "cluster_name",
    "kubernetes_cluster": "kubernetes_cluster",
    "kubernetes_namespace": "kubernetes_namespace",
    "verb": "verb",
    "event": "event",
    "code": "code",
    "sid": "sid",
}
_SEGMENT_COLUMNS = {
    "user": "user_name",
    "login": "login",
    "server_id": "server_id",
    "cluster_name": "cluster_name",
    "kubernetes_cluster": "kubernetes_cluster",
    "sid": "sid",
}

_EVENT_SELECT = (
    "SELECT 'event' AS kind, e.time_us, e.uid COLLATE \"C\" AS id, e.body::text AS body,"
    " NULL::text AS sid, NULL::int AS seg_no, NULL::bigint AS start_ms, NULL::bigint AS end_ms,"
    " NULL::text AS text, NULL::bigint[] AS times, NULL::text AS user_name, NULL::text AS login,"
    " NULL::text AS server_id, NULL::text AS cluster_name, NULL::text AS kubernetes_cluster"
    " FROM events e"
)
_SEGMENT_SELECT = (
    "SELECT 'output' AS kind, g.time_us, g.id, NULL::text AS body, g.sid, g.seg_no, g.start_ms,"
    " g.end_ms, g.text, g.times, g.user_name, g.login, g.server_id, g.cluster_name,"
    " g.kubernetes_cluster FROM text_segments g"
)


class _Params:
    """Bind parameters of one statement: ``add`` returns the placeholder."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}"


def _where(q: Query, p: _Params, alias: str, table: str) -> list[str]:
    columns = _EVENT_COLUMNS if table == "events" else _SEGMENT_COLUMNS
    idcol = f'{alias}.uid COLLATE "C"' if table == "events" else f"{alias}.id"
    conds = [f"{alias}.tenant = {p.add(q.tenant, 'text')}"]
    if q.since is not None:
        conds.append(f"{alias}.time_us >= {p.add(q.since_us, 'bigint')}")
        if table == "events":  # lets PostgreSQL skip the monthly partitions before `since`
            conds.append(f"{alias}.time >= {p.add(q.since, 'timestamptz')}")
    if q.until is not None:
        conds.append(f"{alias}.time_us < {p.add(q.until_us, 'bigint')}")
        if table == "events":
            conds.append(f"{alias}.time < {p.add(q.until, 'timestamptz')}")
    after = q.after
    if after is not None:
        t, i = after
        conds.append(
            f'({alias}.time_us, {idcol}) < ({p.add(t, "bigint")}, {p.add(i, "text")} COLLATE "C")'
        )
    for name, values in q.filters().items():
        if name == "kubernetes_resource":
            ph = p.add(list(values), "text[]")
            conds.append(
                f"({alias}.kubernetes_resource_kind = ANY({ph})"
                f" OR {alias}.kubernetes_resource_name = ANY({ph}))"
            )
            continue
        if name == "verb":  # the Kubernetes verb or the subresource (schemas.kube)
            ph = p.add(list(values), "text[]")
            conds.append(
                f"({alias}.verb = ANY({ph}) OR {alias}.kubernetes_subresource = ANY({ph}))"
            )
            continue
        col = columns[name]  # event-only filters never reach the segments (wants_output)
        conds.append(f"{alias}.{col} = ANY({p.add(list(values), 'text[]')})")
    if q.scope_kubernetes_clusters is not None:
        ph = p.add(list(q.scope_kubernetes_clusters), "text[]")
        conds.append(f"{alias}.kubernetes_cluster = ANY({ph})")
    for term in q.terms_norm:
        ph = p.add("%" + escape_like(term) + "%", "text")
        conds.append(f"{alias}.text_norm LIKE {ph} ESCAPE '\\'")
    return conds


def build_sql(q: Query) -> tuple[str, list[Any]]:
    """The statement and its parameters for one page of ``q`` (``limit + 1`` rows)."""
    p = _Params()
    n = q.limit + 1
    parts: list[str] = []
    if q.wants_events:
        where = " AND ".join(_where(q, p, "e", "events"))
        parts.append(
            f"({_EVENT_SELECT} WHERE {where}"
            f' ORDER BY e.time_us DESC, e.uid COLLATE "C" DESC LIMIT {p.add(n, "int")})'
        )
    if q.wants_output:
        where = " AND ".join(_where(q, p, "g", "text_segments"))
        parts.append(
            f"({_SEGMENT_SELECT} WHERE {where}"
            f" ORDER BY g.time_us DESC, g.id DESC LIMIT {p.add(n, 'int')})"
        )
    if not parts:
        return "", []
    if len(parts) == 1:
        return parts[0], p.values
    sql = " UNION ALL ".join(parts) + f" ORDER BY time_us DESC, id DESC LIMIT {p.add(n, 'int')}"
    return sql, p.values


def hit_from_row(q: Query, r: Mapping[str, Any]) -> AnyHit:
    if r["kind"] == "event":
        return event_hit(q.tenant, r["time_us"], orjson.loads(r["body"]))
    row = SegmentRow(
        tenant=q.tenant,
        sid=r["sid"],
        seg_no=r["seg_no"],
        start_ms=r["start_ms"],
        end_ms=r["end_ms"],
        time_us=r["time_us"],
        text=r["text"],
        times=tuple(r["times"]),
        user=r["user_name"],
        login=r["login"],
        server_id=r["server_id"],
        cluster_name=r["cluster_name"],
        kubernetes_cluster=r["kubernetes_cluster"],
    )
    return segment_hit(row, q.terms_norm)


class PgSearchBackend:
    """Search over ``events`` and ``text_segments`` (see the module docstring).

    Give a ``pool`` (shared with the caller, not closed here) or a ``dsn`` (a small pool is
    opened on first use and closed by :meth:`close`).
    """

    name = "postgres"

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: asyncpg.Pool | None = None,
        health_timeout_s: float = 2.0,
    ) -> None:
        if pool is None and dsn is None:
            raise ValueError("PgSearchBackend needs a dsn or a pool")
        self._dsn = dsn
        self._pool = pool
        self._own_pool = pool is None
        self._health_timeout_s = health_timeout_s

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            assert self._dsn is not None
            self._pool = await pg.create_pool(self._dsn)
        return self._pool

    async def close(self) -> None:
        if self._own_pool and self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def search(self, query: Query) -> Page:
        sql, params = build_sql(query)
        if not sql:
            return make_page(query, [], self.name)
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn, conn.transaction(readonly=True):
                # asyncpg prepares every statement; after five runs PostgreSQL may switch to a
                # generic plan, which cannot use the trigram index for ``LIKE $n``: a rare term
                # then took ~1 s instead of ~3 ms (bench/search_pg.py, hard cases). SET LOCAL
                # works on shared pools too (the API passes its own).
                await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                rows = await conn.fetch(sql, *params)
        except Exception as exc:
            raise pg.translate(exc, "search query failed") from exc
        return make_page(query, [hit_from_row(query, r) for r in rows], self.name)

    async def health(self) -> bool:
        try:
            pool = await self._get_pool()
            return bool(await pool.fetchval("SELECT 1", timeout=self._health_timeout_s) == 1)
        except Exception as exc:
            log.debug("postgres search backend unhealthy: %s", exc)
            return False

    async def index_pending(self, tenant: str) -> Pending:
        """What OpenSearch may not hold yet for ``tenant`` (the search watermark)."""
        return await pending(await self._get_pool(), tenant)

    async def session_starts(self, tenant: str, sids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(``started_at`` in µs, ``duration_ms``) of the tenant's sessions among ``sids``."""
        if not sids:
            return {}
        pool = await self._get_pool()
        try:
            rows = await pool.fetch(
                "SELECT sid, started_at, duration_ms FROM sessions"
                " WHERE tenant = $1 AND sid = ANY($2::text[])",
                tenant,
                sorted(set(sids)),
            )
        except Exception as exc:
            raise pg.translate(exc, "cannot read session start times") from exc
        return {r["sid"]: (to_us(r["started_at"]), int(r["duration_ms"])) for r in rows}


async def refresh_event_columns(
    conn: asyncpg.Connection, *, event: str | None = None, batch: int = 5000
) -> int:
    """Rewrite the search columns of stored events (``event``: of that type only) from their
    bodies through :func:`storage.search.model.event_columns`, the writer's own rule, after the
    rule changed. Keyset pages over the primary key (no long transaction); idempotent.
    Returns the rows read."""
    total = 0
    after: tuple[str, str, Any] | None = None
    while True:
        p = _Params()
        p.add(batch, "int")
        conds = []
        if event is not None:
            conds.append(f"event = {p.add(event, 'text')}")
        if after is not None:
            t, u, ti = (
                p.add(after[0], "text"),
                p.add(after[1], "text"),
                p.add(after[2], "timestamptz"),
            )
            conds.append(f"(tenant, uid, time) > ({t}, {u}, {ti})")
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        try:
            rows = await conn.fetch(
                "SELECT tenant, uid, time, time_us, body::text AS body FROM events"
                f"{where} ORDER BY tenant, uid, time LIMIT $1",
                *p.values,
            )
            if not rows:
                return total
            cols = [event_columns(orjson.loads(r["body"]), r["time_us"]) for r in rows]
            await conn.execute(
                "UPDATE events e SET login = u.lo, server_id = u.si, cluster_name = u.cn,"
                " kubernetes_cluster = u.kc, kubernetes_namespace = u.kn,"
                " kubernetes_resource_kind = u.kk, kubernetes_resource_name = u.kr, verb = u.vb,"
                " kubernetes_subresource = u.ks, text_norm = u.tn"
                " FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[],"
                " $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],"
                " $11::text[], $12::text[], $13::text[], $14::text[])"
                " AS u(tenant, uid, time, tu, lo, si, cn, kc, kn, kk, kr, vb, tn, ks)"
                " WHERE e.tenant = u.tenant AND e.uid = u.uid AND e.time = u.time",
                [r["tenant"] for r in rows],
                [r["uid"] for r in rows],
                [r["time"] for r in rows],
                *search_column_arrays(cols),
            )
        except Exception as exc:
            raise StorageError(f"cannot refresh event search columns: {exc}") from exc
        total += len(rows)
        last = rows[-1]
        after = (last["tenant"], last["uid"], last["time"])


async def _kube_verbs(conn: asyncpg.Connection) -> int:
    # Migration 009: the verb column held Teleport's HTTP method (schemas.kube).
    return await refresh_event_columns(conn, event="kube.request")


BACKFILLS: dict[str, Callable[[asyncpg.Connection], Awaitable[int]]] = {
    "kube_verbs": _kube_verbs,
}
"""Data backfills by the name a migration inserts into ``sv_backfills`` (run by
:func:`storage.pg.migrate`)."""

__all__ = [
    "BACKFILLS",
    "PgSearchBackend",
    "build_sql",
    "hit_from_row",
    "refresh_event_columns",
]
