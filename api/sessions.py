"""Session replay over HTTP: ``GET /v1/sessions/{sid}/export?format=...`` (streamed).

Scoped by :meth:`storage.tokens.Principal.may_see` like every read: a session the token may
not see (another tenant's; for a cluster-bound token, any session outside its Kubernetes
clusters, SSH sessions included) is "not found", exactly as search does not find it.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from api.auth import require_token
from ingest.view_audit import view_event
from replay.export import FORMAT_CHOICES, encoded_pieces, encoder, format_name, read_from_ms
from sessionvault.errors import ConfigError, NotFoundError, SessionVaultError
from storage.reader import (
    SessionRecord,
    check_readable,
    get_session,
    iter_frame_lists,
    iter_raw_output,
)
from storage.tokens import Principal, token_description

router = APIRouter()

#: The largest piece an export response writes at once.
EXPORT_PIECE_BYTES = 256 * 1024

_MEDIA = {
    "raw": "application/octet-stream",
    "text": "text/plain; charset=utf-8",
    "ndjson": "application/x-ndjson",
    "asciicast-v2": "application/x-asciicast",
    "asciicast-v3": "application/x-asciicast",
}


async def audit_view(
    request: Request, principal: Principal, session: SessionRecord, fmt: str, start_at_ms: int = 0
) -> None:
    """Record that ``principal`` is reading ``session`` (never fails the request)."""
    try:
        description = await token_description(
            request.app.state.pool, principal.tenant, principal.token_id
        )
    except SessionVaultError:
        description = ""  # the audit event still names the token id
    fields = view_event(
        tenant=principal.tenant,
        sid=session.sid,
        viewer=f"token:{principal.token_id}",
        access_via="share" if principal.only_sid is not None else "api",
        fmt=fmt,
        session_type=session.kind,
        session_user=session.user_name,
        start_at_ms=start_at_ms,
        token_id=principal.token_id,
        token_description=description,
        remote_addr=request.client.host if request.client else None,
    )
    # The first event creates the emitter (spool directory, sender thread): off the loop.
    await run_in_threadpool(request.app.state.view_auditor.record, fields)


@router.get("/v1/sessions/{sid}/export")
async def export_session(
    sid: str,
    request: Request,
    principal: Annotated[Principal, Depends(require_token("read", "share"))],
    fmt: Annotated[
        str,
        Query(
            alias="format",
            pattern="^(" + "|".join(FORMAT_CHOICES) + ")$",
            description="ndjson (newline-delimited JSON frames; `json` is an alias), raw, text,"
            " asciicast-v2 or asciicast-v3.",
        ),
    ] = "ndjson",
    start_ms: Annotated[
        int,
        Query(
            ge=0,
            description="Start at this session offset (ms): asciicast formats seek (the screen"
            " as it was, times rebased to it, like `play --start-at`); raw, text and json cut.",
        ),
    ] = 0,
) -> StreamingResponse:
    """The session's frames in ``format`` (see :mod:`replay.export`)."""
    fmt = format_name(fmt)
    pool = request.app.state.pool
    session = await get_session(pool, principal.tenant, sid)
    if not principal.may_see(session.tenant, session.kubernetes_cluster, session.sid):
        raise NotFoundError(f"session {sid!r} not found")
    await check_readable(pool, principal.tenant, sid)  # 410 before a byte is streamed
    enc = encoder(fmt, session, start_ms)
    await audit_view(request, principal, session, fmt, start_ms)

    async def body() -> AsyncIterator[bytes]:
        # A piece per stored chunk (encoded_pieces), gathered up to EXPORT_PIECE_BYTES: written
        # one frame at a time, the server's per-write cost bounded the rate (10 MB/s here).
        buf = bytearray(enc.header())
        pieces: AsyncIterator[bytes]
        if fmt == "raw":  # straight from the stored chunks (byte for byte the same)
            raw = iter_raw_output(pool, principal.tenant, sid, start_ms=start_ms)
            pieces = (p.data async for p in raw)
        else:
            stored = iter_frame_lists(
                pool, principal.tenant, sid, start_ms=read_from_ms(fmt, start_ms)
            )
            pieces = encoded_pieces(stored, enc, fmt, start_ms)
        async for piece in pieces:
            buf += piece
            if len(buf) >= EXPORT_PIECE_BYTES:
                yield bytes(buf)
                buf.clear()
        buf += enc.end()
        yield bytes(buf)

    return StreamingResponse(body(), media_type=_MEDIA.get(fmt, "application/octet-stream"))


@router.get("/v1/sessions/{sid}/bundle")
async def evidence_bundle(
    sid: str,
    request: Request,
    principal: Annotated[Principal, Depends(require_token("read", "share"))],
) -> StreamingResponse:
    """The session's signed evidence bundle (a zip, docs/evidence.md), checked offline by
    ``sessionvault verify-bundle`` or the standalone verifier. Signs the session's manifest
    and checkpoints its tenant first when they are not there yet; an active session has no
    manifest (400)."""
    from ingest.evidence import EvidenceWorker
    from replay.evidence import build_bundle
    from storage.keyring import load_keys

    pool = request.app.state.pool
    session = await get_session(pool, principal.tenant, sid)
    if not principal.may_see(session.tenant, session.kubernetes_cluster, session.sid):
        raise NotFoundError(f"session {sid!r} not found")
    await check_readable(pool, principal.tenant, sid)
    settings = request.app.state.settings
    try:
        keys = load_keys(settings)
    except ConfigError as exc:
        raise NotFoundError("no evidence signing keys are configured") from exc
    worker = EvidenceWorker(settings, keys=keys, emit=False)  # the evidence worker sends them
    try:
        await worker.seal(principal.tenant, sid)
    finally:
        await worker.close()
    buf = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 (closed below)
    try:
        await build_bundle(pool, keys, principal.tenant, sid, buf)  # type: ignore[arg-type]
    except BaseException:
        buf.close()
        raise
    await audit_view(request, principal, session, "bundle")
    buf.seek(0)
    return StreamingResponse(
        iter(lambda: buf.read(1 << 20), b""),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{sid}.evidence.zip"'},
        background=BackgroundTask(buf.close),
    )
