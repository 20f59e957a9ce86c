"""OpenSearch answers searches only once it holds a complete copy of PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

from sessionvault.settings import Settings
from storage.search.model import Query
from storage.search.opensearch import OpenSearchBackend, OpenSearchStore
from storage.search.pg import PgSearchBackend
from storage.search.service import SearchService


def test_reachable_but_never_indexed_opensearch_falls_back_to_postgres_until_marked(
    settings: Settings,
) -> None:
    s = dataclasses.replace(settings, opensearch_index_prefix=f"rd-{uuid.uuid4().hex[:10]}")

    async def run() -> list[tuple[str, str]]:
        pg_backend = PgSearchBackend(s.postgres_dsn.get())
        os_backend = OpenSearchBackend.from_settings(s)
        seen: list[tuple[str, str]] = []
        try:
            service = SearchService(pg_backend, os_backend, health_ttl_s=0)
            page = await service.search(Query(tenant=s.tenant))
            seen.append((page.backend, page.reason))
            store = OpenSearchStore(s.opensearch_url, prefix=s.opensearch_index_prefix)
            try:
                store.set_marker({"complete": True, "test": "readiness"})
            finally:
                store.close()
            page = await service.search(Query(tenant=s.tenant))
            seen.append((page.backend, page.reason))
        finally:
            await pg_backend.close()
            os_backend.close()
        return seen

    first, second = asyncio.run(run())
    assert first[0] == "postgres"
    assert first[1] is not None
    assert "no complete copy" in first[1]
    assert second[0] == "opensearch"
    assert "indexed everything" in (second[1] or "")
