"""Every replay or export of a stored recording is itself an audit event, persisted like any
other: API export and CLI export/play -> AuditEmitter -> Kafka -> persist worker -> ``events``.
Real uvicorn, real broker, real PostgreSQL."""

from __future__ import annotations

import asyncio
import getpass
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
from kafka.structs import TopicPartition

from ingest.topics import end_offsets
from ingest.view_audit import VIEW_CODE, VIEW_EVENT
from schemas.models import Frame, Stream
from sessionvault.settings import Settings
from storage import pg
from tests.integration.api_support import make_token, serve
from tests.integration.import_support import drain, fetch
from tests.integration.replay_support import write_session

SV = str(Path(sys.executable).parent / "sessionvault")
FRAMES = [
    Frame(0, Stream.OUTPUT, b"$ "),
    Frame(300, Stream.INPUT, b"id\r"),
    Frame(320, Stream.OUTPUT, b"uid=0(root)\r\n\xff\xfe"),
]
RAW = b"$ uid=0(root)\r\n\xff\xfe"


def store(settings: Settings, sid: str) -> None:
    async def main() -> None:
        conn = await pg.connect(settings.postgres_dsn.get())
        try:
            await write_session(conn, settings.tenant, sid, [FRAMES])
        finally:
            await conn.close()

    asyncio.run(main())


def sv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [SV, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=90
    )


def view_events(settings: Settings) -> list[dict[str, Any]]:
    rows = fetch(
        settings,
        "SELECT tenant, uid, event, code, sid, user_name, body FROM events WHERE event = $1"
        " ORDER BY time",
        VIEW_EVENT,
    )
    for r in rows:
        r["body"] = orjson.loads(str(r["body"]))
    return rows


def test_an_api_export_is_recorded_once_with_the_token_as_viewer(settings: Settings) -> None:
    store(settings, "s-viewed")
    token = make_token(settings, scopes=("read",))
    token_id = token.split("_")[1]
    with serve(settings) as base:
        r = httpx.get(
            f"{base}/v1/sessions/s-viewed/export",
            params={"format": "raw"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.content == RAW
        # A refused read (unknown session) is not a view and records nothing.
        miss = httpx.get(
            f"{base}/v1/sessions/s-nope/export",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert miss.status_code == 404
    # The server has shut down: its emitter delivered on close.
    drain(settings, [settings.topic_events])

    rows = view_events(settings)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["tenant"], row["sid"], row["code"]) == (settings.tenant, "s-viewed", VIEW_CODE)
    assert row["user_name"] == f"token:{token_id}"
    body = row["body"]
    assert body["access_via"] == "api"
    assert body["format"] == "raw"
    assert body["token_id"] == token_id
    assert body["session_user"] == "alice"
    assert body["addr.remote"] == "127.0.0.1"
    assert token not in orjson.dumps(body).decode()


def test_a_cli_export_and_a_cli_play_are_each_recorded_once_with_the_os_user(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    store(settings, "s-viewed")
    proc = sv(sv_env, "export", "s-viewed", "--format", "raw", "--start-at", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"uid=0(root)\r\n\xff\xfe"
    proc = sv(sv_env, "play", "s-viewed", "--speed", "100")
    assert proc.returncode == 0, proc.stderr
    drain(settings, [settings.topic_events])

    rows = view_events(settings)
    assert [(r["body"]["format"], r["body"]["access_via"]) for r in rows] == [
        ("raw", "cli"),
        ("play", "cli"),
    ]
    for r in rows:
        assert r["user_name"] == getpass.getuser()
        assert r["sid"] == "s-viewed"
        assert r["tenant"] == settings.tenant
    assert rows[0]["body"]["start_at_ms"] == 300


def test_a_cli_export_while_kafka_is_unreachable_still_works_and_spools_the_event(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    store(settings, "s-viewed")
    env = {**sv_env, "SESSIONVAULT_KAFKA_BOOTSTRAP": "127.0.0.1:9"}  # nothing listens there
    proc = sv(env, "export", "s-viewed", "--format", "raw")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == RAW
    assert b"spool" in proc.stderr  # the viewer is told the event waits in the spool
    assert view_events(settings) == []

    drained = sv(sv_env, "spool", "drain")
    assert drained.returncode == 0, drained.stderr
    drain(settings, [settings.topic_events])
    rows = view_events(settings)
    assert len(rows) == 1
    assert rows[0]["sid"] == "s-viewed"
    assert rows[0]["body"]["access_via"] == "cli"


def test_a_session_missing_from_the_tenant_is_not_recorded_as_viewed(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    proc = sv(sv_env, "export", "s-absent", "--format", "raw")
    assert proc.returncode == 1
    assert b"not found" in proc.stderr
    tps = [TopicPartition(settings.topic_events, p) for p in range(settings.topic_partitions)]
    assert set(end_offsets(settings.kafka_bootstrap, tps).values()) == {0}
    assert not list(settings.resolved_spool_dir.rglob("*.seg"))
