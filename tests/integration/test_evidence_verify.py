"""``verify --since`` against signed checkpoints, on the real servers: every kind of tampering
done directly in PostgreSQL is named, a deletion by policy is told apart from tampering, and
the checkpoints themselves are checked (chain, signature, outside copy)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
import pytest

from ingest.evidence import read_checkpoint_copies
from schemas import GENESIS_HASH, Frame, Stream, chain_hash
from schemas.evidence import verify_envelope
from schemas.frameindex import pack_frames
from sessionvault.settings import Settings
from storage import pg
from storage.evidence_store import load_tombstones
from storage.retention import apply_retention, release_hold, set_hold, set_policy
from tests.integration.evidence_support import keys_for, sign, sql, store, verify
from tests.integration.persist_helpers import fetch_all, run_until_drained

pytestmark = pytest.mark.timeout(300)


def _faults(report: object) -> list[str]:
    return [f"{f.kind}: {f.message}" for f in report.findings if f.fault]  # type: ignore[attr-defined]


def test_an_untouched_store_verifies_and_every_record_is_checkpointed(settings: Settings) -> None:
    async def main() -> None:
        await store(settings, 3)
        await sign(settings)
        report = await verify(settings)
        assert report.ok, _faults(report)
        assert report.checkpoints == 1
        assert report.pending == 0
        assert report.sessions_checked == 3
        rows = await fetch_all(
            settings.postgres_dsn.get(), "SELECT count(*) AS n FROM session_manifests"
        )
        assert rows[0]["n"] == 3

    asyncio.run(main())


def test_verify_names_deleted_tail_chunks_whole_sessions_events_altered_bytes_and_forgeries(
    settings: Settings,
) -> None:
    async def main() -> None:
        sessions = await store(settings, 5)
        await sign(settings)
        t = settings.tenant
        # 1. the newest two chunks of ev-0
        await sql(settings, "DELETE FROM chunks WHERE sid = 'ev-0' AND seq >= 4")
        # 2. the whole of ev-1 (its row, chunks, manifest and events)
        for table in ("chunks", "session_manifests", "events", "sessions"):
            await sql(settings, f"DELETE FROM {table} WHERE sid = 'ev-1'")
        # 3. one audit event
        await sql(settings, "DELETE FROM events WHERE uid = 'ev-2-e-1'")
        # 4. one byte of ev-3's chunk 2, rewritten as a raw payload (stored hash unchanged)
        raw = b"".join(f.data for f in sessions[3].chunks[2].frames)
        flipped = bytes([raw[0] ^ 0x01]) + raw[1:]
        await sql(
            settings,
            "UPDATE chunks SET codec = 0, dict_id = NULL, payload = $1"
            " WHERE sid = 'ev-3' AND seq = 2",
            flipped,
        )
        # 5. an event's body altered
        await sql(
            settings,
            "UPDATE events SET body = jsonb_set(body, '{command}', '\"rm -rf /\"')"
            " WHERE uid = 'ev-4-e-0'",
        )
        # 6. a forged session with a valid hash chain, inserted directly
        frames = (Frame(10, Stream.OUTPUT, b"nothing to see\r\n"),)
        h0 = chain_hash(GENESIS_HASH, "forged", 0, ())
        h1 = chain_hash(h0, "forged", 1, frames)
        await sql(
            settings,
            "INSERT INTO sessions (sid, tenant, started_at, cols, rows, last_hash, last_seq,"
            " chunks, status) VALUES ('forged', $1, now(), 80, 24, $2, 1, 2, 'closed')",
            t,
            h1,
        )
        for seq, prev, h, fr in ((0, GENESIS_HASH, h0, ()), (1, h0, h1, frames)):
            payload = b"".join(f.data for f in fr)
            await sql(
                settings,
                "INSERT INTO chunks (sid, seq, tenant, first_offset_ms, last_offset_ms, frames,"
                " codec, raw_len, payload, prev_hash, hash)"
                " VALUES ('forged', $1, $2, 0, 10, $3, 0, $4, $5, $6, $7)",
                seq,
                t,
                pack_frames(fr),
                len(payload),
                payload,
                prev,
                h,
            )
        report = await verify(settings)
        faults = _faults(report)
        text = "\n".join(faults)
        assert not report.ok
        assert "session ev-0: chunks 4-5 (its newest) were deleted" in text, text
        assert "session ev-1: the whole session (6 chunks" in text, text
        assert any(f.startswith("deleted: event ev-2-e-1 ") for f in faults), text
        assert any(f.startswith("altered: session ev-3:") and "seq 2" in f for f in faults), text
        assert "altered: event ev-4-e-0: body differs from checkpoint 1" in text, text
        assert "session forged (2 chunks) was added outside the pipeline" in text, text
        # Nothing untouched is accused.
        assert not any("ev-2:" in f or "ev-4:" in f for f in faults), text

    asyncio.run(main())


def test_retention_leaves_signed_tombstones_so_verify_tells_policy_from_tampering(
    settings: Settings,
) -> None:
    async def main() -> None:
        await store(settings, 2)
        await sign(settings)
        keys = keys_for(settings)
        pool = await pg.create_pool(settings.postgres_dsn.get(), min_size=1, max_size=2)
        try:
            await set_policy(pool, settings.tenant, events_days=1, sessions_days=1, actor="dpo")
            report = await apply_retention(
                pool,
                now=datetime(2026, 12, 30, tzinfo=UTC),
                tenants=[settings.tenant],
                actor="dpo",
                keys=keys,
                drop_partitions=False,
            )
        finally:
            await pool.close()
        assert report.tenants[0].sessions == 2
        after = await verify(settings)
        assert after.ok, _faults(after)
        policy = [f.message for f in after.findings if f.kind == "policy"]
        assert any("session ev-0: deleted (retention: sessions_days=1" in m for m in policy)
        assert any(
            m.startswith("event ev-1-e-2: deleted (retention: events_days=1") for m in policy
        )
        # The tombstones are ledgered: the next checkpoint covers them, and deleting one
        # afterwards is itself named.
        await sign(settings)
        await sql(settings, "DELETE FROM tombstones WHERE envelope->'body'->>'sid' = 'ev-0'")
        again = await verify(settings)
        text = "\n".join(_faults(again))
        assert any(f.startswith("deleted: tombstone ") for f in _faults(again)), text
        assert "session ev-0: the whole session" in text, text
        # Releasing a legal hold is signed too (it is what lets retention delete a session).
        await store(settings, 1, seed=99)
        pool = await pg.create_pool(settings.postgres_dsn.get(), min_size=1, max_size=2)
        try:
            await set_hold(pool, settings.tenant, "ev-0", reason="case 7", actor="legal")
            await release_hold(
                pool, settings.tenant, "ev-0", reason="case closed", actor="legal", keys=keys
            )
            tombstones = await load_tombstones(pool, settings.tenant)
        finally:
            await pool.close()
        [release] = [t for t in tombstones if t["body"]["what"] == "hold_release"]
        assert release["body"]["sid"] == "ev-0"
        assert release["body"]["reason"] == "case closed"
        assert verify_envelope(release, keys.public_keys()) == keys.signing_kid

    asyncio.run(main())


def test_checkpoints_deleted_or_rewritten_in_the_database_are_named_against_the_outside_copy(
    settings: Settings, tmp_path: object
) -> None:
    import dataclasses
    from pathlib import Path

    outside = Path(str(tmp_path)) / "checkpoints"
    s = dataclasses.replace(settings, checkpoint_dir=str(outside))

    async def main() -> None:
        from ingest.evidence import EvidenceWorker

        await store(s, 1)
        worker = EvidenceWorker(s, keys=keys_for(s), emit=True)
        try:
            await worker.step(manifest_delay_ms=0)
            # The manifest and checkpoint went out as audit events: stored, then checkpoint 2.
            await run_until_drained(s, [s.topic_events], segments=False)
            await worker.step(manifest_delay_ms=0)
        finally:
            await worker.close()
        copies = read_checkpoint_copies(outside, s.tenant)
        assert sorted(copies) == [1, 2]
        events = await fetch_all(
            s.postgres_dsn.get(),
            "SELECT event, body FROM events WHERE event IN ('session.manifest',"
            " 'evidence.checkpoint') ORDER BY event",
        )
        assert [e["event"] for e in events] == ["evidence.checkpoint", "session.manifest"]
        assert orjson.loads(events[1]["body"])["manifest"]["body"]["sid"] == "ev-0"
        clean = await verify(s, external=copies)
        assert clean.ok, _faults(clean)
        # The newest checkpoint deleted from the database: the outside copy names it.
        await sql(s, "DELETE FROM checkpoints WHERE n = 2")
        gone = await verify(s, external=copies)
        assert "checkpoints 2 are in the outside copy but not in the database" in "\n".join(
            _faults(gone)
        )
        # A checkpoint's list of leaves rewritten: its signed root no longer matches.
        await sql(s, "UPDATE checkpoints SET leaves = leaves - 0 WHERE n = 1")
        bad = await verify(s)
        assert any("do not give its signed root" in f for f in _faults(bad)), _faults(bad)

    asyncio.run(main())
