"""PostgreSQL search backend over >= 1M events: search latency, ingest-to-searchable, and the
tsvector-vs-pg_trgm comparison behind the index choice.

Method (real servers through ``deploy.stack.LocalStack``: embedded PostgreSQL 18, tansu):

1. A private database gets the search corpus of the tests (``tests/integration/search_corpus.py``:
   1,000,000 generated events of four tenants, rendered terminal output of 1,600 sessions, the
   Teleport fixtures), loaded with binary COPY and the migrated indexes re-created.
2. Search latency through ``SearchService`` over ``PgSearchBackend`` (the path the CLI and the
   API take, event offsets included), warm cache, one client: a set of filtered queries and a
   set of free-text queries (literal substrings, both kinds of hit unless said otherwise), each
   run ``reps`` times, first page of 50: p50/p99. Deep pages: pages 2..40 reached through the
   cursor, for a filtered and a free-text query.
3. Ingest-to-searchable: the persist worker (``run_persist_worker`` in a subprocess) consumes
   the events topic while an ``AuditEmitter`` emits probe events at a steady rate into the same
   1M-event database; a poller asks ``SearchService`` (free text: a marker only the probes
   carry) every 20 ms. Latency = first poll that returns the event - the moment before
   ``emit``. The consumer group's first join is excluded (a warm-up probe is awaited first).
4. tsvector vs pg_trgm on the same rows: build time and size of a trigram GIN index on
   ``text_norm`` (the one the migration creates, rebuilt here) and of a tsvector GIN index on
   ``to_tsvector('simple', text_norm)`` (built for the comparison, then dropped), latency of a
   first page for a few terms, and how far each answer is from the literal-substring answer
   (counts of extra and missing rows over the big tenant).

Figures are printed, never asserted. Run: ``python -m bench.search_pg [--quick]``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench._common import MIB, Figure, bench_main, cache_dir
from bench.servers import BenchStack, WorkerProcess
from deploy.stack import LocalStack
from ingest.sdk import AuditEmitter
from sessionvault.settings import Secret, Settings, load_settings
from storage import pg
from storage.search.model import KIND_EVENT, KIND_OUTPUT, Query, escape_like
from storage.search.pg import PgSearchBackend
from storage.search.service import SearchService

NAME = "search_pg"
DATABASE = "sv_bench_search_pg"
BIG = "acme"  # the 700k-event tenant of the full corpus


def _pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def filtered_queries(sid: str) -> list[Query]:
    feb, mar = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)
    day = datetime(2026, 3, 15, tzinfo=UTC)
    return [
        Query(tenant=BIG, user=("alice",)),
        Query(tenant=BIG, kubernetes_cluster=("gke-prod",), verb=("DELETE",)),
        Query(tenant=BIG, event=("session.command",), since=feb, until=mar),
        Query(tenant="globex", login=("root",), cluster_name=("prod-eu",)),
        Query(tenant=BIG, kubernetes_namespace=("kube-system",), kubernetes_resource=("secrets",)),
        Query(tenant=BIG, code=("T1000W",)),
        Query(tenant=BIG, server_id=("srv-042",)),
        Query(tenant=BIG, since=day, until=datetime(2026, 3, 16, tzinfo=UTC)),
        Query(tenant="initech", user=("bob", "carol")),
        Query(tenant=BIG, sid=(sid,)),
    ]


def free_text_queries() -> list[Query]:
    return [
        Query(tenant=BIG, text=("rm -rf",)),
        Query(tenant=BIG, text=("permission denied",), kinds=(KIND_OUTPUT,)),
        Query(tenant=BIG, text=("100%_",)),
        Query(tenant="globex", text=("sudo", "nginx")),
        Query(tenant=BIG, text=("rm -rf /tmp/build",)),
        Query(tenant=BIG, text=("STRASSE",)),
        Query(tenant=BIG, text=("c:\\windows",)),
        Query(tenant=BIG, text=("drop table events;",)),
        Query(tenant=BIG, text=("kube-system",), user=("mallory",)),
        Query(tenant=BIG, text=("no such text anywhere",)),
    ]


def hard_free_text_queries() -> list[Query]:
    """Free text the trigram index cannot narrow cheaply: a rare term (output only), a term
    matching nothing, and a term without any alphanumeric trigram (pg_trgm ignores
    punctuation, so only a scan can answer it)."""
    return [
        Query(tenant=BIG, text=("12%_usage",)),
        Query(tenant=BIG, text=("zq-no-such-term",)),
        Query(tenant=BIG, text=(";;",)),
    ]


async def _latencies(service: SearchService, queries: Sequence[Query], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        for q in queries:
            t0 = time.perf_counter()
            await service.search(q)
            out.append((time.perf_counter() - t0) * 1000)
    return out


async def _deep_pages(service: SearchService, q: Query, pages: int, reps: int) -> list[float]:
    """Latency of pages 2..``pages`` reached through the cursor."""
    out = []
    for _ in range(reps):
        page = await service.search(q)
        for _ in range(pages - 1):
            if page.next_cursor is None:
                break
            t0 = time.perf_counter()
            page = await service.search(q.with_cursor(page.next_cursor))
            out.append((time.perf_counter() - t0) * 1000)
    return out


def _latency_figures(
    label: str, lat: Sequence[float], target_ms: float | None, note: str = ""
) -> list[Figure]:
    p99 = _pct(lat, 99)
    return [
        Figure(NAME, f"{label} p50", _pct(lat, 50), "ms", note=note),
        Figure(
            NAME,
            f"{label} p99",
            p99,
            "ms",
            target="" if target_ms is None else f"< {target_ms:.0f} ms",
            met=None if target_ms is None else p99 < target_ms,
        ),
    ]


async def search_latencies(dsn: str, reps: int, pages: int) -> list[Figure]:
    conn = await pg.connect(dsn)
    try:
        sid = await conn.fetchval(
            "SELECT sid FROM events WHERE tenant = $1 AND sid IS NOT NULL LIMIT 1", BIG
        )
    finally:
        await conn.close()
    service = SearchService(PgSearchBackend(dsn))
    figures: list[Figure] = []
    try:
        sets = {
            "filtered": (filtered_queries(sid), 200.0),
            "free text": (free_text_queries(), 500.0),
        }
        for label, (queries, target) in sets.items():
            await _latencies(service, queries, 1)  # warm the cache
            lat = await _latencies(service, queries, reps)
            note = f"{len(queries)} queries x {reps}, first page of 50, warm cache"
            figures += _latency_figures(f"{label}, first page", lat, target, note)
        deep = {
            "filtered": Query(tenant=BIG, user=("alice",)),
            "free text": Query(tenant=BIG, text=("rm -rf",)),
        }
        for label, q in deep.items():
            lat = await _deep_pages(service, q, pages, max(1, reps // 5))
            target = 200.0 if label == "filtered" else 500.0
            note = f"pages 2..{pages} of 50 via cursor ({len(lat)} pages)"
            figures += _latency_figures(f"{label}, deep pages", lat, target, note)
    finally:
        await service.pg.close()
    figures += await _hard_cases(dsn, reps)
    return figures


async def _hard_cases(dsn: str, reps: int) -> list[Figure]:
    """The hard free-text queries, through the backend's own pool and through a pool whose
    sessions force custom plans. asyncpg prepares each statement; after five executions
    PostgreSQL may switch a prepared statement to a generic plan, which cannot use the
    trigram index for ``LIKE $n`` (the pattern is unknown when planning) and walks the
    tenant's rows in time order instead: fast for common terms, a full walk for rare ones.
    PostgreSQL picks the generic plan when it looks no dearer than the custom plans seen so
    far, so it is the MIX of terms that triggers it (after a scan-only term such as ``;;``,
    a rare term is walked too); each term alone on its own pool keeps its custom plan."""
    import asyncpg

    figures: list[Figure] = []
    queries = hard_free_text_queries()
    terms = ", ".join(repr(q.text[0]) for q in queries)
    for label, settings in (
        ("default plan cache", None),
        ("plan_cache_mode=force_custom_plan", {"plan_cache_mode": "force_custom_plan"}),
    ):
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, server_settings=settings)
        service = SearchService(PgSearchBackend(pool=pool))
        try:
            # Past the five custom plans on every pooled connection (the steady state).
            await _latencies(service, queries, 3)
            lat = await _latencies(service, queries, reps)
        finally:
            await pool.close()
        note = f"{terms} x {reps}, after warm-up"
        figures += _latency_figures(f"hard free text, {label}", lat, 500.0, note)
        for q in queries:
            one = await _one_query(dsn, settings, q, reps)
            figures.append(
                Figure(
                    NAME,
                    f"  {q.text[0]!r} alone, {label} p50",
                    one,
                    "ms",
                    note="its own pool: the plan cache sees only this term (see the docstring)",
                )
            )
    return figures


async def _one_query(dsn: str, settings: dict[str, str] | None, q: Query, reps: int) -> float:
    import asyncpg

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, server_settings=settings)
    service = SearchService(PgSearchBackend(pool=pool))
    try:
        await _latencies(service, [q], 6)
        return _pct(await _latencies(service, [q], max(3, reps // 4)), 50)
    finally:
        await pool.close()


# -- ingest to searchable --------------------------------------------------------------------


@dataclass
class _Probes:
    marker: str
    emitted: dict[str, float]  # uid -> wall time just before emit
    found: dict[str, float]  # uid -> latency, s


def _emit_probes(emitter: AuditEmitter, p: _Probes, n: int, rate_per_s: float) -> None:
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate_per_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        uid = str(uuid.uuid4())
        p.emitted[uid] = time.time()
        emitter.emit(
            {
                "event": "session.command",
                "code": "T4000I",
                "uid": uid,
                "user": "probe",
                "login": "root",
                "server_id": "web-1",
                "path": "/usr/bin/echo",
                "argv": [f"{p.marker}-{i:05d}"],
            }
        )


async def _poll_until_found(
    service: SearchService,
    settings: Settings,
    p: _Probes,
    expected: int,
    worker: WorkerProcess,
    timeout_s: float,
) -> None:
    q = Query(tenant=settings.tenant, text=(p.marker,), kinds=(KIND_EVENT,), limit=1000)
    deadline = time.monotonic() + timeout_s
    while len(p.found) < expected:
        page = await service.search(q)
        now = time.time()
        for h in page.hits:
            if h.id in p.emitted and h.id not in p.found:
                p.found[h.id] = now - p.emitted[h.id]
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(p.found)}/{expected} probes searchable in {timeout_s}s")
        worker.check()
        await asyncio.sleep(0.02)


def ingest_to_searchable(
    stack: LocalStack, dsn: str, bootstrap: str, n: int, rate_per_s: float, corpus_events: int
) -> list[Figure]:
    run_id = f"{int(time.time())}-{uuid.uuid4().hex[:6]}"
    home = stack.home
    settings = load_settings(
        env={},
        home=home,
        tenant=f"bench-ingest-{run_id}",
        postgres_dsn=Secret(dsn),
        kafka_bootstrap=bootstrap,
        topic_chunks=f"bench.search.chunks.{run_id}",
        topic_events=f"bench.search.events.{run_id}",
        topic_deadletter=f"bench.search.deadletter.{run_id}",
        topic_partitions=4,
        spool_dir=home / f"spool-{run_id}",
    )
    stack.ensure_topics(settings)
    worker = WorkerProcess(BenchStack(stack, settings, home), "bench-search-pg-worker.log")
    emitter = AuditEmitter(settings)
    service = SearchService(PgSearchBackend(dsn))
    try:

        async def measure() -> _Probes:
            warm = _Probes(f"warmup-{run_id}", {}, {})
            await asyncio.to_thread(_emit_probes, emitter, warm, 1, 1.0)
            await _poll_until_found(service, settings, warm, 1, worker, 120.0)
            p = _Probes(f"probe-{run_id}", {}, {})
            sender = threading.Thread(target=_emit_probes, args=(emitter, p, n, rate_per_s))
            sender.start()
            try:
                await _poll_until_found(service, settings, p, n, worker, n / rate_per_s + 60.0)
            finally:
                await asyncio.to_thread(sender.join)
                await service.pg.close()
            return p

        p = asyncio.run(measure())
    finally:
        emitter.close()
        worker.stop()
        stack.forget_topics(settings)
    lat_ms = [v * 1000 for v in p.found.values()]
    note = (
        f"{n} events at {rate_per_s:.0f}/s, AuditEmitter -> Kafka -> persist worker -> PostgreSQL"
        f" ({corpus_events:,}-event database) -> SearchService free text, polled every 20 ms"
    )
    return [
        Figure(NAME, "ingest-to-searchable p50", _pct(lat_ms, 50), "ms", note=note),
        Figure(
            NAME,
            "ingest-to-searchable p99",
            _pct(lat_ms, 99),
            "ms",
            target="< 2000 ms",
            met=_pct(lat_ms, 99) < 2000,
        ),
        Figure(NAME, "ingest-to-searchable max", max(lat_ms), "ms"),
    ]


# -- tsvector vs pg_trgm ---------------------------------------------------------------------

# Terms of the comparison: a word, a phrase, a path, and the literal-substring cases a tsvector
# cannot answer exactly (punctuation, % and _, part of a word).
COMPARE_TERMS = ("nginx", "rm -rf", "rm -rf /tmp/build", "100%", "a_b", "ssw")

_INDEX_SIZE = (
    "SELECT COALESCE(sum(pg_relation_size(i.inhrelid)), 0) FROM pg_inherits i"
    " WHERE i.inhparent = $1::regclass"
)


def _like(param: str) -> str:
    return f"text_norm LIKE {param} ESCAPE '\\'"


def _tsv(param: str) -> str:
    return f"to_tsvector('simple', text_norm) @@ phraseto_tsquery('simple', {param})"


def _like_pattern(term: str) -> str:
    return "%" + escape_like(term) + "%"


async def _first_page_ms(conn: Any, cond: str, arg: str, reps: int) -> float:
    sql = (
        f"SELECT uid FROM events WHERE tenant = $1 AND {cond}"
        ' ORDER BY time_us DESC, uid COLLATE "C" DESC LIMIT 51'
    )
    best = []
    for _ in range(reps):
        t0 = time.perf_counter()
        await conn.fetch(sql, BIG, arg)
        best.append((time.perf_counter() - t0) * 1000)
    return _pct(best, 50)


async def trgm_vs_tsvector(dsn: str, reps: int) -> tuple[list[Figure], list[dict[str, Any]]]:
    """Figures, and one row per term for the docs table."""
    conn = await pg.connect(dsn)
    figures: list[Figure] = []
    rows: list[dict[str, Any]] = []
    try:
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await conn.execute("SET max_parallel_maintenance_workers = 0")
        n_rows = await conn.fetchval("SELECT count(*) FROM events")
        # The migration's trigram index, rebuilt so its build time is measured the same way.
        await conn.execute("DROP INDEX events_search_text")
        t0 = time.perf_counter()
        await conn.execute(
            "CREATE INDEX events_search_text ON events USING gin (text_norm gin_trgm_ops)"
        )
        t_trgm = time.perf_counter() - t0
        t0 = time.perf_counter()
        await conn.execute(
            "CREATE INDEX bench_events_tsv ON events USING gin (to_tsvector('simple', text_norm))"
        )
        t_tsv = time.perf_counter() - t0
        await conn.execute("ANALYZE events")
        try:
            size_trgm = await conn.fetchval(_INDEX_SIZE, "events_search_text")
            size_tsv = await conn.fetchval(_INDEX_SIZE, "bench_events_tsv")
            note = f"{n_rows:,} rows, one backend, maintenance_work_mem 1GB"
            figures += [
                Figure(NAME, "pg_trgm GIN build", t_trgm, "s", note=note),
                Figure(NAME, "tsvector GIN build", t_tsv, "s"),
                Figure(NAME, "pg_trgm GIN size", size_trgm / MIB, "MiB"),
                Figure(NAME, "tsvector GIN size", size_tsv / MIB, "MiB"),
            ]
            for term in COMPARE_TERMS:
                pattern = _like_pattern(term)
                ms_trgm = await _first_page_ms(conn, _like("$2"), pattern, reps)
                ms_tsv = await _first_page_ms(conn, _tsv("$2"), term, reps)
                # LIKE takes the escaped pattern ($2), the tsquery the raw term ($3).
                r = await conn.fetchrow(
                    f"SELECT count(*) FILTER (WHERE {_like('$2')}) AS exact,"
                    f" count(*) FILTER (WHERE {_tsv('$3')} AND NOT ({_like('$2')})) AS extra,"
                    f" count(*) FILTER (WHERE {_like('$2')} AND NOT ({_tsv('$3')})) AS missing"
                    " FROM events WHERE tenant = $1",
                    BIG,
                    pattern,
                    term,
                )
                rows.append(
                    {
                        "term": term,
                        "trgm_ms": ms_trgm,
                        "tsv_ms": ms_tsv,
                        "exact": r["exact"],
                        "extra": r["extra"],
                        "missing": r["missing"],
                    }
                )
                accuracy = (
                    f"literal matches {r['exact']:,}; tsvector extra {r['extra']:,},"
                    f" missing {r['missing']:,}"
                )
                figures += [
                    Figure(NAME, f"first page {term!r}, pg_trgm LIKE", ms_trgm, "ms"),
                    Figure(NAME, f"first page {term!r}, tsvector", ms_tsv, "ms", note=accuracy),
                ]
        finally:
            await conn.execute("DROP INDEX IF EXISTS bench_events_tsv")
    finally:
        await conn.close()
    return figures, rows


async def _admin(stack: LocalStack, sql: str) -> None:
    conn = await pg.connect(stack.server_dsn("postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run(quick: bool) -> list[Figure]:
    from tests.integration.search_corpus import build_corpus

    tenants = (
        {"acme": 40_000, "globex": 15_000, "initech": 3_000, "umbrella": 2_000} if quick else None
    )
    reps = 3 if quick else 20
    pages = 10 if quick else 40
    home = cache_dir() / "stack-search-pg"
    stack = LocalStack(home, detached=False, echo=lambda m: print(m, flush=True))
    figures: list[Figure] = []
    try:
        stack.start_postgres()
        bootstrap = stack.start_broker()
        asyncio.run(_admin(stack, f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        asyncio.run(_admin(stack, f'CREATE DATABASE "{DATABASE}"'))
        dsn = stack.server_dsn(DATABASE)
        asyncio.run(pg.migrate(dsn))
        settings = load_settings(env={}, home=home, postgres_dsn=Secret(dsn))
        t0 = time.perf_counter()
        info = asyncio.run(
            build_corpus(dsn, settings, tenants=tenants, output_sessions=40 if quick else 400)
        )
        secs = ", ".join(f"{k} {v:.1f} s" for k, v in info.seconds.items())
        figures.append(
            Figure(
                NAME,
                "corpus build",
                time.perf_counter() - t0,
                "s",
                note=(
                    f"{info.total_events:,} events + {sum(info.segments.values()):,} segments"
                    f" + Teleport fixtures; {secs}"
                ),
            )
        )
        print(f"corpus: {figures[-1].note}", flush=True)
        figures += asyncio.run(search_latencies(dsn, reps, pages))
        print("search latencies done", flush=True)
        figures += ingest_to_searchable(
            stack, dsn, bootstrap, 100 if quick else 600, 20.0, info.total_events
        )
        print("ingest-to-searchable done", flush=True)
        compare, rows = asyncio.run(trgm_vs_tsvector(dsn, 3 if quick else 9))
        figures += compare
        print("term | pg_trgm ms | tsvector ms | literal matches | tsvector extra | missing")
        for r in rows:
            print(
                f"{r['term']!r} | {r['trgm_ms']:.1f} | {r['tsv_ms']:.1f} | {r['exact']:,}"
                f" | {r['extra']:,} | {r['missing']:,}"
            )
    finally:
        stack.down()
    return figures


if __name__ == "__main__":
    raise SystemExit(bench_main(run, "PostgreSQL search backend over the >= 1M-event corpus"))
