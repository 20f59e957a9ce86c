"""Conformance: the SAME queries on the PostgreSQL and the OpenSearch backend give the same hits
in the same order, page by page (cursors included), over one corpus.

The corpus (generated events of two tenants, rendered terminal output, the Teleport fixtures)
is stored in PostgreSQL by the search corpus builder, then copied to OpenSearch by
``reindex`` (the same document path the index worker uses). The module gets its own database and
its own OpenSearch index prefix, so nothing leaks between tests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest

from deploy.stack import LocalStack
from sessionvault.settings import Secret, Settings, load_settings
from storage import pg
from storage.search.model import KIND_EVENT, KIND_OUTPUT, Page, Query
from storage.search.opensearch import OpenSearchBackend, OpenSearchStore
from storage.search.pg import PgSearchBackend
from storage.search.reindex import count_rows, reindex
from tests.integration.conftest import TEMPLATE_DB, _admin
from tests.integration.search_corpus import BASE, FIXTURE_TENANT, CorpusInfo, build_corpus

TENANTS = {"acme": 9_000, "globex": 5_000}
OUTPUT_SESSIONS = 40
WALK_PAGE = 500  # page size of the whole-result walks


@dataclass(frozen=True)
class Env:
    settings: Settings
    info: CorpusInfo
    prefix: str


@pytest.fixture(scope="module")
def corpus(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The corpus in a database of its own and, reindexed, under a fresh index prefix (built
    once for the module: the OpenSearch-compatible server indexes about 1,100 docs/s)."""
    hexid = uuid.uuid4().hex[:12]
    database = f"t_{hexid}"
    asyncio.run(_admin(stack, f'CREATE DATABASE "{database}" TEMPLATE "{TEMPLATE_DB}"'))
    home = tmp_path_factory.mktemp("conformance")
    settings = load_settings(
        env={"SESSIONVAULT_HOME": str(home)},
        home=home,
        postgres_dsn=Secret(stack.server_dsn(database)),
        opensearch_url=stack.opensearch_url,
        kafka_bootstrap=stack.kafka_bootstrap,
    )
    prefix = f"conf-{hexid}"
    dsn = settings.postgres_dsn.get()
    store = OpenSearchStore(settings.opensearch_url, prefix=prefix)
    try:
        info = asyncio.run(
            build_corpus(dsn, settings, tenants=TENANTS, output_sessions=OUTPUT_SESSIONS)
        )

        async def index() -> int:
            conn = await pg.connect(dsn)
            try:
                expected = await count_rows(conn)
                report = await reindex(conn, store)
            finally:
                await conn.close()
            assert report.rejected == []
            assert report.total == expected
            return expected

        expected = asyncio.run(index())
        assert store.count() == expected
        yield Env(settings, info, prefix)
    finally:
        store.delete_by_query({"match_all": {}})
        store.close()
        asyncio.run(_admin(stack, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def _t(days: float) -> datetime:
    return BASE + timedelta(days=days)


def queries() -> list[tuple[str, dict[str, Any]]]:
    """(name, Query keyword arguments without tenant) for every tenant."""
    return [
        ("everything", {}),
        ("events only", {"kinds": (KIND_EVENT,)}),
        ("output only", {"kinds": (KIND_OUTPUT,)}),
        ("user", {"user": ("alice",)}),
        ("user case-sensitive", {"user": ("Alice",)}),
        ("users or-ed, non-ASCII", {"user": ("bob", "ørjan")}),
        ("login + cluster", {"login": ("root",), "cluster_name": ("prod-eu",)}),
        ("server", {"server_id": ("srv-007", "srv-123")}),
        ("kube cluster + verb", {"kubernetes_cluster": ("gke-prod",), "verb": ("DELETE",)}),
        ("kube namespace", {"kubernetes_namespace": ("payments",)}),
        ("kube resource kind", {"kubernetes_resource": ("secrets",)}),
        ("kube resource name", {"kubernetes_resource": ("pod-7", "deployment-3")}),
        ("kube resource empty", {"kubernetes_resource": ("",), "kinds": (KIND_EVENT,)}),
        ("event type", {"event": ("session.command", "exec")}),
        ("code", {"code": ("T3002E",)}),
        ("time range", {"since": _t(20), "until": _t(27.5)}),
        ("since only", {"since": _t(140)}),
        ("until only", {"until": _t(3)}),
        ("text rm -rf", {"text": ("rm -rf",)}),
        ("text casefold", {"text": ("STRASSE",)}),
        ("text sharp s", {"text": ("straße",)}),
        ("text percent underscore", {"text": ("12%_",)}),
        ("text like metachar", {"text": ("a%_b",)}),
        ("text star", {"text": ("*.pem",)}),
        ("text question", {"text": ("?",)}),
        ("text backslash", {"text": ("c:\\windows\\",)}),
        ("text quote", {"text": ('"rm -rf"',)}),
        ("text AND literal", {"text": ("quoted) AND more",)}),
        ("text sql", {"text": ("; drop table events; --",)}),
        ("text single quote", {"text": ("'/tmp/build'",)}),
        ("text two terms", {"text": ("sudo", "nginx")}),
        ("text no match", {"text": ("no such text anywhere zz",)}),
        ("text + filters", {"text": ("passwd",), "user": ("carol", "dave"), "since": _t(10)}),
        ("output text", {"text": ("permission denied",), "kinds": (KIND_OUTPUT,)}),
        ("scope clusters", {"scope_kubernetes_clusters": ("eks-prod",)}),
        ("scope empty", {"scope_kubernetes_clusters": ()}),
    ]


def _page_json(page: Page) -> dict[str, Any]:
    d = page.to_json()
    d.pop("backend")
    return d


async def _compare(pgb: PgSearchBackend, osb: OpenSearchBackend, q: Query, max_pages: int) -> int:
    """Walk both backends page by page; every page must be identical. Returns hits seen."""
    seen = 0
    cursor: str | None = None
    for _ in range(max_pages):
        qq = q.with_cursor(cursor)
        a, b = await pgb.search(qq), await osb.search(qq)
        assert b.backend == "opensearch"
        ja, jb = _page_json(a), _page_json(b)
        if ja != jb:
            ids_a = [h["id"] for h in ja["hits"]]
            ids_b = [h["id"] for h in jb["hits"]]
            raise AssertionError(f"pages differ after {seen} hits:\n pg {ids_a}\n os {ids_b}")
        seen += len(a.hits)
        cursor = a.next_cursor
        if cursor is None:
            break
    return seen


def test_every_query_gives_identical_pages_on_postgres_and_opensearch(corpus: Env) -> None:
    settings, prefix = corpus.settings, corpus.prefix
    dsn = settings.postgres_dsn.get()

    async def run() -> dict[str, int]:
        pgb = PgSearchBackend(dsn)
        osb = OpenSearchBackend(settings.opensearch_url, prefix=prefix)
        counts: dict[str, int] = {}
        try:
            for tenant in [*TENANTS, FIXTURE_TENANT]:
                for name, kw in queries():
                    # Small pages over the first hits (cursor hand-over at odd offsets),
                    # then whole result sets of the selective queries in big pages (page
                    # size changes no order; 37 there made this test a minute of round trips).
                    q = Query(tenant=tenant, limit=37, **kw)
                    n = await _compare(pgb, osb, q, max_pages=4)
                    if "text" in kw or len(kw) > 1 or tenant == FIXTURE_TENANT:
                        whole = Query(tenant=tenant, limit=WALK_PAGE, **kw)
                        n = await _compare(pgb, osb, whole, max_pages=10_000)
                    counts[f"{tenant}/{name}"] = n
        finally:
            await pgb.close()
            osb.close()
        return counts

    counts = asyncio.run(run())
    # The corpus really exercises the queries: most of them find something.
    assert counts["acme/text rm -rf"] > 0
    assert counts["acme/text backslash"] > 0
    assert counts["acme/text percent underscore"] > 0
    assert counts[f"{FIXTURE_TENANT}/everything"] > 0
    assert counts["acme/text no match"] == 0
    assert counts["acme/scope empty"] == 0
    assert sum(1 for v in counts.values() if v) > len(counts) // 2


def test_full_walk_of_a_tenant_is_identical_with_big_pages(corpus: Env) -> None:
    settings, info, prefix = corpus.settings, corpus.info, corpus.prefix

    async def run() -> int:
        pgb = PgSearchBackend(settings.postgres_dsn.get())
        osb = OpenSearchBackend(settings.opensearch_url, prefix=prefix)
        try:
            return await _compare(pgb, osb, Query(tenant="globex", limit=1000), 10_000)
        finally:
            await pgb.close()
            osb.close()

    seen = asyncio.run(run())
    assert seen == info.events["globex"] + info.segments["globex"]


def test_opensearch_never_returns_another_tenants_documents(corpus: Env) -> None:
    settings, prefix = corpus.settings, corpus.prefix

    async def run() -> None:
        osb = OpenSearchBackend(settings.opensearch_url, prefix=prefix)
        try:
            page = await osb.search(Query(tenant="acme", limit=1000, kinds=(KIND_OUTPUT,)))
            acme_sids = tuple(sorted({h.sid for h in page.hits if h.sid}))[:50]
            assert acme_sids
            # Guessing another tenant's session ids finds nothing.
            other = await osb.search(Query(tenant="globex", sid=acme_sids, limit=1000))
            assert other.hits == ()
            # And every hit of a broad search is the tenant's own.
            for tenant in TENANTS:
                cursor = None
                for _ in range(5):
                    p = await osb.search(Query(tenant=tenant, limit=500, cursor=cursor))
                    assert p.hits
                    assert {h.tenant for h in p.hits} == {tenant}
                    cursor = p.next_cursor
            nobody = await osb.search(Query(tenant="nobody-" + uuid.uuid4().hex[:6]))
            assert nobody.hits == ()
        finally:
            osb.close()

    asyncio.run(run())
