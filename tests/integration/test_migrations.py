"""Migrations on real PostgreSQL: repairs of databases made by earlier versions."""

from __future__ import annotations

import asyncio

import pytest

from storage import pg

pytestmark = pytest.mark.integration

_PK = (
    "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
    " WHERE conrelid = $1::regclass AND contype = 'p'"
)


async def _old_key_then_migrate(dsn: str) -> tuple[list[str], str, int]:
    conn = await pg.connect(dsn)
    try:
        # What a database created before the (tenant, uid, time) key looked like.
        await conn.execute("ALTER TABLE events DROP CONSTRAINT events_pkey")
        await conn.execute("ALTER TABLE events ADD PRIMARY KEY (uid, time)")
        await conn.execute("DELETE FROM sv_migrations WHERE version = 7")
        applied = await pg.migrate(dsn)
        key = await conn.fetchval(_PK, "events")
        # The same uid and time in two tenants: two rows, the persist worker's ON CONFLICT works.
        for tenant in ("a", "b", "a"):
            await conn.execute(
                "INSERT INTO events (tenant, uid, time, event, code, body)"
                " VALUES ($1, 'u1', '2026-11-21T10:00:00Z', 'x', 'y', '{}')"
                " ON CONFLICT (tenant, uid, time) DO NOTHING",
                tenant,
            )
        rows = await conn.fetchval("SELECT count(*) FROM events WHERE uid = 'u1'")
        return applied, str(key), int(rows)
    finally:
        await conn.close()


def test_a_database_with_the_early_events_key_is_brought_to_the_tenant_scoped_key(
    pg_dsn: str,
) -> None:
    applied, key, rows = asyncio.run(_old_key_then_migrate(pg_dsn))
    assert applied == ["007_events_key_repair.sql"]
    assert key == 'PRIMARY KEY (tenant, uid, "time")'
    assert rows == 2
