"""Persist worker against the real broker and PostgreSQL: round trip, redelivery, enrichment,
partitions, dictionaries, PostgreSQL outage."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from deploy.stack import LocalStack
from ingest.persist import PersistWorker
from schemas import chain_hash, encode_event
from sessionvault.settings import Settings
from storage import pg
from storage.codec import CODEC_ZSTD_DICT
from storage.dicts import train_and_store
from storage.eventstore import ensure_partitions, known_partitions
from tests.integration.persist_helpers import (
    build_session,
    fetch_all,
    group_lag,
    produce,
    produce_sessions,
    run_until_drained,
    stored_payloads,
    stored_sessions,
)

pytestmark = pytest.mark.integration


def session_events(settings: Settings, sid: str, i: int) -> list[tuple[bytes, bytes]]:
    base = {"sv_version": 1, "tenant": settings.tenant, "sid": sid, "cluster_name": "prod"}
    start = {
        **base,
        "event": "session.start",
        "code": "T2000I",
        "uid": f"start-{sid}",
        "time": f"2026-11-21T10:00:{i:02d}Z",
        "user": f"user{i}@example.com",
        "login": "root",
        "server_id": f"node-{i}",
        "ei": 0,
        "x-unknown": {"kept": [1, 2]},
    }
    end = {
        **base,
        "event": "session.end",
        "code": "T2004I",
        "uid": f"end-{sid}",
        "time": f"2026-11-21T11:00:{i:02d}.5Z",
        "ei": 99,
    }
    return [(sid.encode(), encode_event(start)), (sid.encode(), encode_event(end))]


def test_round_trip_stores_exact_bytes_frames_counters_and_events(settings: Settings) -> None:
    rng = random.Random(1)
    sessions = [build_session(settings.tenant, f"rt-{i}", 12, rng) for i in range(4)]
    sessions.append(build_session(settings.tenant, "rt-big", 4, rng, sizes=(65536,)))
    produce_sessions(settings, sessions)
    events = [e for i, s in enumerate(sessions) for e in session_events(settings, s.sid, i)]
    produce(settings, settings.topic_events, events)

    asyncio.run(run_until_drained(settings, [settings.topic_chunks, settings.topic_events]))

    dsn = settings.postgres_dsn.get()
    stored = asyncio.run(stored_payloads(dsn))
    rows = asyncio.run(stored_sessions(dsn))
    sums = asyncio.run(
        fetch_all(dsn, "SELECT sid, sum(octet_length(payload)) AS s FROM chunks GROUP BY sid")
    )
    stored_sum = {r["sid"]: r["s"] for r in sums}
    for i, s in enumerate(sessions):
        seqs, payload, frames = stored[s.sid]
        assert seqs == list(range(len(s.chunks)))
        assert payload == s.payload
        assert frames == s.frames
        row = rows[s.sid]
        assert row["tenant"] == settings.tenant
        assert row["chunks"] == len(s.chunks)
        assert row["bytes"] == len(s.payload)
        assert row["stored_bytes"] == stored_sum[s.sid]
        assert row["last_seq"] == len(s.chunks) - 1
        assert row["last_hash"] == s.chunks[-1].hash
        assert row["duration_ms"] == max(f.offset_ms for f in s.frames)
        assert (row["status"], row["integrity"], row["exit_code"]) == ("closed", "ok", 0)
        assert row["user_name"] == f"user{i}@example.com"
        assert (row["login"], row["server_id"], row["cluster_name"]) == (
            "root",
            f"node-{i}",
            "prod",
        )
        assert row["ended_at"] == datetime(2026, 11, 21, 11, 0, i, 500000, tzinfo=UTC)
    big = rows["rt-big"]
    assert int(big["stored_bytes"]) < int(big["bytes"]) // 4  # 64 KiB terminal text compresses
    ev = asyncio.run(fetch_all(dsn, "SELECT uid, body, sid, ei, code FROM events ORDER BY uid"))
    assert len(ev) == len(events)
    start0 = next(e for e in ev if e["uid"] == "start-rt-0")
    assert '"x-unknown": {"kept": [1, 2]}' in str(start0["body"])
    assert (start0["sid"], start0["ei"], start0["code"]) == ("rt-0", 0, "T2000I")


def test_records_produced_twice_are_stored_once_and_counters_do_not_move(
    settings: Settings,
) -> None:
    rng = random.Random(2)
    sessions = [build_session(settings.tenant, f"dup-{i}", 8, rng) for i in range(3)]
    events = [e for i, s in enumerate(sessions) for e in session_events(settings, s.sid, i)]
    topics = [settings.topic_chunks, settings.topic_events]
    dsn = settings.postgres_dsn.get()

    produce_sessions(settings, sessions)
    produce(settings, settings.topic_events, events)
    first = asyncio.run(run_until_drained(settings, topics))
    before = asyncio.run(stored_sessions(dsn))
    before_chunks = asyncio.run(fetch_all(dsn, "SELECT sid, seq, payload FROM chunks"))

    produce_sessions(settings, sessions)
    produce(settings, settings.topic_events, events)
    second = asyncio.run(run_until_drained(settings, topics))

    assert first.stats.chunks_inserted == sum(len(s.chunks) for s in sessions)
    assert second.stats.records == first.stats.records  # the copies were really consumed
    assert second.stats.chunks_inserted == 0
    assert second.stats.events_inserted == 0
    assert asyncio.run(stored_sessions(dsn)) == before
    after_chunks = asyncio.run(fetch_all(dsn, "SELECT sid, seq, payload FROM chunks"))
    assert len(after_chunks) == len(before_chunks)
    assert asyncio.run(fetch_all(dsn, "SELECT count(*) AS n FROM events"))[0]["n"] == len(events)


def test_a_new_group_rereading_everything_changes_nothing(settings: Settings) -> None:
    rng = random.Random(3)
    sessions = [build_session(settings.tenant, f"again-{i}", 6, rng) for i in range(3)]
    produce_sessions(settings, sessions)
    dsn = settings.postgres_dsn.get()
    asyncio.run(run_until_drained(settings, [settings.topic_chunks]))
    before = asyncio.run(stored_sessions(dsn))
    again = asyncio.run(run_until_drained(settings, [settings.topic_chunks], group="persist-2"))
    assert again.stats.records == sum(len(s.chunks) for s in sessions)
    assert again.stats.chunks_inserted == 0
    assert asyncio.run(stored_sessions(dsn)) == before


def test_copy_insert_method_stores_exact_bytes_and_is_idempotent(settings: Settings) -> None:
    rng = random.Random(8)
    sessions = [build_session(settings.tenant, f"copy-{i}", 10, rng) for i in range(3)]
    produce_sessions(settings, sessions)
    dsn = settings.postgres_dsn.get()
    topics = [settings.topic_chunks]
    first = asyncio.run(run_until_drained(settings, topics, insert_method="copy"))
    before = asyncio.run(stored_sessions(dsn))
    again = asyncio.run(run_until_drained(settings, topics, group="p2", insert_method="copy"))
    assert first.stats.chunks_inserted == 30
    assert again.stats.chunks_inserted == 0
    assert asyncio.run(stored_sessions(dsn)) == before
    stored = asyncio.run(stored_payloads(dsn))
    for s in sessions:
        assert stored[s.sid][1] == s.payload
        assert before[s.sid]["chunks"] == len(s.chunks)


def test_session_start_event_stored_before_chunk0_still_enriches_the_session(
    settings: Settings,
) -> None:
    rng = random.Random(4)
    s = build_session(settings.tenant, "late-open", 3, rng, user="from-chunk")
    produce(settings, settings.topic_events, session_events(settings, s.sid, 7)[:1])
    asyncio.run(run_until_drained(settings, [settings.topic_events]))
    produce_sessions(settings, [s])
    asyncio.run(run_until_drained(settings, [settings.topic_chunks, settings.topic_events]))
    row = asyncio.run(stored_sessions(settings.postgres_dsn.get()))[s.sid]
    assert row["user_name"] == "user7@example.com"
    assert row["server_id"] == "node-7"


def test_gap_and_broken_chain_are_stored_and_flagged(settings: Settings) -> None:
    rng = random.Random(5)
    gap = build_session(settings.tenant, "gappy", 6, rng)
    del gap.chunks[3]
    broken = build_session(settings.tenant, "broken", 4, rng)
    other = build_session(settings.tenant, "other", 4, rng)
    broken.chunks[2] = dataclasses.replace(other.chunks[2], sid="broken")
    # Its own hash stays valid (it passes validation); only its link to chunk 1 is wrong.
    c = broken.chunks[2]
    broken.chunks[2] = dataclasses.replace(c, hash=chain_hash(c.prev_hash, "broken", 2, c.frames))
    produce_sessions(settings, [gap, broken])
    asyncio.run(run_until_drained(settings, [settings.topic_chunks]))
    rows = asyncio.run(stored_sessions(settings.postgres_dsn.get()))
    assert rows["gappy"]["integrity"] == "gap"
    assert rows["gappy"]["chunks"] == 5
    assert rows["broken"]["integrity"] == "broken"
    assert rows["broken"]["chunks"] == 4


def test_partition_creation_moves_rows_already_in_the_default_partition(
    settings: Settings,
) -> None:
    async def go() -> tuple[set[str], list[dict[str, Any]], list[dict[str, Any]]]:
        conn = await pg.connect(settings.postgres_dsn.get())
        try:
            await conn.execute(
                "INSERT INTO events (tenant, uid, time, event, body) VALUES"
                " ('t', 'early', '2025-03-04T05:06:07Z', 'x', '{}')"
            )
            known = await known_partitions(conn)
            created = await ensure_partitions(conn, [(2025, 3), (2025, 3)], known)
            assert created == ["events_y2025m03"]
            assert await ensure_partitions(conn, [(2025, 3)], set()) == []  # exists: no-op
            in_default = await conn.fetch("SELECT uid FROM events_default")
            in_month = await conn.fetch("SELECT uid FROM events_y2025m03")
            return known, [dict(r) for r in in_default], [dict(r) for r in in_month]
        finally:
            await conn.close()

    known, in_default, in_month = asyncio.run(go())
    assert "events_y2025m03" in known
    assert in_default == []
    assert in_month == [{"uid": "early"}]


def test_trained_dictionary_is_used_for_new_small_chunks(settings: Settings) -> None:
    rng = random.Random(6)
    first = [build_session(settings.tenant, f"d1-{i}", 20, rng, sizes=(40, 200)) for i in range(8)]
    produce_sessions(settings, first)
    asyncio.run(run_until_drained(settings, [settings.topic_chunks]))

    async def train() -> int:
        conn = await pg.connect(settings.postgres_dsn.get())
        try:
            report = await train_and_store(conn, dict_bytes=8192)
        finally:
            await conn.close()
        assert report.test_dict_bytes <= report.test_plain_bytes
        return report.dict_id

    dict_id = asyncio.run(train())
    later = [build_session(settings.tenant, f"d2-{i}", 20, rng, sizes=(40, 200)) for i in range(3)]
    produce_sessions(settings, later)
    asyncio.run(run_until_drained(settings, [settings.topic_chunks]))
    dsn = settings.postgres_dsn.get()
    used = asyncio.run(
        fetch_all(dsn, "SELECT DISTINCT dict_id FROM chunks WHERE codec = $1", CODEC_ZSTD_DICT)
    )
    assert [r["dict_id"] for r in used] == [dict_id]
    stored = asyncio.run(stored_payloads(dsn))
    for s in later:
        assert stored[s.sid][1] == s.payload


def test_postgres_outage_stops_commits_without_crashing_and_work_completes_after(
    settings: Settings, stack: LocalStack
) -> None:
    s = dataclasses.replace(settings, retry_backoff_max_ms=1000)
    rng = random.Random(7)
    before = [build_session(s.tenant, f"pre-{i}", 5, rng) for i in range(3)]
    during = [build_session(s.tenant, f"out-{i}", 5, rng) for i in range(3)]
    dsn = s.postgres_dsn.get()

    async def scenario() -> PersistWorker:
        worker = PersistWorker(s)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop=stop))
        try:
            await asyncio.to_thread(produce_sessions, s, before)
            await _wait_lag_zero(s, 60)
            await asyncio.to_thread(stack.stop_postgres)
            try:
                await asyncio.to_thread(produce_sessions, s, during)
                await asyncio.sleep(5)
                assert not task.done(), "the worker must not exit while PostgreSQL is down"
                lag = await asyncio.to_thread(group_lag, s)
                assert lag[s.topic_chunks] == sum(len(x.chunks) for x in during)
                assert worker.stats.db_retries >= 2
            finally:
                await asyncio.to_thread(stack.start_postgres)
            await _wait_lag_zero(s, 60)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        return worker

    worker = asyncio.run(scenario())
    stored = asyncio.run(stored_payloads(dsn))
    rows = asyncio.run(stored_sessions(dsn))
    for x in before + during:
        assert stored[x.sid][1] == x.payload
        assert rows[x.sid]["chunks"] == len(x.chunks)
    assert worker.stats.chunks_inserted == sum(len(x.chunks) for x in before + during)


async def _wait_lag_zero(s: Settings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        lag = await asyncio.to_thread(group_lag, s)
        if lag.get(s.topic_chunks) == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"lag not 0 after {timeout_s}s: {lag}")
        await asyncio.sleep(0.5)
