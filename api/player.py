"""What the web console's player and session list read: ``/v1/whoami``, ``/v1/sessions``
(filters, keyset paging), ``/v1/sessions/{sid}`` (one session; opening it is audited),
``/v1/sessions/{sid}/seek`` (the screen at a moment: a keyframe and the frames after it) and
``/v1/sessions/{sid}/frames`` (the next window of frames; with ``wait_ms``, a long poll that
follows a live session).

Every route reads through :meth:`storage.tokens.Principal.may_see` (a session) or
:meth:`~storage.tokens.Principal.cluster_scope` (a list): a session the token may not see is
"not found". Frame data is bytes: it travels base64-encoded, never decoded as text here.
"""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from api.auth import require_token
from api.sessions import audit_view
from replay.keyframe import Keyframe, Seeker
from schemas.models import Frame
from sessionvault.errors import NotFoundError, ValidationError
from sessionvault.timespec import parse_when
from storage.reader import (
    SESSION_STATUSES,
    SessionFilter,
    SessionRecord,
    get_session,
    iter_chunk_frames,
    keyframe_at,
    list_sessions,
    read_window,
    session_markers,
)
from storage.tokens import Principal

router = APIRouter(tags=["player"])

Reader = Annotated[Principal, Depends(require_token("read"))]
#: A reader of one session: an API token, or that session's share link.
SessionReader = Annotated[Principal, Depends(require_token("read", "share"))]

#: Most bytes of frames one window answer carries (whole chunks: one may pass it).
WINDOW_MAX_BYTES = 1024 * 1024
#: How often a long poll looks for new chunks of a live session.
LIVE_POLL_S = 0.1
_STATUS_NAMES = {stored: shown for shown, stored in SESSION_STATUSES.items()}


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def session_json(s: SessionRecord) -> dict[str, Any]:
    """A session as the console shows it (no hashes, nothing but who, where, when, how big)."""
    return {
        "sid": s.sid,
        "kind": s.kind,
        "user": s.user_name,
        "login": s.login,
        "server_id": s.server_id,
        "cluster_name": s.cluster_name,
        "kubernetes_cluster": s.kubernetes_cluster,
        "command": s.command,
        "started_at": _iso(s.started_at),
        "ended_at": _iso(s.ended_at),
        "duration_ms": s.duration_ms,
        "bytes": s.bytes,
        "cols": s.cols,
        "rows": s.rows,
        "status": _STATUS_NAMES.get(s.status, s.status),
        "integrity": s.integrity,
        "exit_code": s.exit_code,
    }


def frames_json(frames: list[Frame]) -> list[list[Any]]:
    """``[offset_ms, stream, base64 data]`` per frame."""
    return [[f.offset_ms, f.stream.value, base64.b64encode(f.data).decode()] for f in frames]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _cursor(s: SessionRecord) -> str:
    # Integer microseconds (a float timestamp can be off by one at today's magnitudes).
    raw = f"{(s.started_at - _EPOCH) // timedelta(microseconds=1)}:{s.sid}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    try:
        us, _, sid = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        return _EPOCH + timedelta(microseconds=int(us)), sid
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError("bad_cursor", "malformed cursor") from exc


async def visible_session(request: Request, principal: Principal, sid: str) -> SessionRecord:
    """The session, if ``principal`` may see it (else :class:`NotFoundError`)."""
    session = await get_session(request.app.state.pool, principal.tenant, sid)
    if not principal.may_see(session.tenant, session.kubernetes_cluster, session.sid):
        raise NotFoundError(f"session {sid!r} not found")
    return session


@router.get("/v1/whoami")
async def whoami(request: Request, principal: Reader) -> dict[str, Any]:
    """The token's tenant, clusters and scopes (the console shows who it acts as); on a root,
    also the user and roles it reads leaf clusters as."""
    return {
        "user": principal.user,
        "roles": sorted(principal.roles),
        # This installation is a federation root: /v1/federation/* answer (docs/federation.md).
        "federation_root": getattr(request.app.state, "hub", None) is not None,
        "tenant": principal.tenant,
        "clusters": sorted(principal.clusters),
        "scopes": sorted(principal.scopes),
        "expires_at": _iso(principal.expires_at),
    }


@router.get("/v1/sessions")
async def sessions(
    request: Request,
    principal: Reader,
    user: Annotated[list[str] | None, Query()] = None,
    login: Annotated[list[str] | None, Query()] = None,
    server_id: Annotated[list[str] | None, Query()] = None,
    cluster_name: Annotated[list[str] | None, Query()] = None,
    kubernetes_cluster: Annotated[list[str] | None, Query()] = None,
    kind: Annotated[list[str] | None, Query(description="ssh or kubectl")] = None,
    status: Annotated[list[str] | None, Query(description="active, ended or abandoned")] = None,
    since: Annotated[str | None, Query(description="RFC 3339 or a span back (24h)")] = None,
    until: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query()] = None,
    after: Annotated[
        str | None,
        Query(description="instead of cursor: STARTED_US:SID of the last session you have"),
    ] = None,
) -> dict[str, Any]:
    """The token's sessions, newest first, one page (``next_cursor``: the next one)."""
    if after is not None:
        if cursor is not None:
            raise ValidationError("bad_cursor", "give cursor or after, not both")
        cursor = base64.urlsafe_b64encode(after.encode()).decode()
    now = datetime.now(UTC)
    where = SessionFilter(
        user=tuple(user or ()),
        login=tuple(login or ()),
        server_id=tuple(server_id or ()),
        cluster_name=tuple(cluster_name or ()),
        kubernetes_cluster=tuple(kubernetes_cluster or ()),
        kind=tuple("kube" if k == "kubectl" else k for k in kind or ()),
        status=tuple(status or ()),
        since=parse_when("since", since, now=now),
        until=parse_when("until", until, now=now),
        clusters=principal.cluster_scope(),
    )
    rows = await list_sessions(
        request.app.state.pool, principal.tenant, limit=limit, after=_after(cursor), where=where
    )
    return {
        "sessions": [session_json(s) for s in rows],
        "next_cursor": _cursor(rows[-1]) if len(rows) == limit else None,
    }


@router.get("/v1/sessions/{sid}")
async def session_detail(sid: str, request: Request, principal: SessionReader) -> dict[str, Any]:
    """One session (opening it in the player is a view, recorded as an audit event)."""
    session = await visible_session(request, principal, sid)
    await audit_view(request, principal, session, "player")
    return session_json(session)


@router.get("/v1/sessions/{sid}/seek")
async def seek_session(
    sid: str,
    request: Request,
    principal: SessionReader,
    at_ms: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """The screen at ``at_ms``: reset to ``cols`` x ``rows``, write ``frames``, then read on
    from ``next`` (see :class:`replay.keyframe.Seek`)."""
    session = await visible_session(request, principal, sid)
    pool = request.app.state.pool
    stored = await keyframe_at(pool, session.tenant, sid, at_ms)
    kf = None if stored is None else Keyframe.from_bytes(*stored)
    seeker = Seeker(kf, at_ms, cols=session.cols, rows=session.rows)
    chunks = iter_chunk_frames(
        pool, session.tenant, sid, after_seq=-1 if kf is None else kf.after_seq, until_ms=at_ms
    )
    async for c in chunks:
        # Off the event loop: past max_bytes the screen is rendered here (CPU-bound).
        if await run_in_threadpool(seeker.feed, c.seq, c.frames):
            break
    result = seeker.result()
    return {
        "at_ms": result.at_ms,
        "cols": result.cols,
        "rows": result.rows,
        "keyframe_ms": None if kf is None else kf.at_ms,
        "frames": frames_json(result.frames),
        "next": {"seq": result.next_seq, "skip": result.skip},
    }


@router.get("/v1/sessions/{sid}/frames")
async def frames_window(
    sid: str,
    request: Request,
    principal: SessionReader,
    seq: Annotated[int, Query(ge=0, description="first chunk to read")] = 0,
    skip: Annotated[int, Query(ge=0, description="frames of that chunk already shown")] = 0,
    max_bytes: Annotated[int, Query(ge=1, le=WINDOW_MAX_BYTES)] = 256 * 1024,
    wait_ms: Annotated[
        int, Query(ge=0, le=30_000, description="live: wait this long for new frames")
    ] = 0,
) -> dict[str, Any]:
    """Every frame from chunk ``seq`` (less its first ``skip``) on, a window of whole chunks
    at a time. ``end`` is true when no later chunk is stored yet; ``status`` says whether more
    may come (``active``)."""
    session = await visible_session(request, principal, sid)
    pool = request.app.state.pool
    deadline = time.monotonic() + wait_ms / 1000
    while True:
        window = await read_window(
            pool, session.tenant, sid, after_seq=seq - 1, max_bytes=max_bytes
        )
        if window or time.monotonic() >= deadline:
            break
        await asyncio.sleep(LIVE_POLL_S)
        if (await get_session(pool, session.tenant, sid)).status != "active":
            window = await read_window(
                pool, session.tenant, sid, after_seq=seq - 1, max_bytes=max_bytes
            )
            break
    frames: list[Frame] = []
    for c in window:
        frames.extend(c.frames[skip:] if c.seq == seq else c.frames)
    nxt = {"seq": window[-1].seq + 1, "skip": 0} if window else {"seq": seq, "skip": skip}
    now = await get_session(pool, session.tenant, sid) if window or wait_ms else session
    return {
        "frames": frames_json(frames),
        "next": nxt,
        "end": sum(len(f.data) for c in window for f in c.frames) < max_bytes,
        "status": _STATUS_NAMES.get(now.status, now.status),
        "duration_ms": now.duration_ms,
    }


#: Most markers of each source one answer carries (a timeline cannot show more anyway).
MARKERS_MAX = 5000


def event_label(event: str, body: dict[str, Any]) -> tuple[str, str]:
    """(kind, label) of an audit event on the timeline: alerts, Kubernetes requests, others."""
    if event.startswith("alert."):
        return "alert", f"{body.get('level', '')} {body.get('title', event)}".strip()
    if event == "kube.request":
        resource = "/".join(
            str(body[k]) for k in ("resource_kind", "kubernetes_subresource") if body.get(k)
        )
        parts = (body.get("verb"), resource, body.get("resource_name"), body.get("response_code"))
        return "kube", " ".join(str(x) for x in parts if x) or event
    return "event", event


@router.get("/v1/sessions/{sid}/markers")
async def markers(sid: str, request: Request, principal: SessionReader) -> dict[str, Any]:
    """The player's timeline marks: commands typed (the line as it stood when Enter was
    pressed), resizes, alerts, Kubernetes requests and other audit events of the session, in
    time order; ``truncated`` when a source had more than ``MARKERS_MAX``."""
    session = await visible_session(request, principal, sid)
    marks, events = await session_markers(
        request.app.state.pool, session.tenant, sid, limit=MARKERS_MAX
    )
    timed = [(t, kind, label) for t, kind, label in marks]
    timed += [(e.at_ms, *event_label(e.event, e.body)) for e in events]
    timed.sort(key=lambda m: m[0])
    out = [{"t": t, "kind": kind, "label": label} for t, kind, label in timed]
    return {
        "markers": out,
        "truncated": len(marks) >= MARKERS_MAX or len(events) >= MARKERS_MAX,
    }
