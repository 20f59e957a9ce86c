"""Kubernetes routes: the audit webhook and the kubectl review timeline.

``POST /v1/kube/audit/{cluster}`` takes what kube-apiserver's webhook backend sends (an
``audit.k8s.io/v1`` or ``v1beta1`` ``EventList``), turns it into redacted ``kube.request``
events (:mod:`ingest.kube_audit`; redaction happens before anything else sees the events) and
answers 200 only after Kafka acknowledged every one of them: on 503 the API server retries,
and retries are harmless (event uids derive from the auditID). An event too large for a Kafka
record is stored cut down (:func:`ingest.kube_audit.fit_event`, marked ``sv_truncated``), so one
huge object never makes the API server drop the batch; 413 is only for a body over
:data:`MAX_BODY_BYTES`. Request bodies are never logged.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from starlette.concurrency import run_in_threadpool

from api.auth import require_token
from ingest.kafka import send_confirmed
from ingest.kube_audit import events_from_webhook, fit_event
from ingest.timeline import GROUP_BY, kube_timeline
from schemas.codec import encode_event
from sessionvault.errors import ValidationError
from sessionvault.timespec import SPAN_HELP, window
from storage.tokens import Principal, check_cluster_name

log = logging.getLogger(__name__)

router = APIRouter()

# kube-apiserver's default webhook batch is 400 events; request bodies can be large at
# RequestResponse level. Anything beyond this is refused before it is read.
MAX_BODY_BYTES = 64 * 1024 * 1024
ACK_TIMEOUT_S = 15.0


def event_records(
    events: list[dict[str, Any]], max_bytes: int, cluster: str
) -> list[tuple[bytes, bytes]]:
    """(uid, record) of each event, encoded once. An event too large for a record is cut down
    (:func:`ingest.kube_audit.fit_event`, marked ``sv_truncated``), never a reason to refuse
    the batch: the API server would retry it and finally drop every good event in it."""
    out = []
    for event in events:
        raw = encode_event(event)
        if len(raw) > max_bytes:
            cut = fit_event(event, max_bytes, raw=raw)
            log.warning(
                "audit webhook: event %s of cluster %s was %d bytes; stored without %s",
                event.get("uid"),
                cluster,
                len(raw),
                ", ".join(cut["sv_truncated"]["dropped"]),
            )
            raw = encode_event(cut)
        out.append((str(event["uid"]).encode(), raw))
    return out


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "audit batch too large")
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "audit batch too large")
        parts.append(part)
    return b"".join(parts)


@router.post("/v1/kube/audit/{cluster}")
async def audit_webhook(
    cluster: str,
    request: Request,
    principal: Annotated[Principal, Depends(require_token("webhook"))],
) -> dict[str, int]:
    """Receive one webhook delivery for ``cluster``; 200 once Kafka holds every event."""
    check_cluster_name(cluster)
    if not principal.allows_cluster(cluster):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "token is not valid for this cluster")
    body = await _read_body(request)
    events = await run_in_threadpool(
        events_from_webhook, body, tenant=principal.tenant, kubernetes_cluster=cluster
    )
    del body  # holds unredacted secrets; drop it as soon as it is no longer needed
    settings = request.app.state.settings
    producer = await run_in_threadpool(request.app.state.producer.get)
    records = await run_in_threadpool(event_records, events, settings.max_record_bytes, cluster)
    await run_in_threadpool(
        lambda: send_confirmed(
            producer,
            [(settings.topic_events, key, value) for key, value in records],
            timeout_s=ACK_TIMEOUT_S,
            what="audit webhook delivery",
        )
    )
    log.debug(
        "audit webhook: %d kube.request events for tenant %s cluster %s",
        len(events),
        principal.tenant,
        cluster,
    )
    return {"accepted": len(events)}


@router.get("/v1/kube/timeline")
async def timeline(
    request: Request,
    principal: Annotated[Principal, Depends(require_token("read"))],
    since: Annotated[str, Query(description=f"from (inclusive): {SPAN_HELP}")],
    until: Annotated[
        str | None, Query(description=f"to (exclusive; default now): {SPAN_HELP}")
    ] = None,
    user: str | None = None,
    cluster: str | None = None,
    group_by: Annotated[str | None, Query(pattern="^(" + "|".join(GROUP_BY) + ")$")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> dict[str, Any]:
    """kube.request events and exec sessions of the token's tenant (and clusters)."""
    start, end = window(since, until)
    if start is None:
        raise ValidationError("bad_query", "since is required")
    result = await kube_timeline(
        request.app.state.pool,
        principal.tenant,
        since=start,
        until=end,
        user=user,
        cluster=cluster,
        allowed_clusters=principal.cluster_scope(),
        group_by=group_by,
        limit=limit,
    )
    return result.to_json(grouped=bool(group_by))
