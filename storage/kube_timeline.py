"""The kube timeline's reads: ``kube.request`` events and kubectl exec sessions of one tenant
in a time window (:func:`ingest.timeline.kube_timeline` merges and groups them)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

from storage.pg import map_pg_errors

Executor: TypeAlias = Any  # asyncpg Pool or Connection

_REQUESTS_SQL = (
    "SELECT uid, time, user_name, body->>'kubernetes_cluster' AS cluster,"
    # The Kubernetes verb and subresource columns (schemas.kube), not Teleport's HTTP method.
    " verb, kubernetes_subresource AS subresource,"
    " COALESCE(body->>'resource_kind', '') AS resource,"
    " COALESCE(body->>'resource_namespace', '') AS namespace,"
    " COALESCE(body->>'resource_name', '') AS name,"
    " CASE WHEN jsonb_typeof(body->'response_code') = 'number'"
    "      THEN (body->>'response_code')::int END AS response_code,"
    " COALESCE(body->>'request_path', '') AS request_path"
    " FROM events WHERE tenant = $1 AND event = 'kube.request'"
    " AND time >= $2 AND time < $3"
    " AND ($4::text IS NULL OR user_name = $4)"
    " AND ($5::text[] IS NULL OR body->>'kubernetes_cluster' = ANY($5))"
    " ORDER BY time, uid LIMIT $6"
)
_SESSIONS_SQL = (
    "SELECT sid, started_at, ended_at, user_name, kubernetes_cluster, duration_ms, exit_code,"
    " command FROM sessions WHERE tenant = $1 AND kind = 'kube' AND started_at < $3"
    " AND COALESCE(ended_at, started_at + duration_ms * interval '1 millisecond') >= $2"
    " AND ($4::text IS NULL OR user_name = $4)"
    " AND ($5::text[] IS NULL OR kubernetes_cluster = ANY($5))"
    " ORDER BY started_at, sid LIMIT $6"
)


async def _window(
    db: Executor, sql: str, tenant: str, since: datetime, until: datetime, user: str | None,
    clusters: Sequence[str] | None, limit: int,
) -> list[Any]:  # fmt: skip
    with map_pg_errors("cannot read the kube timeline"):
        cluster_list = None if clusters is None else list(clusters)
        return list(await db.fetch(sql, tenant, since, until, user, cluster_list, limit))


async def kube_requests(
    db: Executor, tenant: str, since: datetime, until: datetime, user: str | None,
    clusters: Sequence[str] | None, limit: int,
) -> list[Any]:  # fmt: skip
    """``tenant``'s kube.request events in ``[since, until)`` in (time, uid) order; ``clusters``
    None: any cluster, empty: none."""
    return await _window(db, _REQUESTS_SQL, tenant, since, until, user, clusters, limit)


async def kube_sessions(
    db: Executor, tenant: str, since: datetime, until: datetime, user: str | None,
    clusters: Sequence[str] | None, limit: int,
) -> list[Any]:  # fmt: skip
    """``tenant``'s kubectl exec sessions overlapping ``[since, until)``, by start."""
    return await _window(db, _SESSIONS_SQL, tenant, since, until, user, clusters, limit)


__all__ = ["Executor", "kube_requests", "kube_sessions"]
