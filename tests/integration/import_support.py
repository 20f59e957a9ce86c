"""Helpers of the issue-3 integration tests (imports, kube webhook, API): run the CLI, drain
the persist worker, export a stored session, snapshot every table. Real servers only."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from replay.export import export_async
from sessionvault.settings import Settings
from storage import pg
from storage.reader import SessionRecord, get_session, iter_frames
from tests.integration.persist_helpers import run_until_drained

SESSIONVAULT = str(Path(sys.executable).parent / "sessionvault")


def cli(
    env: dict[str, str], *args: str, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run ``sessionvault ARGS`` with ``env``; raise with its stderr when it fails."""
    proc = subprocess.run(
        [SESSIONVAULT, *args], env=env, input=stdin, capture_output=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"sessionvault {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}"
        )
    return proc


def drain(settings: Settings, topics: Iterable[str] | None = None) -> None:
    """Run the real persist worker until it has committed everything on ``topics``."""
    wanted = list(topics or (settings.topic_chunks, settings.topic_events))
    asyncio.run(run_until_drained(settings, wanted))


async def _export(dsn: str, tenant: str, sid: str, fmt: str) -> tuple[SessionRecord, bytes]:
    pool = await pg.create_pool(dsn)
    try:
        session = await get_session(pool, tenant, sid)
        out = io.BytesIO()
        await export_async(iter_frames(pool, tenant, sid), session, fmt, out)
        return session, out.getvalue()
    finally:
        await pool.close()


def export(settings: Settings, sid: str, fmt: str = "raw") -> tuple[SessionRecord, bytes]:
    """The stored session row and its export in ``fmt`` (replay.export over storage.reader)."""
    return asyncio.run(_export(settings.postgres_dsn.get(), settings.tenant, sid, fmt))


async def _snapshot(dsn: str) -> dict[str, list[str]]:
    conn = await pg.connect(dsn)
    try:
        tables = [
            r["relname"]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
                " AND NOT c.relispartition ORDER BY 1"
            )
        ]
        out: dict[str, list[str]] = {}
        for t in tables:
            # Bookkeeping timestamps (now() at write time) are left out: they say when, not what.
            rows = await conn.fetch(
                f"SELECT (to_jsonb(t) - 'updated_at' - 'ingested_at')::text AS row FROM \"{t}\" t"
            )
            out[t] = sorted(r["row"] for r in rows)
        return out
    finally:
        await conn.close()


def dump_tables(settings: Settings) -> dict[str, list[str]]:
    """Every row of every table (partitions read through their parent) as JSON text, sorted;
    the bookkeeping columns ``updated_at`` and ``ingested_at`` are left out."""
    return asyncio.run(_snapshot(settings.postgres_dsn.get()))


async def _fetch(dsn: str, sql: str, *args: object) -> list[dict[str, object]]:
    conn = await pg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def fetch(settings: Settings, sql: str, *args: object) -> list[dict[str, object]]:
    return asyncio.run(_fetch(settings.postgres_dsn.get(), sql, *args))
