"""Session replay over HTTP: ``GET /v1/sessions/{sid}/export?format=...`` (streamed).

Tenant-scoped like every read: a session of another tenant is "not found". A kube session of a
cluster outside a cluster-bound token's clusters is "not found" too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from api.auth import require_token
from replay.export import FORMATS, encoder
from sessionvault.errors import NotFoundError
from storage.reader import get_session, iter_frames
from storage.tokens import Principal

router = APIRouter()

_MEDIA = {
    "raw": "application/octet-stream",
    "text": "text/plain; charset=utf-8",
    "json": "application/x-ndjson",
    "asciicast-v2": "application/x-asciicast",
    "asciicast-v3": "application/x-asciicast",
}


@router.get("/v1/sessions/{sid}/export")
async def export_session(
    sid: str,
    request: Request,
    principal: Annotated[Principal, Depends(require_token("read"))],
    fmt: Annotated[str, Query(alias="format", pattern="^(" + "|".join(FORMATS) + ")$")] = "json",
) -> StreamingResponse:
    """The session's frames in ``format`` (see :mod:`replay.export`)."""
    pool = request.app.state.pool
    session = await get_session(pool, principal.tenant, sid)
    if session.kind == "kube" and not principal.allows_cluster(session.kubernetes_cluster):
        raise NotFoundError(f"session {sid!r} not found")
    enc = encoder(fmt, session)

    async def body() -> AsyncIterator[bytes]:
        yield enc.header()
        async for frame in iter_frames(pool, principal.tenant, sid):
            data = enc.frame(frame)
            if data:
                yield data
        yield enc.end()

    return StreamingResponse(body(), media_type=_MEDIA.get(fmt, "application/octet-stream"))
