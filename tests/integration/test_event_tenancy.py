"""Event idempotency keys include the tenant: one tenant can never shadow another's event."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sessionvault.settings import Settings
from storage import pg
from storage.eventstore import insert_events
from storage.persist_logic import EventRow


def _row(tenant: str, event: str = "session.start") -> EventRow:
    t = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    body = f'{{"tenant": "{tenant}", "uid": "same-uid", "event": "{event}"}}'
    return EventRow(tenant, "same-uid", t, event, "T2000I", None, None, "alice", body)


def test_same_uid_and_time_in_two_tenants_are_two_events_and_redelivery_is_a_no_op(
    settings: Settings,
) -> None:
    async def run() -> list[str]:
        conn = await pg.connect(settings.postgres_dsn.get())
        try:
            assert await insert_events(conn, [_row("tenant-a")]) == 1
            assert await insert_events(conn, [_row("tenant-b")]) == 1
            assert await insert_events(conn, [_row("tenant-a"), _row("tenant-b")]) == 0
            kube = [_row("tenant-a", "kube.request"), _row("tenant-b", "kube.request")]
            kube = [
                EventRow(
                    r.tenant,
                    "kube-uid",
                    r.time,
                    r.event,
                    "T3009I",
                    None,
                    None,
                    "bob",
                    f'{{"tenant": "{r.tenant}", "uid": "kube-uid", "event": "kube.request"}}',
                )
                for r in kube
            ]
            assert await insert_events(conn, kube) == 2
            rows = await conn.fetch("SELECT tenant, uid FROM events ORDER BY tenant, uid")
        finally:
            await conn.close()
        return [f"{r['tenant']}/{r['uid']}" for r in rows]

    assert asyncio.run(run()) == [
        "tenant-a/kube-uid",
        "tenant-a/same-uid",
        "tenant-b/kube-uid",
        "tenant-b/same-uid",
    ]
