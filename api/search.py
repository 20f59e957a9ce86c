"""Compliance search over HTTP: ``GET /v1/search`` (see :mod:`storage.search.model`).

The tenant comes from the token and only from it: there is no tenant parameter. A token bound
to Kubernetes clusters only ever sees hits of those clusters (the query's cluster scope).
Every filter is repeatable (``?user=alice&user=bob``: either); ``text`` terms must all occur
(literal, case-insensitive substrings; no query syntax). Results are pages in the model's
order; ``next_cursor`` fetches the next one with the same parameters.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from api.auth import require_token
from api.search_query import KIND_CHOICES, SearchFrontEnd, make_query, open_search
from sessionvault.errors import ValidationError
from storage.search.model import MAX_LIMIT, encode_cursor
from storage.tokens import Principal

router = APIRouter(tags=["search"])


class SearchHit(BaseModel):
    """One hit: an audit event or a line of terminal output."""

    kind: Literal["event", "output"] = Field(description="event or output (terminal text)")
    tenant: str
    time: str = Field(description="RFC 3339 UTC with microseconds")
    time_us: int = Field(description="microseconds since the epoch (the sort key)")
    id: str = Field(description="event uid, or SID/SEGMENT_NO for output")
    user: str
    login: str
    server_id: str
    cluster_name: str
    kubernetes_cluster: str
    sid: str | None = Field(description="session id, when the hit is in a session")
    offset_ms: int | None = Field(description="where in the session the hit is (ms)")
    replay: str | None = Field(description="CLI command replaying the session from the hit")
    replay_api: str | None = Field(description="API path exporting the session from the hit")
    event: str | None = Field(None, description="event type (events only)")
    code: str | None = Field(None, description="event code (events only)")
    fields: dict[str, Any] | None = Field(None, description="the event as stored (events only)")
    seg_no: int | None = Field(None, description="segment number (output only)")
    start_ms: int | None = Field(None, description="when the line started (output only)")
    end_ms: int | None = Field(None, description="when the line ended (output only)")
    text: str | None = Field(None, description="the rendered line (output only)")


class SearchPage(BaseModel):
    """One page of hits, newest first."""

    hits: list[SearchHit]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null: last")
    backend: Literal["postgres", "opensearch", "opensearch+postgres"] = Field(
        description="who answered (opensearch+postgres: PostgreSQL from indexed_until on,"
        " OpenSearch before)"
    )
    reason: str = Field(description="why that backend answered")
    indexed_until: str | None = Field(
        description="OpenSearch's watermark for the tenant (RFC 3339): it may not hold what"
        " was stored from then on; null when it holds everything or was not asked"
    )


def keyset_position(after: str) -> tuple[int, str]:
    """``TIME_US:ID`` as a pair (:class:`ValidationError` when it is not one)."""
    us, sep, ident = after.partition(":")
    if not sep or not ident or not us.lstrip("-").isdigit():
        raise ValidationError("bad_cursor", "after: use TIME_US:ID")
    return int(us), ident


def _front_end(request: Request) -> SearchFrontEnd:
    """One search service per app, on the app's pool (created on first use)."""
    fe: SearchFrontEnd | None = getattr(request.app.state, "search", None)
    if fe is None:
        fe = open_search(request.app.state.settings, pool=request.app.state.pool)
        request.app.state.search = fe
    return fe


def _filter_param(description: str) -> Any:
    return Query(description=f"{description} (repeatable: any of the values)")


@router.get(
    "/v1/search",
    summary="Search audit events and terminal output",
    response_model=SearchPage,
    responses={
        400: {"description": "malformed query or cursor"},
        401: {"description": "missing or invalid token"},
        503: {"description": "no backend can answer now"},
    },
)
async def search(
    request: Request,
    response: Response,
    principal: Annotated[Principal, Depends(require_token("read"))],
    text: Annotated[
        list[str] | None,
        Query(description="literal case-insensitive substring; repeat: all must occur"),
    ] = None,
    kind: Annotated[Literal["events", "output", "all"], Query(description="which hits")] = "all",
    user: Annotated[list[str] | None, _filter_param("Teleport user")] = None,
    login: Annotated[list[str] | None, _filter_param("OS login")] = None,
    server_id: Annotated[list[str] | None, _filter_param("server id")] = None,
    cluster_name: Annotated[list[str] | None, _filter_param("proxy cluster name")] = None,
    kubernetes_cluster: Annotated[list[str] | None, _filter_param("Kubernetes cluster")] = None,
    kubernetes_namespace: Annotated[
        list[str] | None, _filter_param("Kubernetes namespace (events only)")
    ] = None,
    kubernetes_resource: Annotated[
        list[str] | None, _filter_param("Kubernetes resource kind or name (events only)")
    ] = None,
    verb: Annotated[
        list[str] | None,
        _filter_param(
            "Kubernetes verb (get, list, watch, create, update, patch, delete, deletecollection)"
            " or subresource (exec, log, ...); not the HTTP method; events only"
        ),
    ] = None,
    event: Annotated[list[str] | None, _filter_param("event type (events only)")] = None,
    code: Annotated[list[str] | None, _filter_param("event code (events only)")] = None,
    sid: Annotated[list[str] | None, _filter_param("session id")] = None,
    since: Annotated[
        str | None, Query(description="from (inclusive): RFC 3339, or a span back like 24h, 7d")
    ] = None,
    until: Annotated[str | None, Query(description="to (exclusive): RFC 3339 or a span")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="hits per page")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    after: Annotated[
        str | None,
        Query(
            description="instead of cursor: the keyset position TIME_US:ID of the last hit you"
            " have (what a federation root asks its leaves with)"
        ),
    ] = None,
) -> dict[str, Any]:
    """Hits of the token's tenant (and clusters) matching every given filter, newest first.

    Each hit in a session links to its replay: ``replay`` (CLI) and ``replay_api`` (this API's
    export route, starting where the hit is)."""
    filters = {
        "user": user,
        "login": login,
        "server_id": server_id,
        "cluster_name": cluster_name,
        "kubernetes_cluster": kubernetes_cluster,
        "kubernetes_namespace": kubernetes_namespace,
        "kubernetes_resource": kubernetes_resource,
        "verb": verb,
        "event": event,
        "code": code,
        "sid": sid,
    }
    query = make_query(
        principal.tenant,
        filters={k: v for k, v in filters.items() if v},
        text=text or (),
        kind=kind if kind in KIND_CHOICES else "all",
        since=since,
        until=until,
        limit=limit,
        cursor=cursor,
        scope_kubernetes_clusters=principal.cluster_scope(),
    )
    if after is not None:
        if cursor is not None:
            raise ValidationError("bad_cursor", "give cursor or after, not both")
        query = query.with_cursor(encode_cursor(*keyset_position(after), query))
    page = await _front_end(request).search(query)
    response.headers["X-Search-Backend"] = page.backend
    return page.to_json()
