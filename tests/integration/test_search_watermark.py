"""Search never answers from an incomplete OpenSearch without saying so: with the index worker
stopped, lagging, or OpenSearch emptied behind its back, every answer (walked page by page)
equals PostgreSQL's, and says which backend answered and why.

Real broker, PostgreSQL and OpenSearch-compatible server; the workers run in this process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

from schemas import Frame, Stream
from sessionvault.settings import Settings
from storage import pg
from storage.search import watermark
from storage.search.model import Query
from storage.search.opensearch import OpenSearchBackend, OpenSearchStore
from storage.search.pg import PgSearchBackend
from storage.search.service import SearchService
from tests.integration.persist_helpers import drained
from tests.integration.search_corpus import session_chunks
from tests.integration.test_index_worker import (
    _event,
    produce_events,
    produce_session,
    topics,
    wait_for,
    workers,
)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def queries(tenant: str) -> list[Query]:
    """Queries whose ranges fall before, across and after the watermarks the test makes."""
    return [
        Query(tenant=tenant, limit=7),
        Query(tenant=tenant, user=("alice",), limit=5),
        Query(tenant=tenant, text=("rm -rf",), limit=4),
        Query(tenant=tenant, kinds=("output",), limit=3),
        Query(tenant=tenant, until=_at("2026-11-21T10:02:00Z"), limit=9),
        Query(tenant=tenant, since=_at("2026-11-21T10:01:00Z"), limit=6),
        Query(tenant=tenant, since=_at("2026-11-21T10:00:10Z"), until=_at("2026-11-21T10:00:50Z")),
        Query(tenant=tenant, until=_at("2026-11-21T10:00:20Z"), limit=8),
    ]


async def walk(backend: Any, query: Query) -> tuple[list[str], set[str], list[str]]:
    """(hit ids over every page, backends that answered, their reasons)."""
    ids: list[str] = []
    backends: set[str] = set()
    reasons: list[str] = []
    q = query
    for _ in range(500):
        page = await backend.search(q)
        ids += [h.id for h in page.hits]
        backends.add(page.backend)
        reasons.append(page.reason)
        if page.next_cursor is None:
            return ids, backends, reasons
        q = q.with_cursor(page.next_cursor)
    raise AssertionError("more than 500 pages")


async def compare(s: Settings) -> tuple[set[str], list[str]]:
    """Every query walked through the service equals PostgreSQL walked directly; returns the
    backends that answered and their reasons."""
    pgb = PgSearchBackend(s.postgres_dsn.get())
    service = SearchService(pgb, OpenSearchBackend.from_settings(s), health_ttl_s=0)
    seen: set[str] = set()
    reasons: list[str] = []
    try:
        for q in queries(s.tenant):
            got, backends, why = await walk(service, q)
            want, _, _ = await walk(pgb, q)
            assert got == want, (q, backends, why)
            seen |= backends
            reasons += why
    finally:
        await pgb.close()
        assert service.os is not None
        service.os.close()
    return seen, reasons


def big_session(tenant: str, sid: str, lines: int) -> list[Any]:
    frames = [
        Frame(10 * i, Stream.OUTPUT, f"line {i}: rm -rf /tmp/job{i}\r\n".encode())
        for i in range(lines)
    ]
    return session_chunks(tenant, sid, frames, started_at="2026-11-21T10:05:00Z", per_chunk=4)


def test_answers_equal_postgres_with_the_index_worker_stopped_lagging_and_opensearch_emptied(
    settings: Settings,
) -> None:
    s = dataclasses.replace(settings, opensearch_index_prefix=f"wm-{uuid.uuid4().hex[:10]}")
    first = [_event(s.tenant, i) for i in range(0, 120)]
    later = [_event(s.tenant, i) for i in range(120, 180)]
    # Arrives late with an old time: the watermark must go back to it, not stay at the newest.
    late = [_event(s.tenant, 999, time="2026-11-21T10:00:30.500000Z", uid="ev-late")]
    store = OpenSearchStore(s.opensearch_url, prefix=s.opensearch_index_prefix)

    async def pending() -> watermark.Pending:
        conn = await pg.connect(s.postgres_dsn.get())
        try:
            return await watermark.pending(conn, s.tenant)
        finally:
            await conn.close()

    async def run() -> None:
        # 1. Everything indexed: OpenSearch answers alone.
        async with workers(s):
            produce_events(s, first)
            ev = [s.topic_events]
            await wait_for("indexed", lambda: drained(s, ev) and drained(s, ev, "index"))
        assert (await pending()).since_us is None
        seen, reasons = await compare(s)
        assert seen == {"opensearch"}, reasons

        # 2. Index worker stopped while more is stored, one of them late: the part of each
        #    answer from the late event's time on comes from PostgreSQL, saying so.
        async with workers(s, index=False):
            produce_events(s, later + late)
            await wait_for("persisted", lambda: drained(s, [s.topic_events]))
        w = await pending()
        assert w.since_us is not None
        assert w.batches >= 1
        assert datetime.fromtimestamp(w.since_us / 1e6, UTC) == _at("2026-11-21T10:00:30.5Z")
        seen, reasons = await compare(s)
        assert seen != {"opensearch"}, reasons
        assert any("has not indexed" in r for r in reasons), reasons
        assert "opensearch" in seen or "opensearch+postgres" in seen  # used before the mark

        # 3. OpenSearch emptied behind everyone's back (data indices only, then everything):
        #    PostgreSQL answers, saying why.
        store.client.indices.delete(index=f"{s.opensearch_index_prefix}-events-*")
        seen, reasons = await compare(s)
        assert seen == {"postgres"}, reasons
        assert all("lost" in r for r in reasons), reasons
        store.client.indices.delete(index=f"{s.opensearch_index_prefix}-*")
        seen, reasons = await compare(s)
        assert seen == {"postgres"}, reasons
        assert all("no complete copy" in r for r in reasons), reasons

        # 4. A large session stored, then the index worker started: it rebuilds and catches up
        #    while searches run; every answer on the way equals PostgreSQL's.
        async with workers(s, index=False):
            produce_session(s, big_session(s.tenant, str(uuid.uuid4()), 400))
            await wait_for("persisted", lambda: drained(s, topics(s)))
        async with workers(s):
            mid: set[str] = set()
            for _ in range(200):
                seen, _ = await compare(s)
                mid |= seen
                if await asyncio.to_thread(drained, s, topics(s), "index"):
                    break
            await wait_for("indexed", lambda: drained(s, topics(s), "index"))
        assert "postgres" in mid or "opensearch+postgres" in mid
        assert (await pending()).since_us is None
        seen, reasons = await compare(s)
        assert seen == {"opensearch"}, reasons

    try:
        asyncio.run(run())
    finally:
        store.close()
