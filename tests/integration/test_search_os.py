"""OpenSearch backend specifics on the real OpenSearch-compatible server: the ``reindex`` CLI
(progress, idempotence, --tenant), and texts longer than one keyword term can hold."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import uuid
from pathlib import Path
from typing import Any

import orjson

from schemas.models import EVENT_VERSION
from sessionvault.settings import Settings
from storage.search.model import Query
from storage.search.opensearch import OpenSearchBackend, OpenSearchStore
from storage.search.pg import PgSearchBackend
from tests.integration.conftest import env_for
from tests.integration.search_corpus import persist_records

SV = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "sessionvault")


def _event(tenant: str, i: int, argv: list[str]) -> dict[str, Any]:
    return {
        "sv_version": EVENT_VERSION,
        "tenant": tenant,
        "event": "session.command",
        "code": "T4000I",
        "uid": f"u-{i:04d}",
        "time": f"2026-10-0{1 + i % 9}T08:00:{i % 60:02d}.{i:06d}Z",
        "user": "alice",
        "path": "/usr/bin/echo",
        "argv": argv,
    }


def _store(settings: Settings, tenant_a: str, tenant_b: str) -> None:
    long_argv = ["x" * 9000, "middle", "y" * 9000, "NEEDLE*?\\end"]
    items = [
        (settings.topic_events, orjson.dumps(_event(t, i, ["-n", f"v{i}"])))
        for t in (tenant_a, tenant_b)
        for i in range(60)
    ]
    items.append((settings.topic_events, orjson.dumps(_event(tenant_a, 999, long_argv))))
    asyncio.run(persist_records(settings.postgres_dsn.get(), settings, items))


def _reindex(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SV, "reindex", *args],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_reindex_cli_copies_postgres_with_progress_and_is_idempotent(settings: Settings) -> None:
    s = dataclasses.replace(settings, opensearch_index_prefix=f"rx-{uuid.uuid4().hex[:10]}")
    a, b = f"{s.tenant}-a", f"{s.tenant}-b"
    _store(s, a, b)
    store = OpenSearchStore(s.opensearch_url, prefix=s.opensearch_index_prefix)
    try:
        only_a = _reindex(s, "--tenant", a)
        assert only_a.returncode == 0, only_a.stderr
        assert "reindexing" in only_a.stderr
        store.refresh()
        assert store.count({"term": {"tenant": a}}) == 61
        assert store.count({"term": {"tenant": b}}) == 0
        assert store.marker() is None  # a partial rebuild does not claim completeness

        full = _reindex(s)
        assert full.returncode == 0, full.stderr
        assert "indexed 121 events and 0 segments" in full.stdout
        assert "marked complete" in full.stdout
        again = _reindex(s, "--since", "2026-10-05T00:00:00Z")
        assert again.returncode == 0, again.stderr
        store.refresh()
        assert store.count() == 121
        assert store.marker() is not None
    finally:
        store.delete_by_query({"match_all": {}})
        store.close()


def test_text_longer_than_a_keyword_term_is_matched_like_postgres(settings: Settings) -> None:
    s = dataclasses.replace(settings, opensearch_index_prefix=f"lt-{uuid.uuid4().hex[:10]}")
    a, b = f"{s.tenant}-a", f"{s.tenant}-b"
    _store(s, a, b)
    assert _reindex(s).returncode == 0

    async def run() -> None:
        pgb = PgSearchBackend(s.postgres_dsn.get())
        osb = OpenSearchBackend.from_settings(s)
        try:
            for terms in [
                ("needle*?\\END",),
                ("x" * 480 + " middle " + "y" * 480,),
                ("middle", "needle"),
                ("xxxx ???",),
            ]:
                q = Query(tenant=a, text=terms)
                pa, pb = await pgb.search(q), await osb.search(q)
                assert [h.to_json() for h in pb.hits] == [h.to_json() for h in pa.hits]
                expected = 0 if terms == ("xxxx ???",) else 1
                assert len(pb.hits) == expected, terms
        finally:
            await pgb.close()
            osb.close()

    asyncio.run(run())
    OpenSearchStore(s.opensearch_url, prefix=s.opensearch_index_prefix).delete_by_query(
        {"match_all": {}}
    )
