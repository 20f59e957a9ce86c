"""Retention and legal hold, end to end on real servers: sessions and events go through the SDK,
Kafka and the persist worker; OpenSearch is filled by the real reindex; ``sessionvault
retention`` / ``hold`` run as subprocesses. A dry run lists exactly what an apply then removes;
held sessions (with their chunks, text, events and index documents) and tenants without a
policy keep everything; an event partition past every policy is dropped whole."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from ingest.sdk import AuditEmitter, SessionRecorder
from schemas.models import SessionInfo
from sessionvault.settings import Settings
from storage import pg
from storage.persist_logic import partition_name
from storage.search import model
from storage.search.opensearch import OpenSearchStore
from storage.search.reindex import reindex
from tests.dates import at_date, today_params
from tests.integration.import_support import cli, drain, dump_tables, fetch

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=300)
RECENT = NOW - timedelta(days=1)
DEC_2025 = datetime(2025, 12, 15, 12, 0, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Ages:
    """The corpus's times, relative to the day the retention run takes for today."""

    today: datetime

    @property
    def drop(self) -> datetime:
        """Only tenant A has rows in this month: its partition is dropped whole."""
        return self.today - timedelta(days=400)

    @property
    def old(self) -> datetime:
        return self.today - timedelta(days=300)

    @property
    def month_45(self) -> datetime:
        return self.today - timedelta(days=45)

    @property
    def recent(self) -> datetime:
        return self.today - timedelta(days=1)


@pytest.fixture(params=[pytest.param((NOW, "UTC"), id="now"), *today_params()])
def ages(request: pytest.FixtureRequest) -> tuple[Ages, str]:
    """(corpus times, TZ of the retention run) for the real today and every injected one."""
    today, tz = request.param
    return Ages(today), tz


def rfc(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_session(settings: Settings, started: datetime, line: bytes) -> str:
    info = SessionInfo(rfc(started), 80, 24, user="alice", login="root", server_id="node-1")
    rec = SessionRecorder(settings, info)
    rec.output(b"\x1b[32mroot@node-1\x1b[0m:~# " + line + b"\r\n")
    rec.output(b"done\r\n")
    assert rec.close(flush_timeout_s=30)
    return rec.sid


def emit(settings: Settings, events: list[dict[str, Any]]) -> None:
    em = AuditEmitter(settings)
    for e in events:
        em.emit(e)
    assert em.close(timeout_s=30)


def index_ids(store: OpenSearchStore, tenants: list[str]) -> set[str]:
    store.refresh()
    res = store.search({"query": {"terms": {"tenant": tenants}}, "size": 10_000, "_source": False})
    return {h["_id"] for h in res["hits"]["hits"]}


def pg_doc_ids(settings: Settings, tenants: list[str]) -> set[str]:
    """The ids of the documents PostgreSQL's rows of ``tenants`` map to."""
    ev = fetch(
        settings, "SELECT tenant, uid, time FROM events WHERE tenant = ANY($1::text[])", tenants
    )
    seg = fetch(
        settings, "SELECT sid, seg_no FROM text_segments WHERE tenant = ANY($1::text[])", tenants
    )
    return {
        model.event_doc_id(str(r["tenant"]), str(r["uid"]), model.to_us(r["time"]))  # type: ignore[arg-type]
        for r in ev
    } | {model.segment_doc_id(str(r["sid"]), int(r["seg_no"])) for r in seg}  # type: ignore[call-overload]


async def _reindex(dsn: str, store: OpenSearchStore, tenants: list[str]) -> None:
    conn = await pg.connect(dsn)
    try:
        for t in tenants:
            await reindex(conn, store, tenant=t)
    finally:
        await conn.close()


def count(settings: Settings, sql: str, *args: object) -> int:
    n: Any = fetch(settings, sql, *args)[0]["n"]
    return int(n)


@pytest.fixture
def corpus(settings: Settings, ages: tuple[Ages, str]) -> dict[str, str]:
    """Tenant A (with a policy later) and tenant B (none): sessions and events of all ages."""
    t = ages[0]
    a = settings
    b = dataclasses.replace(settings, tenant=f"{settings.tenant}-b")
    ids = {
        "A": a.tenant,
        "B": b.tenant,
        "s_old": record_session(a, t.old, b"rm -rf /srv/old"),
        "s_held": record_session(a, t.old, b"cat /etc/evidence"),
        "s_new": record_session(a, t.recent, b"uptime"),
        "s_b_old": record_session(b, t.old, b"ls /b"),
    }
    emit(
        a,
        [
            {"event": "user.login", "uid": "e_dec", "time": rfc(t.drop), "user": "alice"},
            {"event": "user.login", "uid": "e_old_plain", "time": rfc(t.old), "user": "alice"},
            {"event": "session.join", "uid": "e_old_s", "time": rfc(t.old), "sid": ids["s_old"]},
            {
                "event": "session.join",
                "uid": "e_old_held",
                "time": rfc(t.old),
                "sid": ids["s_held"],
            },
            {"event": "user.login", "uid": "e_45", "time": rfc(t.month_45), "user": "bob"},
            {"event": "user.login", "uid": "e_new", "time": rfc(t.recent), "user": "bob"},
        ],
    )
    # Tenant B (no policy) has rows in the old and the 45-day months: whatever the calendar,
    # those partitions are never dropped whole, only A's rows in them are deleted.
    emit(
        b,
        [
            {"event": "user.login", "uid": "e_b_old", "time": rfc(t.old), "user": "carol"},
            {"event": "user.login", "uid": "e_b_45", "time": rfc(t.month_45), "user": "carol"},
        ],
    )
    drain(settings)
    return ids


def uids(settings: Settings, tenant: str) -> set[str]:
    return {
        str(r["uid"]) for r in fetch(settings, "SELECT uid FROM events WHERE tenant = $1", tenant)
    }


def sids(settings: Settings, tenant: str) -> set[str]:
    return {
        str(r["sid"]) for r in fetch(settings, "SELECT sid FROM sessions WHERE tenant = $1", tenant)
    }


def test_dry_run_lists_exactly_what_apply_removes_and_holds_and_other_tenants_keep_theirs(
    settings: Settings,
    sv_env: dict[str, str],
    corpus: dict[str, str],
    ages: tuple[Ages, str],
) -> None:
    """Run by the CLI with its clock at each injected today (and the real one)."""
    t, tz = ages
    sv_env = at_date(sv_env, t.today, tz)
    a, b = corpus["A"], corpus["B"]
    dropped = partition_name(t.drop.year, t.drop.month)
    store = OpenSearchStore(settings.opensearch_url, prefix=settings.opensearch_index_prefix)
    asyncio.run(_reindex(settings.postgres_dsn.get(), store, [a, b]))
    assert index_ids(store, [a, b]) == pg_doc_ids(settings, [a, b])
    old_chunks = count(settings, "SELECT count(*) AS n FROM chunks WHERE sid = $1", corpus["s_old"])
    old_segments = count(
        settings, "SELECT count(*) AS n FROM text_segments WHERE sid = $1", corpus["s_old"]
    )
    assert old_chunks > 0
    assert old_segments > 0  # the persist worker rendered its output into text

    cli(sv_env, "retention", "set", "--tenant", a, "--events-days", "30", "--sessions-days", "60")
    out = cli(sv_env, "hold", "set", corpus["s_held"], "--reason", "case 42: keep", "--tenant", a)
    assert b"legal hold set" in out.stdout

    before = dump_tables(settings)
    ids_before = index_ids(store, [a, b])
    dry = orjson.loads(cli(sv_env, "retention", "apply", "--dry-run", "--json").stdout)
    assert dump_tables(settings) == before  # a dry run changes nothing
    assert index_ids(store, [a, b]) == ids_before
    assert dry["partitions"] == [dropped]
    [ta] = dry["tenants"]  # B has no policy: not even looked at
    assert ta["tenant"] == a
    assert ta["session_ids"] == [corpus["s_old"]]
    assert ta["held_session_ids"] == [corpus["s_held"]]
    assert (ta["sessions"], ta["chunks"], ta["text_segments"]) == (1, old_chunks, old_segments)
    assert (ta["events"], ta["held_events"]) == (4, 1)  # e_dec, e_old_plain, e_old_s, e_45
    # Index documents: the old session's segments and the 4 events.
    assert ta["index_documents"] == old_segments + 4

    proc = cli(sv_env, "retention", "apply")
    assert f"{dropped}: dropped".encode() in proc.stderr  # progress on stderr
    report = proc.stdout.decode()
    assert f"tenant {a}: deleted 4 events" in report
    assert "1 sessions with" in report

    assert sids(settings, a) == {corpus["s_held"], corpus["s_new"]}
    assert uids(settings, a) == {"e_old_held", "e_new"}
    assert sids(settings, b) == {corpus["s_b_old"]}
    assert uids(settings, b) == {"e_b_old", "e_b_45"}
    for table in ("chunks", "text_segments"):
        n = count(settings, f"SELECT count(*) AS n FROM {table} WHERE sid = $1", corpus["s_old"])
        assert n == 0, table
        held = count(
            settings, f"SELECT count(*) AS n FROM {table} WHERE sid = $1", corpus["s_held"]
        )
        assert held > 0, table
    parts = {str(r["relname"]) for r in fetch(settings, "SELECT relname FROM pg_class")}
    assert dropped not in parts
    # Tenant B (no policy) and a held event live there.
    assert partition_name(t.old.year, t.old.month) in parts
    # The index holds exactly what PostgreSQL still holds.
    assert index_ids(store, [a, b]) == pg_doc_ids(settings, [a, b])
    [run] = fetch(settings, "SELECT * FROM retention_runs")
    assert (run["tenant"], run["events_deleted"], run["sessions_deleted"]) == (a, 4, 1)
    assert run["actor"] == getpass.getuser()

    # Released: the next run takes the session, its chunks, text, events and documents.
    cli(sv_env, "hold", "release", corpus["s_held"], "--reason", "case closed", "--tenant", a)
    cli(sv_env, "retention", "apply")
    assert sids(settings, a) == {corpus["s_new"]}
    assert uids(settings, a) == {"e_new"}
    assert index_ids(store, [a, b]) == pg_doc_ids(settings, [a, b])
    history = fetch(
        settings,
        "SELECT action, reason, actor FROM legal_holds WHERE sid = $1 ORDER BY id",
        corpus["s_held"],
    )
    assert [(h["action"], h["reason"]) for h in history] == [
        ("set", "case 42: keep"),
        ("release", "case closed"),
    ]
    assert {h["actor"] for h in history} == {getpass.getuser()}


def test_hold_refuses_another_tenants_session_and_an_empty_reason(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    b = dataclasses.replace(settings, tenant=f"{settings.tenant}-b")
    sid = record_session(b, RECENT, b"id")
    drain(settings, [settings.topic_chunks])
    import subprocess

    from tests.integration.import_support import SESSIONVAULT

    proc = subprocess.run(
        [SESSIONVAULT, "hold", "set", sid, "--reason", "x"],  # default tenant: A
        env=sv_env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert b"not found" in proc.stderr
    proc = subprocess.run(
        [SESSIONVAULT, "hold", "set", sid, "--reason", "  ", "--tenant", b.tenant],
        env=sv_env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert b"reason is required" in proc.stderr
    held = fetch(settings, "SELECT legal_hold FROM sessions WHERE sid = $1", sid)
    assert held == [{"legal_hold": False}]
    assert fetch(settings, "SELECT * FROM legal_holds") == []


def test_a_tenant_without_policy_loses_nothing_and_a_run_without_policies_is_a_no_op(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    record_session(settings, OLD, b"echo ancient")
    emit(settings, [{"event": "user.login", "uid": "e1", "time": rfc(DEC_2025)}])
    drain(settings)
    before = dump_tables(settings)
    out = cli(sv_env, "retention", "apply")
    assert b"nothing to do" in out.stdout
    assert dump_tables(settings) == before
