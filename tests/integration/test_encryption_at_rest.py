"""Encryption at rest on the real servers: sessions recorded through the SDK, Kafka, the
persist worker and the segmenter, with ``encrypt_at_rest`` on. A ``pg_dump`` holds none of
the recorded byte sequences; replay is byte-exact; key rotation (KEK and data key) keeps old
sessions readable; shredding one tenant makes its recordings unreadable everywhere (replay,
export, the API) while another tenant's are untouched, and ``verify`` says "shredded"."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deploy.servers import pg_bin
from ingest.sdk import SessionRecorder
from schemas import SessionInfo
from sessionvault.settings import Settings
from storage import pg
from storage.reader import iter_frames
from tests.integration.api_support import make_token, serve
from tests.integration.evidence_support import sign, verify
from tests.integration.persist_helpers import fetch_all, run_until_drained

pytestmark = pytest.mark.timeout(400)

EXE = Path(sys.executable).parent / "sessionvault"


def _record(settings: Settings, out: bytes, typed: bytes) -> str:
    rec = SessionRecorder(settings, SessionInfo("2026-11-21T10:00:00Z", 80, 24, user="alice"))
    rec.output(b"$ ")
    rec.input(typed)
    rec.output(typed.replace(b"\r", b"\r\n") + out)
    assert rec.close(0, flush_timeout_s=30)
    return rec.sid


async def _raw(settings: Settings, tenant: str, sid: str) -> bytes:
    pool = await pg.create_pool(settings.postgres_dsn.get(), min_size=1, max_size=1)
    try:
        return b"".join([f.data async for f in iter_frames(pool, tenant, sid)])
    finally:
        await pool.close()


def _dump(settings: Settings) -> bytes:
    done = subprocess.run(
        [str(pg_bin("pg_dump")), "--data-only", settings.postgres_dsn.get()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def _present(dump: bytes, secret: bytes) -> bool:
    """``secret`` in the dump as text, or as the hex of a bytea column."""
    return secret in dump or secret.hex().encode() in dump.lower()


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], env=env, capture_output=True, text=True, timeout=120)


def test_encrypted_recordings_leave_no_plaintext_in_pg_dump_and_replay_byte_exact(
    settings: Settings,
) -> None:
    s = dataclasses.replace(settings, encrypt_at_rest=True)
    # Random so no compression or coincidence can hide or fake them; invalid UTF-8 included.
    out_secret = b"OUT-" + secrets.token_hex(16).encode() + b"\xff\xfe\x00"
    typed_secret = b"echo TYPED-" + secrets.token_hex(12).encode()
    sid = _record(s, out_secret * 40 + b"\r\n", typed_secret + b"\r")
    asyncio.run(run_until_drained(s, [s.topic_chunks]))
    raw = asyncio.run(_raw(s, s.tenant, sid))
    assert out_secret * 40 in raw  # replay gives the bytes back, exactly
    dump = _dump(s)
    assert b"COPY public.chunks" in dump
    for secret in (out_secret, out_secret[:20], typed_secret, typed_secret[5:]):
        assert not _present(dump, secret), secret
    rows = asyncio.run(
        fetch_all(s.postgres_dsn.get(), "SELECT count(*) AS n, min(key_id) AS k FROM chunks")
    )
    assert rows[0]["k"] == 1  # every chunk sealed with the tenant's data key 1
    # The same recording without encryption: the dump does hold it (the check can fail).
    plain = dataclasses.replace(s, encrypt_at_rest=False)
    _record(plain, out_secret + b"\r\n", b"ls\r")
    asyncio.run(run_until_drained(plain, [s.topic_chunks]))
    assert _present(_dump(s), out_secret)


def test_rotation_keeps_old_sessions_readable_and_shredding_one_tenant_spares_the_other(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    a = dataclasses.replace(settings, encrypt_at_rest=True)
    b = dataclasses.replace(a, tenant=f"{settings.tenant}-b")
    first = _record(a, b"first session of a\r\n", b"ls\r")
    theirs = _record(b, b"tenant b's session\r\n", b"pwd\r")
    asyncio.run(run_until_drained(a, [a.topic_chunks]))
    # Rotate the key-encryption key and re-wrap; rotate A's data key.
    rotated = _run(["keys", "rotate", "--kek"], sv_env)
    assert rotated.returncode == 0, rotated.stderr
    rewrapped = _run(["keys", "rewrap"], sv_env)
    assert "re-wrapped 2 data keys" in rewrapped.stdout, rewrapped.stderr  # A's and B's
    assert _run(["keys", "rotate-data"], sv_env).returncode == 0
    second = _record(a, b"second session of a\r\n", b"id\r")
    asyncio.run(run_until_drained(a, [a.topic_chunks]))
    keys = asyncio.run(
        fetch_all(
            a.postgres_dsn.get(),
            "SELECT c.sid, c.key_id, k.kek_id FROM chunks c JOIN tenant_data_keys k"
            " ON k.tenant = c.tenant AND k.key_id = c.key_id GROUP BY 1, 2, 3",
        )
    )
    by_sid = {r["sid"]: r["key_id"] for r in keys}
    assert by_sid[first] == 1
    assert by_sid[second] == 2
    assert len({r["kek_id"] for r in keys}) == 1  # all wrapped by the new KEK now
    assert b"first session of a" in asyncio.run(_raw(a, a.tenant, first))
    assert b"second session of a" in asyncio.run(_raw(a, a.tenant, second))
    asyncio.run(sign(a))

    done = _run(["keys", "shred", "--reason", "GDPR erasure request 42", "--yes"], sv_env)
    assert done.returncode == 0, done.stderr
    assert "data keys [1, 2] destroyed" in done.stdout
    for sid in (first, second):
        gone = _run(["export", sid, "--format", "raw"], sv_env)
        assert gone.returncode != 0
        assert "crypto-shredded" in gone.stderr
        assert "Traceback" not in gone.stderr
    env_b = {**sv_env, "SESSIONVAULT_TENANT": b.tenant}
    kept = _run(["export", theirs, "--format", "raw"], env_b)
    assert kept.returncode == 0, kept.stderr
    assert "tenant b's session" in kept.stdout
    token = make_token(a, scopes=("read",))
    with serve(a) as base:
        r = httpx.get(
            f"{base}/v1/sessions/{first}/export",
            params={"format": "raw"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert r.status_code == 410
        assert "crypto-shredded" in r.json()["detail"]
    report = asyncio.run(verify(a))
    assert report.ok, [f.message for f in report.findings if f.fault]
    shredded = {f.ref for f in report.findings if f.kind == "shredded"}
    assert shredded == {first, second}
