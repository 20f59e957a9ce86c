"""Share links: ``POST /v1/shares`` makes a time-limited, read-only link to one session (or one
moment of it) that needs no account; ``GET /v1/shares/self`` tells a share link's holder what it
opens. The link is ``/ui/#/share/<token>``: the token sits in the URL's fragment, which browsers
never send to a server, so it stays out of access logs and referrers.

Every use is an audit event: opening the session (``GET /v1/sessions/{sid}``) and exporting it
record ``session.recording.access`` with ``access_via = share`` and the link's id as the viewer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from api.auth import require_token
from api.player import visible_session
from sessionvault.errors import ValidationError
from storage.tokens import SHARE_SCOPE, Principal, create_share

router = APIRouter(tags=["share"])


class ShareRequest(BaseModel):
    sid: str
    at_ms: int = Field(0, ge=0, description="the moment the link opens at (ms)")
    ttl_s: int | None = Field(None, ge=60, description="how long the link works (default: a day)")


@router.post("/v1/shares")
async def make_share(
    body: ShareRequest,
    request: Request,
    principal: Annotated[Principal, Depends(require_token("read"))],
) -> dict[str, Any]:
    """A share link to a session the token may see, valid for ``ttl_s`` (at most the
    ``share_max_ttl_s`` setting)."""
    settings = request.app.state.settings
    ttl = body.ttl_s if body.ttl_s is not None else settings.share_default_ttl_s
    if ttl > settings.share_max_ttl_s:
        raise ValidationError(
            "bad_query", f"ttl_s: at most {settings.share_max_ttl_s} s (share_max_ttl_s)"
        )
    session = await visible_session(request, principal, body.sid)
    expires = datetime.now(UTC) + timedelta(seconds=ttl)
    token, link_id = await create_share(
        request.app.state.pool, principal, session.sid, expires_at=expires, at_ms=body.at_ms
    )
    return {
        "id": link_id,
        "sid": session.sid,
        "at_ms": body.at_ms,
        "url": f"/ui/#/share/{token}",
        "expires_at": expires.isoformat().replace("+00:00", "Z"),
    }


@router.get("/v1/shares/self")
async def share_self(
    principal: Annotated[Principal, Depends(require_token(SHARE_SCOPE))],
) -> dict[str, Any]:
    """What this share link opens (its session and moment) and until when."""
    assert principal.only_sid is not None  # the share scope is only ever a share link's
    expires = principal.expires_at
    return {
        "sid": principal.only_sid,
        "at_ms": principal.share_at_ms,
        "expires_at": None if expires is None else expires.isoformat(),
    }
