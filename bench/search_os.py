"""OpenSearch backend on the LOCAL OpenSearch-compatible server (osmem): indexing rate and query
latencies. EMULATOR FIGURES, NOT OPENSEARCH'S: osmem is an in-memory Go emulator that proves
API compatibility (it indexes about 1,100 docs/s by its own account); a real OpenSearch cluster
behaves differently in every way that matters for speed.

Method: a private PostgreSQL database gets the search corpus (generated events of two tenants,
rendered terminal output, the Teleport fixtures: ``tests/integration/search_corpus.py``), then

* ``reindex`` copies it to osmem under a fresh index prefix (PostgreSQL keyset reads, documents
  built by the model, bulk requests of at most 4 MiB, one in flight): documents/s end to end;
* the same documents are bulk-indexed again (idempotent ids, overwrite): documents/s of the
  bulk path alone;
* queries of three kinds (filters only, free text, third page through cursors) run N times
  each on OpenSearch and, for context, on PostgreSQL over the same small corpus: p50/p99.

Run: ``python -m bench.search_os [--quick]``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bench._common import Figure, bench_main, cache_dir
from deploy.stack import LocalStack
from sessionvault.settings import Secret, load_settings
from storage import pg
from storage.search.model import KIND_OUTPUT, Query
from storage.search.opensearch import OpenSearchBackend, OpenSearchStore, index_documents
from storage.search.pg import PgSearchBackend
from storage.search.reindex import event_action, reindex, segment_action

NAME = "search_os"
LABEL = "emulator figures, not OpenSearch's"
DATABASE = "sv_bench_search_os"


def _queries() -> dict[str, list[Query]]:
    since = datetime(2026, 2, 1, tzinfo=UTC)
    until = datetime(2026, 3, 1, tzinfo=UTC)
    return {
        "filtered": [
            Query(tenant="acme", user=("alice",)),
            Query(tenant="acme", kubernetes_cluster=("gke-prod",), verb=("DELETE",)),
            Query(tenant="acme", event=("session.command",), since=since, until=until),
            Query(tenant="globex", login=("root",), cluster_name=("prod-eu",)),
        ],
        "free text": [
            Query(tenant="acme", text=("rm -rf",)),
            Query(tenant="acme", text=("permission denied",), kinds=(KIND_OUTPUT,)),
            Query(tenant="acme", text=("100%_",)),
            Query(tenant="globex", text=("sudo", "nginx")),
        ],
    }


def _pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def _latencies(backend: Any, queries: list[Query], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        for q in queries:
            t0 = time.perf_counter()
            await backend.search(q)
            out.append((time.perf_counter() - t0) * 1000)
    return out


async def _third_page(backend: Any, q: Query, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        cursor = None
        for _ in range(2):
            cursor = (await backend.search(q.with_cursor(cursor))).next_cursor
        t0 = time.perf_counter()
        await backend.search(q.with_cursor(cursor))
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _admin(stack: LocalStack, sql: str) -> None:
    conn = await pg.connect(stack.server_dsn("postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run(quick: bool) -> list[Figure]:
    # The corpus builder lives with the search tests (one definition of the corpus).
    from tests.integration.search_corpus import build_corpus

    tenants = {"acme": 4_000, "globex": 2_000} if quick else {"acme": 20_000, "globex": 8_000}
    sessions = 20 if quick else 80
    reps = 5 if quick else 25
    home = cache_dir() / "stack-search-os"
    stack = LocalStack(home, detached=False, echo=lambda m: print(m, flush=True))
    figures: list[Figure] = []
    try:
        stack.start_postgres()
        url = stack.start_opensearch()
        asyncio.run(_admin(stack, f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        asyncio.run(_admin(stack, f'CREATE DATABASE "{DATABASE}"'))
        dsn = stack.server_dsn(DATABASE)
        asyncio.run(pg.migrate(dsn))
        settings = load_settings(env={}, home=home, postgres_dsn=Secret(dsn), opensearch_url=url)
        info = asyncio.run(build_corpus(dsn, settings, tenants=tenants, output_sessions=sessions))
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        store = OpenSearchStore(url, prefix=prefix)

        async def index_all() -> tuple[int, float, int, float]:
            conn = await pg.connect(dsn)
            try:
                t0 = time.perf_counter()
                report = await reindex(conn, store)
                t_reindex = time.perf_counter() - t0
                rows = await conn.fetch(
                    "SELECT tenant, uid, time, time_us, body FROM events LIMIT 5000"
                )
                segs = await conn.fetch(
                    "SELECT tenant, sid, seg_no, start_ms, end_ms, time_us, text, times,"
                    " user_name, login, server_id, cluster_name, kubernetes_cluster"
                    " FROM text_segments LIMIT 2000"
                )
            finally:
                await conn.close()
            actions = [event_action(r, prefix=prefix) for r in rows]
            actions += [segment_action(r, prefix=prefix) for r in segs]
            t1 = time.perf_counter()
            again = await index_documents(store, actions)
            t_bulk = time.perf_counter() - t1
            return report.total, t_reindex, again.indexed, t_bulk

        total, t_reindex, n_bulk, t_bulk = asyncio.run(index_all())
        corpus = (
            f"{info.total_events:,} events + {sum(info.segments.values()):,} segments"
            " + Teleport fixtures"
        )
        figures.append(
            Figure(
                NAME,
                "reindex PostgreSQL -> osmem",
                total / t_reindex,
                "docs/s",
                note=f"{LABEL}; {total:,} documents ({corpus}) in {t_reindex:.1f} s",
            )
        )
        figures.append(
            Figure(
                NAME,
                "bulk only (overwrite, 4 MiB requests)",
                n_bulk / t_bulk,
                "docs/s",
                note=f"{LABEL}; {n_bulk:,} documents",
            )
        )

        async def measure() -> None:
            osb = OpenSearchBackend(url, prefix=prefix)
            pgb = PgSearchBackend(dsn)
            try:
                for kind, queries in _queries().items():
                    for name, backend in (("osmem", osb), ("PostgreSQL", pgb)):
                        await _latencies(backend, queries, 1)  # warm-up
                        lat = await _latencies(backend, queries, reps)
                        note = LABEL if name == "osmem" else "same small corpus, for context"
                        figures.append(
                            Figure(NAME, f"{name} {kind} p50", _pct(lat, 50), "ms", note=note)
                        )
                        figures.append(Figure(NAME, f"{name} {kind} p99", _pct(lat, 99), "ms"))
                q = Query(tenant="acme", limit=50)
                for name, backend in (("osmem", osb), ("PostgreSQL", pgb)):
                    lat = await _third_page(backend, q, reps)
                    figures.append(
                        Figure(NAME, f"{name} 3rd page by cursor p50", _pct(lat, 50), "ms")
                    )
                    figures.append(
                        Figure(NAME, f"{name} 3rd page by cursor p99", _pct(lat, 99), "ms")
                    )
            finally:
                osb.close()
                await pgb.close()

        asyncio.run(measure())
        store.delete_by_query({"match_all": {}})
        store.close()
    finally:
        stack.down()
    return figures


if __name__ == "__main__":
    raise SystemExit(
        bench_main(
            run, "OpenSearch backend on the local emulator (emulator figures, not OpenSearch's)"
        )
    )
