"""The index worker against the real broker, PostgreSQL and the OpenSearch-compatible server:
Kafka -> persist worker -> PostgreSQL, and (its own consumer group) -> OpenSearch.

Every test uses its own index prefix, so the shared server's other documents never interfere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from deploy.stack import LocalStack
from ingest.deadletter import iter_deadletters
from ingest.index_worker import IndexWorker
from ingest.persist import PersistWorker
from ingest.segmenter import Segmenter
from schemas import Frame, Stream, encode_chunk
from schemas.models import EVENT_VERSION
from sessionvault.settings import Settings
from storage import pg
from storage.search.model import KIND_EVENT, KIND_OUTPUT, AnyHit, Query, SegmentHit
from storage.search.opensearch import OpenSearchBackend, OpenSearchStore
from storage.search.pg import PgSearchBackend
from storage.search.service import SearchService
from tests.integration.persist_helpers import drained, group_lag, produce
from tests.integration.search_corpus import session_chunks

START = "2026-11-21T10:00:00Z"


@pytest.fixture
def os_settings(settings: Settings) -> Settings:
    """The test's settings with an index prefix of its own."""
    return dataclasses.replace(settings, opensearch_index_prefix=f"iw-{uuid.uuid4().hex[:10]}")


def _event(tenant: str, i: int, **extra: Any) -> dict[str, Any]:
    return {
        "sv_version": EVENT_VERSION,
        "tenant": tenant,
        "event": "session.command" if i % 3 else "exec",
        "code": "T4000I",
        "uid": f"ev-{i:05d}",
        "time": f"2026-11-21T10:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z",
        "user": ["alice", "bob", "Carol"][i % 3],
        "login": "root",
        "server_id": f"srv-{i % 7}",
        "cluster_name": "prod-eu",
        "path": "/usr/bin/rm" if i % 5 == 0 else "/usr/bin/ls",
        "argv": ["-rf", f"/tmp/x{i}"] if i % 5 == 0 else ["-la", "100%_done*?"],
        **extra,
    }


def produce_events(settings: Settings, events: list[dict[str, Any]]) -> None:
    produce(
        settings,
        settings.topic_events,
        ((e["uid"].encode(), orjson.dumps(e)) for e in events),
    )


def typed_session(tenant: str, sid: str) -> tuple[list[Any], int]:
    """A session whose user types ``rm -rf /tmp/build`` after a coloured prompt, correcting a
    typo with backspace; returns (chunks, offset_ms at which the ``f`` of ``-rf`` appeared)."""
    frames = [Frame(500, Stream.OUTPUT, b"\x1b[01;32malice@node\x1b[00m:\x1b[01;34m~\x1b[00m$ ")]
    off = 2000
    typed_f_at = -1
    for ch in "rm -rx\x08 \x08f /tmp/build":
        off += 150
        frames.append(Frame(off, Stream.OUTPUT, ch.encode()))
        if ch == "f" and typed_f_at < 0:
            typed_f_at = off
    frames.append(Frame(off + 100, Stream.OUTPUT, b"\r\n"))
    frames.append(Frame(off + 400, Stream.OUTPUT, b"rm: cannot remove '/tmp/build': Denied\r\n"))
    return session_chunks(tenant, sid, frames, started_at=START, per_chunk=4), typed_f_at


def produce_session(settings: Settings, chunks: list[Any]) -> None:
    produce(settings, settings.topic_chunks, ((c.sid.encode(), encode_chunk(c)) for c in chunks))


@asynccontextmanager
async def workers(
    settings: Settings, *, index_group: str = "index", index: bool = True
) -> AsyncIterator[IndexWorker]:
    """A persist worker, a segmenter and (``index``) an index worker running in this process
    until the block ends (the index worker is yielded either way; unstarted without ``index``)."""
    stop = asyncio.Event()
    persist = PersistWorker(settings)
    indexer = IndexWorker(settings, group_id=index_group)
    tasks = [
        asyncio.create_task(persist.run(stop=stop)),
        asyncio.create_task(Segmenter(settings, poll_s=0.2).run(stop=stop)),
    ]
    if index:
        tasks.append(asyncio.create_task(indexer.run(stop=stop)))
    try:
        yield indexer
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)


async def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


def topics(settings: Settings) -> list[str]:
    return [settings.topic_events, settings.topic_chunks]


async def all_hits(backend: Any, query: Query) -> list[dict[str, Any]]:
    """Every hit of ``query`` (walking the cursors), as JSON."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await backend.search(query.with_cursor(cursor))
        out += [h.to_json() for h in page.hits]
        cursor = page.next_cursor
        if cursor is None:
            return out


async def assert_same_content(settings: Settings, tenant: str) -> list[dict[str, Any]]:
    """OpenSearch holds exactly PostgreSQL's hits for ``tenant`` (same set, same order)."""
    store = OpenSearchStore(settings.opensearch_url, prefix=settings.opensearch_index_prefix)
    await asyncio.to_thread(store.refresh)
    store.close()
    pgb = PgSearchBackend(settings.postgres_dsn.get())
    osb = OpenSearchBackend.from_settings(settings)
    try:
        q = Query(tenant=tenant, limit=1000)
        a, b = await all_hits(pgb, q), await all_hits(osb, q)
    finally:
        await pgb.close()
        osb.close()
    assert [h["id"] for h in b] == [h["id"] for h in a]
    assert b == a
    return a


async def count_events(settings: Settings) -> int:
    conn = await pg.connect(settings.postgres_dsn.get())
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


def test_index_worker_copies_postgres_content_and_typed_command_is_found_within_a_second(
    os_settings: Settings,
) -> None:
    s = os_settings
    sid = str(uuid.uuid4())
    chunks, typed_at = typed_session(s.tenant, sid)
    events = [_event(s.tenant, i, sid=sid) for i in range(300)]
    # Two stages of one kube request, delivered separately: the stored row merges them.
    kube = {
        "sv_version": EVENT_VERSION,
        "tenant": s.tenant,
        "event": "kube.request",
        "code": "T3009I",
        "uid": "kube-1",
        "time": "2026-11-21T11:00:00Z",
        "user": "alice",
        "kubernetes_cluster": "gke-prod",
        "verb": "DELETE",
        "resource_kind": "pods",
        "resource_name": "web-1",
        "request_path": "/api/v1/namespaces/default/pods/web-1",
        "kube_audit_stages": ["RequestReceived"],
    }
    done = {**kube, "response_code": 200, "kube_audit_stages": ["ResponseComplete"]}

    async def run() -> None:
        produce_session(s, chunks)
        produce_events(s, [*events, kube])
        async with workers(s):
            produce_events(s, [done])
            await wait_for(
                "persist and index drained",
                lambda: drained(s, topics(s)) and drained(s, topics(s), "index"),
            )
        hits = await assert_same_content(s, s.tenant)
        assert len([h for h in hits if h["kind"] == KIND_EVENT]) == 301
        assert any(h["kind"] == KIND_OUTPUT for h in hits)
        kube_hit = next(h for h in hits if h["id"] == "kube-1")
        assert kube_hit["fields"]["response_code"] == 200

        osb = OpenSearchBackend.from_settings(s)
        try:
            page = await osb.search(Query(tenant=s.tenant, text=("RM -RF",), kinds=(KIND_OUTPUT,)))
        finally:
            osb.close()
        assert page.backend == "opensearch"
        typed: list[AnyHit] = [h for h in page.hits if "alice@node" in getattr(h, "text", "")]
        assert len(typed) == 1
        hit = typed[0]
        assert isinstance(hit, SegmentHit)
        assert hit.sid == sid
        assert hit.offset_ms is not None
        assert abs(hit.offset_ms - typed_at) <= 1000, (hit.offset_ms, typed_at)
        assert hit.replay == f"sessionvault play {sid} --start-at {hit.offset_ms / 1000:.3f}"

        # Redelivery: a second group reads everything again; nothing changes.
        store = OpenSearchStore(s.opensearch_url, prefix=s.opensearch_index_prefix)
        before = store.count()
        async with workers(s, index_group="index-again"):
            await wait_for("second group drained", lambda: drained(s, topics(s), "index-again"))
        store.refresh()
        assert store.count() == before
        store.close()
        await assert_same_content(s, s.tenant)

    asyncio.run(run())


def test_opensearch_down_mid_ingest_loses_nothing_falls_back_and_converges_after_restart(
    os_settings: Settings, stack: LocalStack
) -> None:
    s = os_settings
    first = [_event(s.tenant, i) for i in range(0, 200)]
    second = [_event(s.tenant, i) for i in range(200, 400)]
    sid = str(uuid.uuid4())
    chunks, _ = typed_session(s.tenant, sid)

    async def run() -> None:
        async with workers(s) as index:
            produce_events(s, first)
            await wait_for(
                "first part indexed",
                lambda: drained(s, [s.topic_events]) and drained(s, [s.topic_events], "index"),
            )
            await assert_same_content(s, s.tenant)
            rebuilds = index.stats.reindexes
            stack.stop_opensearch()
            try:
                produce_events(s, second)
                produce_session(s, chunks)
                await wait_for("persisted while OpenSearch is down", lambda: drained(s, topics(s)))
                # Persistence unaffected: every event is in PostgreSQL.
                assert await count_events(s) == 400
                # The index group is stuck behind (it never commits past what it could not index).
                assert group_lag(s, "index").get(s.topic_events, 0) > 0
                pgb = PgSearchBackend(s.postgres_dsn.get())
                service = SearchService(pgb, OpenSearchBackend.from_settings(s))
                try:
                    page = await service.search(Query(tenant=s.tenant, limit=1000))
                    direct = await pgb.search(Query(tenant=s.tenant, limit=1000))
                finally:
                    await pgb.close()
                assert page.backend == "postgres"
                assert page.reason
                assert [h.id for h in page.hits] == [h.id for h in direct.hits]
                assert len([h for h in page.hits if h.kind == KIND_EVENT]) == 400
            finally:
                stack.start_opensearch(same_port=True)
            # The restarted (in-memory) server is empty: the worker rebuilds it from PostgreSQL
            # and then goes on with what it could not index.
            await wait_for("index caught up", lambda: drained(s, topics(s), "index"), 120)
            assert index.stats.reindexes == rebuilds + 1
        hits = await assert_same_content(s, s.tenant)
        assert len([h for h in hits if h["kind"] == KIND_EVENT]) == 400
        assert any(h["sid"] == sid and h["kind"] == KIND_OUTPUT for h in hits)

    asyncio.run(run())


def test_document_opensearch_refuses_goes_to_dead_letters_and_the_rest_is_indexed(
    os_settings: Settings,
) -> None:
    s = os_settings
    store = OpenSearchStore(s.opensearch_url, prefix=s.opensearch_index_prefix)
    # An index created by hand with a conflicting mapping: text_norm must be a number there.
    store.client.indices.create(
        index=f"{s.opensearch_index_prefix}-events-2026.11",
        body={"mappings": {"properties": {"text_norm": {"type": "long"}}}},
    )
    good = [_event(s.tenant, i, time=f"2026-12-01T00:00:{i:02d}Z") for i in range(5)]
    bad = [_event(s.tenant, 100 + i) for i in range(3)]  # November: the broken index

    async def run() -> None:
        produce_events(s, [*good, *bad])
        async with workers(s):
            await wait_for(
                "drained",
                lambda: drained(s, [s.topic_events]) and drained(s, [s.topic_events], "index"),
            )

    asyncio.run(run())
    letters = [d for d in iter_deadletters(s) if d.worker == "index"]
    assert sorted(orjson.loads(d.value or b"")["uid"] for d in letters) == sorted(
        e["uid"] for e in bad
    )
    assert {d.reason for d in letters} == {"index_rejected"}
    assert all("HTTP 400" in d.error for d in letters)
    store.refresh()
    assert store.count({"term": {"tenant": s.tenant}}) == len(good)
    store.delete_by_query({"match_all": {}})
    store.close()


def test_records_the_persist_worker_refused_are_skipped_by_reading_its_committed_offsets(
    os_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Chunks of a session that was never opened (no chunk 0) are dead-lettered by persist and
    never reach PostgreSQL: the index worker learns that from the persist group's committed
    offsets (the real broker's offset-fetch admin API) and moves on instead of waiting forever;
    the events and the complete session around them are indexed."""
    s = os_settings
    good = [_event(s.tenant, i) for i in range(4)]
    whole, _ = typed_session(s.tenant, "sess-whole")
    orphan, _ = typed_session(s.tenant, "sess-orphan")

    async def run() -> None:
        produce_events(s, good[:2])
        produce_session(s, orphan[1:])
        produce_session(s, whole)
        produce_events(s, good[2:])
        async with workers(s):
            await wait_for(
                "drained",
                lambda: drained(s, topics(s)) and drained(s, topics(s), "index"),
                timeout_s=60,
            )

    with caplog.at_level("INFO", logger="ingest.index_worker"):
        asyncio.run(run())
    skipped = [r for r in caplog.records if "not stored by the persist worker" in r.message]
    assert len(skipped) == len(orphan) - 1
    letters = [d for d in iter_deadletters(s) if d.worker == "persist"]
    assert {d.reason for d in letters} == {"unknown_session"}
    assert len(letters) == len(orphan) - 1
    hits = asyncio.run(assert_same_content(s, s.tenant))
    assert {h["sid"] for h in hits if h["kind"] == KIND_OUTPUT} == {"sess-whole"}
    assert sum(1 for h in hits if h["kind"] == KIND_EVENT) == len(good)
    store = OpenSearchStore(s.opensearch_url, prefix=s.opensearch_index_prefix)
    store.delete_by_query({"match_all": {}})
    store.close()
