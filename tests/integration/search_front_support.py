"""A small two-tenant corpus for the search front-end tests, written through the real pipeline
(SDK -> Kafka -> persist worker), and OpenSearch filled by the real reindex."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

from ingest.sdk import AuditEmitter, SessionRecorder
from schemas.models import SessionInfo
from sessionvault.settings import Settings
from storage import pg
from storage.search.opensearch import OpenSearchStore
from storage.search.reindex import reindex
from tests.integration.import_support import drain

STARTED = "2026-11-20T09:00:00.000Z"


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Corpus:
    a: Settings
    b: Settings
    sid_a: str  # tenant A: typed "rm -rf /srv/cache" at 2.5 s
    sid_b: str  # tenant B: the same words
    sid_csv: str  # tenant A: output lines made to break spreadsheets


def _session(
    settings: Settings, lines: list[tuple[float, bytes]], started: str = STARTED, **info: Any
) -> str:
    clock = Clock()
    rec = SessionRecorder(settings, SessionInfo(started, 80, 24, **info), clock=clock)
    for t, data in lines:
        clock.now = 500.0 + t
        rec.output(data)
    clock.now += 1
    assert rec.close(flush_timeout_s=30)
    return rec.sid


def _events(settings: Settings, events: list[dict[str, Any]]) -> None:
    em = AuditEmitter(settings)
    for e in events:
        em.emit(e)
    assert em.close(timeout_s=30)


def build(settings: Settings) -> Corpus:
    """Tenant A = ``settings.tenant``, tenant B = ``<A>-b``; same words in both."""
    a = settings
    b = dataclasses.replace(settings, tenant=f"{settings.tenant}-b")
    prompt = b"\x1b[01;32mroot@web-1\x1b[00m:~# "
    typed = [
        (0.5, prompt),
        (1.0, b"rm -rf /srv/cahe"),
        (1.5, b"\x08 \x08\x08 \x08"),  # two backspaces: "cahe" -> "ca"
        (2.5, b"che\r\n"),  # the corrected command is complete at 2.5 s
        (3.0, b"100%_done *? \"AND\" 'x'; \\\r\n"),
        (4.0, prompt),
    ]
    sid_a = _session(a, typed, user="alice", login="root", server_id="web-1", cluster_name="pc")
    sid_b = _session(b, typed, user="mallory", login="root", server_id="web-9", cluster_name="pc")
    sid_csv = _session(
        a,
        [
            (0.1, b'=HYPERLINK("http://x","click"),"quoted", comma\r\n'),
            (0.2, b"+1+1\r\n-2\r\n@SUM(A1)\r\n"),
        ],
        user="alice",
        login="root",
        server_id="web-2",
    )
    _events(
        a,
        [
            {
                "event": "kube.request",
                "code": "T3009I",
                "uid": f"kr-{i}",
                "time": f"2026-11-20T10:00:0{i}.000Z",
                "user": "alice",
                "kubernetes_cluster": cluster,
                "verb": "delete",
                "request_path": f"/api/v1/namespaces/prod/pods/web-{i}",
                "resource_kind": "pods",
                "resource_namespace": "prod",
                "resource_name": f"web-{i}",
            }
            for i, cluster in enumerate(["prod", "dev", "prod", "dev", "prod"])
        ]
        + [
            {
                "event": "exec",
                "code": "T3002I",
                "uid": "exec-1",
                "time": "2026-11-20T09:00:05.000Z",
                "sid": sid_a,
                "user": "alice",
                "login": "root",
                "server_id": "web-1",
                "command": "rm -rf /srv/cache \x1b[31m",
            }
        ],
    )
    _events(
        b,
        [
            {
                "event": "kube.request",
                "code": "T3009I",
                "uid": "kr-b",
                "time": "2026-11-20T10:00:00.000Z",
                "user": "mallory",
                "kubernetes_cluster": "prod",
                "verb": "delete",
                "request_path": "/api/v1/namespaces/prod/pods/web-0",
            },
            {
                "event": "exec",
                "code": "T3002I",
                "uid": "exec-b",
                "time": "2026-11-20T09:00:05.000Z",
                "sid": sid_b,
                "user": "mallory",
                "command": "rm -rf /srv/cache",
            },
        ],
    )
    drain(settings)
    return Corpus(a, b, sid_a, sid_b, sid_csv)


async def _reindex(dsn: str, url: str, prefix: str) -> None:
    store = OpenSearchStore(url, prefix=prefix)
    conn = await pg.connect(dsn)
    try:
        # A full rebuild (not per tenant): only it writes the completeness marker that makes
        # the search service trust OpenSearch.
        await reindex(conn, store)
    finally:
        await conn.close()
        store.close()


def index_into_opensearch(corpus: Corpus, prefix: str) -> None:
    """Copy the corpus database (both tenants) into OpenSearch under ``prefix`` (the real
    reindex)."""
    s = corpus.a
    asyncio.run(_reindex(s.postgres_dsn.get(), s.opensearch_url, prefix))
