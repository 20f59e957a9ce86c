"""A root's federated routes (docs/federation.md): the leaves' search, session lists, kube
timelines and every read of one session, asked through their tunnels and merged.

Nothing a leaf answers is stored here: answers stream through (bounded by the tunnel's credit)
or are merged in memory for one page. What is stored is the root's own audit line per question
(:func:`storage.federation.record_query`: who asked which leaves what).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api.auth import require_token
from api.federation import merge
from api.federation.agent import ALLOWED
from api.federation.hub import Hub, LeafDown
from schemas.links import via_leaf
from sessionvault.errors import NotFoundError, ValidationError
from storage import federation as fed
from storage.tokens import Principal

router = APIRouter(tags=["federation"])
Reader = Annotated[Principal, Depends(require_token("read"))]
LeafParam = Annotated[list[str] | None, Query(description="leaf name (repeatable; default all)")]

#: Largest JSON answer a root accepts from a leaf for one page (bounded memory per question).
MAX_PAGE_BYTES = 64 * 1024 * 1024
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _hub(request: Request) -> Hub:
    hub: Hub | None = getattr(request.app.state, "hub", None)
    if hub is None:
        raise NotFoundError("this installation is not a federation root (federation_listen)")
    return hub


def identity(principal: Principal, root: str) -> dict[str, Any]:
    """Who the root says is asking (the leaf maps it; it trusts the root's authentication)."""
    return {"root": root, "user": principal.display_user, "roles": sorted(principal.roles)}


async def _leaves(request: Request, wanted: list[str] | None) -> list[str]:
    known = [row.name for row in await fed.leaf_rows(request.app.state.pool)]
    if not wanted or wanted == ["*"]:
        return known
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise NotFoundError(f"no leaf named {', '.join(unknown)}")
    return sorted(set(wanted))


class JoinRequest(BaseModel):
    token: str
    csr: str


@router.post("/v1/federation/join")
async def join(request: Request, body: JoinRequest) -> dict[str, Any]:
    """A leaf joins with a join token (``sessionvault federation token`` on the root) and a
    certificate request; the answer is its certificate and the CA. No bearer token: the join
    token is the credential (single use, short-lived)."""
    secret = body.token.partition(".")[0]
    return await _hub(request).sign_join(secret, body.csr.encode())


@router.get("/v1/federation/leaves")
async def leaves(request: Request, principal: Reader) -> dict[str, Any]:
    """Every leaf of this root and whether its tunnel is up now."""
    hub = _hub(request)
    out = []
    for row in await fed.leaf_rows(request.app.state.pool):
        link = hub.links.get(row.name)
        out.append(
            {
                "name": row.name,
                "connected": link is not None and not link.closed,
                "connected_at": link.info.connected_at.isoformat() if link else None,
                "remote": link.info.remote if link else None,
                "joined_at": row.joined_at.isoformat(),
                "last_seen_at": row.last_seen_at.isoformat() if row.last_seen_at else None,
                "cert_not_after": row.cert_not_after.isoformat() if row.cert_not_after else None,
            }
        )
    return {
        "root": request.app.state.settings.federation_name,
        "tunnel_port": hub.port,
        "leaves": out,
    }


async def _asked(
    request: Request,
    principal: Principal,
    route: str,
    leaves: list[str],
    params: list[tuple[str, str]],
) -> None:
    """The root's own audit line for one question (what was asked, of whom; no answer)."""
    await fed.record_query(
        request.app.state.pool,
        token_id=principal.token_id,
        user=principal.display_user,
        roles=principal.roles,
        route=route,
        leaves=leaves,
        params=[[k, v] for k, v in params],
    )


async def _ask_json(
    hub: Hub, leaf: str, path: str, query: list[tuple[str, str]], who: dict[str, Any]
) -> tuple[str, Any, str]:
    """(state, JSON body or None, message) of one leaf's answer to one page."""
    try:
        stream = await hub.link(leaf).request(path, query, who, timeout_s=hub.timeout_s)
        body = await stream.read(MAX_PAGE_BYTES)
    except LeafDown as exc:
        return exc.state, None, str(exc)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "error", None, f"leaf {leaf!r} answered {stream.status} without JSON"
    if stream.status == 200:
        return "ok", data, ""
    detail = str(data.get("detail", "")) if isinstance(data, dict) else ""
    if stream.status == 403:
        return "no_access", None, detail
    if stream.status == 400:
        raise ValidationError("bad_query", f"leaf {leaf!r}: {detail}")
    return "error", None, f"leaf {leaf!r} answered {stream.status}: {detail}"


async def _federated_page(
    request: Request,
    principal: Principal,
    *,
    route: str,
    leaf_path: str,
    items_key: str,
    key: Callable[[dict[str, Any]], merge.Key],
    after_param: Callable[[list[Any]], str],
    limit: int,
    cursor: str | None,
    wanted: list[str] | None,
) -> dict[str, Any]:
    hub = _hub(request)
    root = request.app.state.settings.federation_name
    names = await _leaves(request, wanted)
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("cursor", "leaf")]
    fp = merge.fingerprint(route, params, names, principal.token_id)
    positions: dict[str, merge.Position] = (
        merge.decode_cursor(cursor, fp) if cursor else {name: None for name in names}
    )
    who = identity(principal, root)
    await _asked(request, principal, route, names, params)
    base = [(k, v) for k, v in params if k != "limit"] + [("limit", str(limit))]

    async def one(name: str) -> merge.LeafAnswer:
        position = positions.get(name)
        if position == merge.END:
            return merge.LeafAnswer(name, "ok")
        query = base + ([("after", after_param(position))] if isinstance(position, list) else [])
        state, data, message = await _ask_json(hub, name, leaf_path, query, who)
        if state != "ok":
            return merge.LeafAnswer(name, state, message=message)
        items = [via_leaf(name, item) for item in data[items_key]]
        return merge.LeafAnswer(name, "ok", items, more=data.get("next_cursor") is not None)

    answers = await asyncio.gather(*(one(name) for name in names))
    merged = merge.merge_page(answers, positions, key=key, limit=limit)
    return {
        items_key: merged.items,
        "next_cursor": merge.next_cursor(merged, fp),
        "partial": merged.partial,
        "leaves": merged.leaves,
    }


def _search_key(hit: dict[str, Any]) -> merge.Key:
    return (int(hit["time_us"]), str(hit["id"]))


def _micros(iso: str) -> int:
    when = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


def _session_key(session: dict[str, Any]) -> merge.Key:
    return (_micros(str(session["started_at"])), str(session["sid"]))


def _list_route(
    route: str, items_key: str, key: Callable[[dict[str, Any]], merge.Key], doc: str
) -> None:
    """``GET /v1/federation/<route>``: the leaves' ``GET /v1/<route>``, merged page by page."""

    async def endpoint(
        request: Request,
        principal: Reader,
        leaf: LeafParam = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        cursor: Annotated[str | None, Query()] = None,
    ) -> dict[str, Any]:
        return await _federated_page(
            request,
            principal,
            route=route,
            leaf_path=f"/v1/{route}",
            items_key=items_key,
            key=key,
            after_param=lambda p: f"{p[0]}:{p[1]}",
            limit=limit,
            cursor=cursor,
            wanted=leaf,
        )

    endpoint.__doc__ = doc
    endpoint.__name__ = f"federated_{route}"
    router.add_api_route(f"/v1/federation/{route}", endpoint, methods=["GET"])


_list_route(
    "search",
    "hits",
    _search_key,
    """``GET /v1/search`` across leaves: every other parameter as there, passed to each leaf;
    hits in the same order, each naming its ``leaf``; ``leaves`` lists each leaf's status and
    ``partial`` says when one could not answer.""",
)
_list_route(
    "sessions",
    "sessions",
    _session_key,
    """``GET /v1/sessions`` across leaves (same filters), newest first, each naming its leaf.""",
)


@router.get("/v1/federation/kube/timeline")
async def federated_timeline(
    request: Request,
    principal: Reader,
    leaf: LeafParam = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> dict[str, Any]:
    """``GET /v1/kube/timeline`` across leaves (same parameters but ``group_by``), in time
    order; ``truncated`` when any leaf's was or the merge cut it at ``limit``."""
    hub = _hub(request)
    if "group_by" in request.query_params:
        raise ValidationError("bad_query", "group_by is not available across leaves")
    names = await _leaves(request, leaf)
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "leaf"]
    who = identity(principal, request.app.state.settings.federation_name)
    await _asked(request, principal, "kube/timeline", names, params)
    results = await asyncio.gather(
        *(_ask_json(hub, name, "/v1/kube/timeline", params, who) for name in names)
    )
    entries: list[tuple[int, str, dict[str, Any]]] = []
    statuses = []
    truncated = False
    for name, (state, data, message) in zip(names, results, strict=True):
        status: dict[str, Any] = {"name": name, "status": state}
        if message:
            status["message"] = message
        if state == "ok":
            truncated = truncated or bool(data.get("truncated"))
            for entry in data["entries"]:
                replay = entry.get("replay")
                if isinstance(replay, dict):
                    links = via_leaf(
                        name, {"replay": replay.get("command"), "replay_api": replay.get("url")}
                    )
                    entry = {
                        **entry,
                        "replay": {"command": links["replay"], "url": links["replay_api"]},
                    }
                entries.append((_micros(entry["time"]), name, {**entry, "leaf": name}))
            status["items"] = len(data["entries"])
        statuses.append(status)
    entries.sort(key=lambda t: (t[0], t[1]))
    if len(entries) > limit:
        truncated = True
    return {
        "entries": [e for _, _, e in entries[:limit]],
        "truncated": truncated,
        "partial": any(s["status"] not in merge.ANSWERED for s in statuses),
        "leaves": statuses,
    }


_PASSED_HEADERS = ("content-type", "content-disposition", "x-search-backend")


@router.get("/v1/federation/leaves/{leaf}/{path:path}")
async def through_leaf(leaf: str, path: str, request: Request, principal: Reader) -> Any:
    """One leaf's read route, as that leaf answers it for this user: a session's detail,
    export (streamed: bounded memory end to end), evidence bundle, seek, frames, markers."""
    hub = _hub(request)
    leaf_path = "/" + path
    if not ALLOWED.match(leaf_path):
        raise NotFoundError(f"{leaf_path} is not readable through a leaf")
    await _leaves(request, [leaf])
    params = list(request.query_params.multi_items())
    await _asked(request, principal, leaf_path, [leaf], params)
    who = identity(principal, request.app.state.settings.federation_name)
    try:
        stream = await hub.link(leaf).request(leaf_path, params, who, timeout_s=hub.timeout_s)
    except LeafDown:
        raise  # a TransportError: 503 naming the leaf
    headers = {k: v for k, v in stream.headers.items() if k in _PASSED_HEADERS}
    headers["X-Leaf"] = quote(leaf, safe="")
    body = stream.body()
    # The first piece before the status line goes out: a leaf that fails at once is a 503.
    try:
        first = await anext(body, b"")
    except LeafDown:
        await stream.close()
        raise

    async def rest() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for piece in body:
            yield piece

    return StreamingResponse(
        rest(),
        status_code=stream.status,
        headers=headers,
        media_type=stream.headers.get("content-type"),
    )
