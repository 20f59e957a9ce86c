"""Helpers of the evidence tests: store sessions and events through the real pipeline, sign,
verify."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from ingest.evidence import EvidenceWorker
from replay.evidence import VerifyReport, verify_tenant
from schemas.codec import encode_event
from sessionvault.settings import Settings
from storage import pg
from storage.keyring import KeyFile, key_file_path
from tests.integration.persist_helpers import (
    Session,
    build_session,
    produce,
    produce_sessions,
    run_until_drained,
)


def event(tenant: str, uid: str, sid: str, kind: str = "session.command", **extra: Any) -> bytes:
    return encode_event(
        {
            "sv_version": 1,
            "tenant": tenant,
            "event": kind,
            "uid": uid,
            "time": f"2026-11-21T10:00:{int(uid.rsplit('-', 1)[-1]) % 60:02d}.123456Z",
            "sid": sid,
            "user": "alice",
            **extra,
        }
    )


async def store(
    settings: Settings, n_sessions: int, *, events_per_session: int = 3, seed: int = 13
) -> list[Session]:
    """``n_sessions`` closed sessions of 6 chunks with their events, stored by a real persist
    worker (sids ``ev-0``, ``ev-1``, ...; event uids ``<sid>-e-<i>``)."""
    rng = random.Random(seed)
    t = settings.tenant
    sessions = [build_session(t, f"ev-{i}", 6, rng) for i in range(n_sessions)]
    produce_sessions(settings, sessions)
    produce(
        settings,
        settings.topic_events,
        (
            (s.sid.encode(), event(t, f"{s.sid}-e-{i}", s.sid, command=f"ls {i}"))
            for s in sessions
            for i in range(events_per_session)
        ),
    )
    await run_until_drained(
        settings, [settings.topic_chunks, settings.topic_events], segments=False
    )
    return sessions


def keys_for(settings: Settings) -> KeyFile:
    return KeyFile.create(key_file_path(settings))


async def sign(settings: Settings, *, emit: bool = False) -> EvidenceWorker:
    """One evidence round now (every ended session's manifest, every tenant's checkpoint)."""
    worker = EvidenceWorker(settings, keys=keys_for(settings), emit=emit)
    try:
        await worker.step(manifest_delay_ms=0)
    finally:
        await worker.close()
    return worker


async def verify(settings: Settings, **kwargs: Any) -> VerifyReport:
    pool = await pg.create_pool(settings.postgres_dsn.get(), min_size=1, max_size=2)
    try:
        return await verify_tenant(
            pool, settings.tenant, keys_for(settings).public_keys(), **kwargs
        )
    finally:
        await pool.close()


async def sql(settings: Settings, statement: str, *args: Any) -> None:
    conn = await pg.connect(settings.postgres_dsn.get())
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


def now() -> datetime:
    return datetime.now(UTC)
