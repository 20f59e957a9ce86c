"""The segmenter (ingest/segmenter.py) against the real broker and PostgreSQL: persistence does
not depend on it, it catches up when started late, a kill between its transactions changes
nothing, its segments are those of rendering each session in one pass, and it re-syncs
who/where into segments after session enrichment."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from typing import Any

import pytest

from ingest.segmenter import Segmenter
from replay.segments import SessionText, render_session
from schemas import encode_event
from sessionvault.settings import Settings
from storage import pg
from storage.persist_logic import parse_time
from storage.search.model import to_us
from tests.integration.conftest import env_for
from tests.integration.import_support import SESSIONVAULT
from tests.integration.persist_helpers import (
    Session,
    build_session,
    fetch_all,
    produce,
    produce_sessions,
    run_until_drained,
)

pytestmark = pytest.mark.integration

_SEGMENT_SQL = (
    "SELECT sid, seg_no, start_ms, end_ms, time_us, text, text_norm, times, user_name"
    " FROM text_segments ORDER BY sid, seg_no"
)


def one_pass(sessions: list[Session], user: str = "alice") -> list[dict[str, Any]]:
    """What rendering every session's chunks in one pass gives (the reference)."""
    out = []
    for s in sorted(sessions, key=lambda s: s.sid):
        info = s.chunks[0].session
        assert info is not None
        ctx = SessionText(
            tenant=s.tenant, sid=s.sid, started_us=to_us(parse_time(info.started_at)), user=user
        )
        for g in render_session(ctx, s.chunks).segments:
            out.append(
                {
                    "sid": g.sid,
                    "seg_no": g.seg_no,
                    "start_ms": g.start_ms,
                    "end_ms": g.end_ms,
                    "time_us": g.time_us,
                    "text": g.text,
                    "text_norm": g.text_norm,
                    "times": [int(t) for t in g.times],  # run-length pairs
                    "user_name": user,
                }
            )
    return out


async def stored_segments(dsn: str) -> list[dict[str, Any]]:
    rows = await fetch_all(dsn, _SEGMENT_SQL)
    for r in rows:
        r["times"] = [int(t) for t in r["times"]]
    return rows


async def rolled_back_step(seg: Segmenter, sid: str) -> int:
    """One segmenter transaction for ``sid`` that never commits (a kill before the commit);
    returns the chunks it had rendered."""
    conn = await pg.connect(seg.settings.postgres_dsn.get())
    try:
        tx = conn.transaction()
        await tx.start()
        step = await seg._process(conn, sid)
        await tx.rollback()
        return step.chunks
    finally:
        await conn.close()


def test_persist_stores_chunks_while_no_segmenter_runs_and_a_late_segmenter_catches_up(
    settings: Settings,
) -> None:
    rng = random.Random(41)
    sessions = [
        build_session(settings.tenant, f"seg-{i}", n, rng, sizes=(40, 300, 2000))
        for i, n in enumerate((9, 14, 5))
    ]
    produce_sessions(settings, sessions)
    dsn = settings.postgres_dsn.get()

    # Persistence alone: chunks stored, sessions closed, nothing rendered, work queued.
    asyncio.run(run_until_drained(settings, [settings.topic_chunks], segments=False))
    chunks = asyncio.run(fetch_all(dsn, "SELECT sid, count(*) AS n FROM chunks GROUP BY sid"))
    assert {r["sid"]: r["n"] for r in chunks} == {s.sid: len(s.chunks) for s in sessions}
    assert asyncio.run(fetch_all(dsn, "SELECT * FROM text_segments")) == []
    queued = asyncio.run(fetch_all(dsn, "SELECT sid FROM segment_queue ORDER BY sid"))
    assert [r["sid"] for r in queued] == sorted(s.sid for s in sessions)
    finals = asyncio.run(fetch_all(dsn, "SELECT sid, seq FROM chunks WHERE final ORDER BY sid"))
    assert [(r["sid"], r["seq"]) for r in finals] == sorted(
        (s.sid, len(s.chunks) - 1) for s in sessions
    )

    expected = one_pass(sessions)
    assert expected, "the sessions' output must render into some text"

    async def late_and_killed() -> None:
        # Small batches so each session needs several transactions; a few are "killed".
        seg = Segmenter(settings, chunk_batch=3)
        try:
            for s in sessions:
                assert await rolled_back_step(seg, s.sid) == 3
            assert await stored_segments(dsn) == []  # the killed transactions left nothing
            first = sessions[1].sid
            await seg.process_session(first)  # committed: 3 chunks of one session
            assert await rolled_back_step(seg, first) == 3  # killed mid-session
            await seg.process_session(first)
        finally:
            await seg.close()
        # A new segmenter (a restart) finishes the job.
        again = Segmenter(settings, chunk_batch=3)
        try:
            await again.catch_up(timeout_s=60)
            assert await again.pending() == 0
            # Running again changes nothing (every position is at the session's end).
            before = await stored_segments(dsn)
            for s in sessions:
                step = await again.process_session(s.sid)
                assert (step.chunks, step.segments) == (0, 0)
            assert await stored_segments(dsn) == before
        finally:
            await again.close()

    asyncio.run(late_and_killed())
    got = asyncio.run(stored_segments(dsn))
    assert got == expected
    pos = asyncio.run(fetch_all(dsn, "SELECT sid, text_seq, text_state FROM session_text"))
    assert {r["sid"]: (r["text_seq"], r["text_state"]) for r in pos} == {
        s.sid: (len(s.chunks) - 1, None) for s in sessions
    }


def test_segments_take_who_and_where_from_a_session_start_that_arrives_after_them(
    settings: Settings,
) -> None:
    rng = random.Random(7)
    s = build_session(settings.tenant, "seg-enrich", 6, rng, sizes=(300,), user="opener")
    produce_sessions(settings, [s])
    dsn = settings.postgres_dsn.get()
    asyncio.run(run_until_drained(settings, [settings.topic_chunks]))
    users = asyncio.run(fetch_all(dsn, "SELECT DISTINCT user_name FROM text_segments"))
    assert [r["user_name"] for r in users] == ["opener"]

    start = {
        "sv_version": 1,
        "tenant": settings.tenant,
        "sid": s.sid,
        "event": "session.start",
        "code": "T2000I",
        "uid": "start-enrich",
        "time": "2026-11-21T10:00:00Z",
        "user": "carol@example.com",
        "login": "admin",
        "server_id": "node-7",
        "cluster_name": "prod-eu",
        "ei": 0,
    }
    produce(settings, settings.topic_events, [(s.sid.encode(), encode_event(start))])
    asyncio.run(run_until_drained(settings, [settings.topic_events]))
    rows = asyncio.run(
        fetch_all(
            dsn,
            "SELECT DISTINCT user_name, login, server_id, cluster_name FROM text_segments",
        )
    )
    assert rows == [
        {
            "user_name": "carol@example.com",
            "login": "admin",
            "server_id": "node-7",
            "cluster_name": "prod-eu",
        }
    ]
    assert asyncio.run(fetch_all(dsn, "SELECT * FROM segment_queue")) == []


def test_segmenters_running_at_once_share_the_queue_and_one_killed_mid_batch_changes_nothing(
    settings: Settings,
) -> None:
    """Two `worker segments` processes on one queue, one SIGKILLed while work is in flight and
    a third started: the stored segments are exactly those of rendering each session once."""
    rng = random.Random(43)
    sessions = [
        build_session(settings.tenant, f"conc-{i}", n, rng, sizes=(40, 300, 2000, 6000))
        for i, n in enumerate((30, 24, 18, 36, 12, 27, 21, 33))
    ]
    produce_sessions(settings, sessions)
    dsn = settings.postgres_dsn.get()
    asyncio.run(run_until_drained(settings, [settings.topic_chunks], segments=False))
    expected = one_pass(sessions)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [SESSIONVAULT, "worker", "segments", "--status-every", "0"],
            env=env_for(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def count(sql: str) -> int:
        return int(asyncio.run(fetch_all(dsn, sql))[0]["n"])

    members = [start(), start()]
    try:
        deadline = time.monotonic() + 60
        while count("SELECT count(*) AS n FROM text_segments") == 0:
            assert time.monotonic() < deadline, "no segmenter rendered anything"
            time.sleep(0.02)
        assert count("SELECT count(*) AS n FROM segment_queue") > 0, "killed too late to matter"
        os.kill(members[0].pid, signal.SIGKILL)  # whatever it had in hand is rolled back
        members[0].wait(10)
        members.append(start())
        deadline = time.monotonic() + 120
        while count("SELECT count(*) AS n FROM segment_queue"):
            assert time.monotonic() < deadline, "the segmenters did not empty the queue"
            assert all(m.poll() is None for m in members[1:]), "a segmenter died"
            time.sleep(0.2)
    finally:
        for m in members:
            if m.poll() is None:
                m.send_signal(signal.SIGTERM)
                m.wait(30)
    assert asyncio.run(stored_segments(dsn)) == expected
