"""Evidence in PostgreSQL: the ledger, signed checkpoints, session manifests and tombstones.

Invariants (docs/evidence.md):

* **Every stored record is in the ledger, in its own transaction.** The persist worker adds
  a :class:`Ledger` of what its transaction inserted (chunks) or changed (events) before it
  commits, so a record is never stored without its ledger entry, nor the other way round.
* **A checkpoint never skips a record.** :func:`checkpoint_tenant` takes the tenant's pending
  ledger rows (only committed ones are visible; one that commits later is pending for the next
  checkpoint) under a per-tenant advisory lock, signs the Merkle root over their entries, and
  deletes exactly those rows, in one transaction (the checkpoint now holds their entries).
* Checkpoints of a tenant are numbered from 1 without gaps and each names the SHA-256 of the
  previous envelope (``prev``), so a deleted or altered checkpoint breaks the chain.
* Tombstones are signed when written, by whoever deletes (retention, shredding), and enter
  the ledger like any record, so removing a tombstone is itself detected.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

import orjson

from schemas.evidence import (
    EVIDENCE_VERSION,
    Entry,
    envelope_sha256,
    leaf_bytes,
    leaf_hash,
    merkle_root,
)
from storage.keyring import KeyProvider, sign_body
from storage.pg import translate

# An asyncpg Pool or Connection (asyncpg ships no type information).
Executor: TypeAlias = Any

#: The ``prev`` of a tenant's first checkpoint.
GENESIS = "0" * 64

#: Events that carry their own signature and are not ledgered: a checkpoint's copy as an
#: audit event would otherwise need a checkpoint of its own, forever.
SELF_SIGNED_EVENTS = frozenset({"evidence.checkpoint"})

# How many ledger rows one checkpoint takes at most (a backlog is covered by several).
_MAX_LEDGER_ROWS = 5_000


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass
class Ledger:
    """What one transaction stored, by tenant (entries without the tenant)."""

    entries: dict[str, list[Entry]] = field(default_factory=dict)

    def add(self, tenant: str, entry: Entry) -> None:
        self.entries.setdefault(tenant, []).append(entry)

    async def write(self, conn: Any) -> None:
        """Insert one ledger row per tenant, inside the caller's transaction."""
        if not self.entries:
            return
        tenants = sorted(self.entries)
        await conn.execute(
            "INSERT INTO ledger (tenant, entries)"
            " SELECT * FROM unnest($1::text[], $2::text[]::jsonb[])",
            tenants,
            [orjson.dumps(self.entries[t]).decode() for t in tenants],
        )


async def pending_tenants(db: Executor) -> list[str]:
    """Tenants with ledger rows no checkpoint covers yet."""
    try:
        rows = await db.fetch("SELECT DISTINCT tenant FROM ledger")
    except Exception as exc:
        raise translate(exc, "cannot read the evidence ledger") from exc
    return sorted(r["tenant"] for r in rows)


@dataclass(frozen=True)
class CheckpointRecord:
    """A stored checkpoint: its signed envelope and the entries its root covers."""

    tenant: str
    n: int
    envelope: dict[str, Any]
    leaves: list[Entry]

    @property
    def body(self) -> dict[str, Any]:
        return dict(self.envelope["body"])


def tree_leaves(tenant: str, entries: Sequence[Entry]) -> list[bytes]:
    """The Merkle leaf hashes of ``entries`` (in order)."""
    return [leaf_hash(leaf_bytes(tenant, e)) for e in entries]


async def checkpoint_tenant(
    pool: Executor, keys: KeyProvider, tenant: str, *, now: datetime | None = None
) -> CheckpointRecord | None:
    """Sign a checkpoint over ``tenant``'s pending ledger rows (None: nothing pending)."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(7413013, hashtext($1))", f"checkpoint:{tenant}"
            )
            rows = await conn.fetch(
                "SELECT id, at, entries::text AS entries FROM ledger"
                " WHERE tenant = $1 ORDER BY id LIMIT $2",
                tenant,
                _MAX_LEDGER_ROWS,
            )
            if not rows:
                return None
            prev = await conn.fetchrow(
                "SELECT n, envelope::text AS envelope FROM checkpoints WHERE tenant = $1"
                " ORDER BY n DESC LIMIT 1",
                tenant,
            )
            n = 1 if prev is None else prev["n"] + 1
            entries: list[Entry] = [tuple(e) for r in rows for e in orjson.loads(r["entries"])]
            at = now or datetime.now(UTC)
            body = {
                "v": EVIDENCE_VERSION,
                "type": "checkpoint",
                "tenant": tenant,
                "n": n,
                "prev": (
                    GENESIS if prev is None else envelope_sha256(orjson.loads(prev["envelope"]))
                ),
                "root": merkle_root(tree_leaves(tenant, entries)).hex(),
                "size": len(entries),
                "first_at": _iso(rows[0]["at"]),
                "last_at": _iso(rows[-1]["at"]),
                "at": _iso(at),
            }
            envelope = sign_body(keys, body)
            await conn.execute(
                "INSERT INTO checkpoints (tenant, n, at, envelope, leaves)"
                " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)",
                tenant,
                n,
                at,
                orjson.dumps(envelope).decode(),
                orjson.dumps(entries).decode(),
            )
            # The checkpoint's leaves now hold these entries: the rows go (the ledger holds
            # only what no checkpoint covers yet, so it stays small).
            await conn.execute(
                "DELETE FROM ledger WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
    except Exception as exc:
        raise translate(exc, f"cannot write a checkpoint for tenant {tenant}") from exc
    return CheckpointRecord(tenant, n, envelope, entries)


def _checkpoint(row: Any) -> CheckpointRecord:
    return CheckpointRecord(
        row["tenant"],
        row["n"],
        orjson.loads(row["envelope"]),
        [tuple(e) for e in orjson.loads(row["leaves"])],
    )


async def _checkpoints(db: Executor, where: str, *args: Any) -> list[CheckpointRecord]:
    try:
        rows = await db.fetch(
            "SELECT tenant, n, envelope::text AS envelope, leaves::text AS leaves"
            f" FROM checkpoints WHERE {where}",
            *args,
        )
    except Exception as exc:
        raise translate(exc, "cannot read checkpoints") from exc
    return [_checkpoint(r) for r in rows]


async def load_checkpoints(db: Executor, tenant: str) -> list[CheckpointRecord]:
    """Every checkpoint of ``tenant``, by number."""
    return await _checkpoints(db, "tenant = $1 ORDER BY n", tenant)


async def checkpoint_holding(db: Executor, tenant: str, entry: Entry) -> CheckpointRecord | None:
    """The newest checkpoint whose leaves include ``entry``."""
    found = await _checkpoints(
        db,
        "tenant = $1 AND leaves @> $2::jsonb ORDER BY n DESC LIMIT 1",
        tenant,
        orjson.dumps([list(entry)]).decode(),
    )
    return found[0] if found else None


async def pending_entries(db: Executor, tenant: str) -> list[Entry]:
    """Ledger entries of ``tenant`` no checkpoint covers yet."""
    try:
        rows = await db.fetch(
            "SELECT entries::text AS entries FROM ledger WHERE tenant = $1 ORDER BY id",
            tenant,
        )
    except Exception as exc:
        raise translate(exc, "cannot read the evidence ledger") from exc
    return [tuple(e) for r in rows for e in orjson.loads(r["entries"])]


async def unemitted_checkpoints(db: Executor, limit: int = 100) -> list[CheckpointRecord]:
    """Checkpoints not yet sent out as audit events (oldest first)."""
    rows = await db.fetch(
        "SELECT tenant, n, envelope::text AS envelope, '[]' AS leaves FROM checkpoints"
        " WHERE NOT emitted ORDER BY at LIMIT $1",
        limit,
    )
    return [_checkpoint(r) for r in rows]


async def mark_checkpoints_emitted(db: Executor, keys: Sequence[tuple[str, int]]) -> None:
    await db.execute(
        "UPDATE checkpoints c SET emitted = true FROM unnest($1::text[], $2::bigint[]) AS k(t, n)"
        " WHERE c.tenant = k.t AND c.n = k.n",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )


# -- session manifests --------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestInput:
    """What a manifest is made of, read from the store (see :func:`manifest_inputs`)."""

    session: Mapping[str, Any]
    stream_bytes: dict[str, int]
    chunks: int
    events: list[Entry]  # ("event", uid, time_us, sid, sha) by (time_us, uid)


async def manifests_due(
    db: Executor, delay_ms: int, limit: int = 100, *, changed_since: datetime | None = None
) -> list[tuple[str, str]]:
    """(tenant, sid) of ended sessions (closed or abandoned) unchanged for ``delay_ms`` whose
    last chunk no manifest covers yet; with ``changed_since``, only sessions updated since
    then (the evidence worker's watermark: without it every ended session is looked at)."""
    try:
        rows = await db.fetch(
            "SELECT s.tenant, s.sid FROM sessions s"
            " WHERE s.status IN ('closed', 'abandoned')"
            " AND s.updated_at < now() - $1 * interval '1 millisecond'"
            " AND ($3::timestamptz IS NULL OR s.updated_at >= $3)"
            " AND NOT EXISTS (SELECT 1 FROM session_manifests m WHERE m.tenant = s.tenant"
            "   AND m.sid = s.sid AND m.envelope->'body'->>'final_hash' = s.last_hash)"
            " ORDER BY s.updated_at LIMIT $2",
            delay_ms,
            limit,
            changed_since,
        )
    except Exception as exc:
        raise translate(exc, "cannot find sessions due a manifest") from exc
    return [(r["tenant"], r["sid"]) for r in rows]


async def manifest_inputs(db: Executor, tenant: str, sid: str) -> ManifestInput | None:
    """``db`` is a pool. The session row, bytes per stream (from the chunks' frame indexes,
    no payload read), and its events' leaves."""
    from storage.codec import frame_index_totals, load_index

    try:
        session = await db.fetchrow(
            "SELECT * FROM sessions WHERE tenant = $1 AND sid = $2", tenant, sid
        )
        if session is None:
            return None
        totals: dict[str, int] = {}
        chunks = 0
        async with db.acquire() as conn, conn.transaction():
            async for r in conn.cursor(
                "SELECT frames FROM chunks WHERE sid = $1 AND tenant = $2 ORDER BY seq",
                sid,
                tenant,
            ):
                chunks += 1
                for stream, n in frame_index_totals(load_index(bytes(r["frames"]))).items():
                    totals[stream] = totals.get(stream, 0) + n
        events = await db.fetch(
            "SELECT uid, time_us, sid, encode(sha256(convert_to(body::text, 'UTF8')), 'hex')"
            " AS sha FROM events WHERE tenant = $1 AND sid = $2 ORDER BY time_us, uid",
            tenant,
            sid,
        )
    except Exception as exc:
        raise translate(exc, f"cannot read session {sid} for its manifest") from exc
    return ManifestInput(
        dict(session),
        totals,
        chunks,
        [("event", e["uid"], e["time_us"], e["sid"], e["sha"]) for e in events],
    )


def manifest_body(m: ManifestInput, *, now: datetime) -> dict[str, Any]:
    """The body of a session's manifest (pure; signed by the caller)."""
    s = m.session
    tenant = str(s["tenant"])
    return {
        "v": EVIDENCE_VERSION,
        "type": "session.manifest",
        "tenant": tenant,
        "sid": s["sid"],
        "kind": s["kind"],
        "status": s["status"],
        "user": s["user_name"],
        "login": s["login"],
        "server_id": s["server_id"],
        "cluster_name": s["cluster_name"],
        "kubernetes_cluster": s["kubernetes_cluster"],
        "started_at": _iso(s["started_at"]),
        "ended_at": _iso(s["ended_at"]) if s["ended_at"] is not None else None,
        "chunks": m.chunks,
        "last_seq": s["last_seq"],
        "final_hash": s["last_hash"],
        "bytes": dict(sorted(m.stream_bytes.items())),
        "events": len(m.events),
        "events_root": merkle_root(tree_leaves(tenant, m.events)).hex(),
        "signed_at": _iso(now),
    }


async def store_manifest(
    pool: Executor, keys: KeyProvider, m: ManifestInput, *, now: datetime | None = None
) -> dict[str, Any]:
    """Sign and store a manifest, and ledger it; returns the envelope."""
    envelope = sign_body(keys, manifest_body(m, now=now or datetime.now(UTC)))
    body = envelope["body"]
    ledger = Ledger()
    ledger.add(body["tenant"], ("manifest", body["sid"], envelope_sha256(envelope)))
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO session_manifests (tenant, sid, version, envelope, events)"
                " SELECT $1, $2, coalesce(max(version), 0) + 1, $3::jsonb, $4::jsonb"
                " FROM session_manifests WHERE tenant = $1 AND sid = $2",
                body["tenant"],
                body["sid"],
                orjson.dumps(envelope).decode(),
                orjson.dumps(m.events).decode(),
            )
            await ledger.write(conn)
    except Exception as exc:
        raise translate(exc, f"cannot store the manifest of {body['sid']}") from exc
    return envelope


async def event_texts(db: Executor, tenant: str, keys: Sequence[Entry]) -> list[str]:
    """PostgreSQL's text of the bodies of the events ``keys`` (``("event", uid, time_us, ...)``
    entries) names, in that order; an event no longer stored is left out."""
    try:
        rows = await db.fetch(
            "SELECT k.i, e.body::text AS body FROM events e JOIN unnest($2::text[],"
            " $3::bigint[]) WITH ORDINALITY AS k(uid, time_us, i)"
            " ON e.uid = k.uid AND e.time_us = k.time_us WHERE e.tenant = $1 ORDER BY k.i",
            tenant,
            [k[1] for k in keys],
            [k[2] for k in keys],
        )
    except Exception as exc:
        raise translate(exc, "cannot read events") from exc
    return [r["body"] for r in rows]


@dataclass(frozen=True)
class StoredManifest:
    envelope: dict[str, Any]
    events: list[Entry]
    emitted: bool


async def latest_manifest(db: Executor, tenant: str, sid: str) -> StoredManifest | None:
    try:
        row = await db.fetchrow(
            "SELECT envelope::text AS envelope, events::text AS events, emitted"
            " FROM session_manifests WHERE tenant = $1 AND sid = $2"
            " ORDER BY version DESC LIMIT 1",
            tenant,
            sid,
        )
    except Exception as exc:
        raise translate(exc, f"cannot read the manifest of {sid}") from exc
    if row is None:
        return None
    return StoredManifest(
        orjson.loads(row["envelope"]),
        [tuple(e) for e in orjson.loads(row["events"])],
        row["emitted"],
    )


async def stored_manifests(db: Executor, tenant: str) -> dict[str, list[str]]:
    """sid -> the hashes of its stored manifest envelopes."""
    rows = await db.fetch(
        "SELECT sid, envelope::text AS envelope FROM session_manifests WHERE tenant = $1",
        tenant,
    )
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["sid"], []).append(envelope_sha256(orjson.loads(r["envelope"])))
    return out


async def unemitted_manifests(db: Executor, limit: int = 100) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT envelope::text AS envelope FROM session_manifests WHERE NOT emitted"
        " ORDER BY at LIMIT $1",
        limit,
    )
    return [orjson.loads(r["envelope"]) for r in rows]


async def mark_manifests_emitted(db: Executor, envelopes: Sequence[Mapping[str, Any]]) -> None:
    await db.execute(
        "UPDATE session_manifests m SET emitted = true"
        " FROM unnest($1::text[], $2::text[], $3::text[]) AS k(t, s, h)"
        " WHERE m.tenant = k.t AND m.sid = k.s AND m.envelope->'body'->>'final_hash' = k.h",
        [e["body"]["tenant"] for e in envelopes],
        [e["body"]["sid"] for e in envelopes],
        [e["body"]["final_hash"] for e in envelopes],
    )


# -- tombstones ---------------------------------------------------------------------------------


def tombstone_body(
    tenant: str, what: str, *, actor: str, reason: str, now: datetime, **fields: Any
) -> dict[str, Any]:
    """A tombstone's body (pure): ``what`` is ``session`` (``sid``), ``events`` (``before_us``,
    ``except_sids``), ``shred`` (``key_ids``) or ``hold_release`` (``sid``)."""
    return {
        "v": EVIDENCE_VERSION,
        "type": "tombstone",
        "tenant": tenant,
        "id": uuid.uuid4().hex,
        "what": what,
        "actor": actor,
        "reason": reason,
        "at": _iso(now),
        **fields,
    }


async def add_tombstones(
    conn: Any, keys: KeyProvider, bodies: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Sign, store and ledger tombstones, inside the caller's transaction (the deletion's own,
    so a deletion never commits without its tombstone)."""
    envelopes = [sign_body(keys, b) for b in bodies]
    if not envelopes:
        return []
    ledger = Ledger()
    for e in envelopes:
        ledger.add(e["body"]["tenant"], ("tombstone", e["body"]["id"], envelope_sha256(e)))
    await conn.execute(
        "INSERT INTO tombstones (tenant, id, envelope)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[]::jsonb[])",
        [e["body"]["tenant"] for e in envelopes],
        [e["body"]["id"] for e in envelopes],
        [orjson.dumps(e).decode() for e in envelopes],
    )
    await ledger.write(conn)
    return envelopes


async def load_tombstones(db: Executor, tenant: str) -> list[dict[str, Any]]:
    try:
        rows = await db.fetch(
            "SELECT envelope::text AS envelope FROM tombstones WHERE tenant = $1 ORDER BY at",
            tenant,
        )
    except Exception as exc:
        raise translate(exc, "cannot read tombstones") from exc
    return [orjson.loads(r["envelope"]) for r in rows]


# -- what the store holds, for verify ----------------------------------------------------------


@dataclass(frozen=True)
class StoreView:
    """What ``tenant`` holds now, in the terms of the leaves."""

    chunks: dict[tuple[str, int], str]  # (sid, seq) -> stored hash
    sessions: set[str]
    events: dict[tuple[str, int], tuple[str, str, str]]  # (uid, time_us) -> (sha, type, sid)
    manifests: dict[str, list[str]]
    tombstones: dict[str, str]  # id -> envelope hash


async def store_view(db: Executor, tenant: str, *, since_us: int | None) -> StoreView:
    """Read the hashes of everything ``tenant`` holds (events from ``since_us`` on)."""
    try:
        chunks = await db.fetch("SELECT sid, seq, hash FROM chunks WHERE tenant = $1", tenant)
        sessions = await db.fetch("SELECT sid FROM sessions WHERE tenant = $1", tenant)
        events = await db.fetch(
            "SELECT uid, time_us, event, coalesce(sid, '') AS sid,"
            " encode(sha256(convert_to(body::text, 'UTF8')), 'hex') AS sha"
            " FROM events WHERE tenant = $1 AND time >= $2",
            tenant,
            datetime.fromtimestamp((since_us or 0) / 1e6, UTC),
        )
        tombstones = await load_tombstones(db, tenant)
        manifests = await stored_manifests(db, tenant)
    except Exception as exc:
        raise translate(exc, f"cannot read what tenant {tenant} holds") from exc
    return StoreView(
        chunks={(r["sid"], r["seq"]): r["hash"] for r in chunks},
        sessions={r["sid"] for r in sessions},
        events={(r["uid"], r["time_us"]): (r["sha"], r["event"], r["sid"]) for r in events},
        manifests=manifests,
        tombstones={t["body"]["id"]: envelope_sha256(t) for t in tombstones},
    )


__all__ = [
    "GENESIS",
    "SELF_SIGNED_EVENTS",
    "CheckpointRecord",
    "Ledger",
    "ManifestInput",
    "StoreView",
    "StoredManifest",
    "add_tombstones",
    "checkpoint_holding",
    "checkpoint_tenant",
    "event_texts",
    "latest_manifest",
    "load_checkpoints",
    "load_tombstones",
    "manifest_body",
    "manifest_inputs",
    "manifests_due",
    "pending_entries",
    "pending_tenants",
    "store_manifest",
    "store_view",
    "tombstone_body",
    "tree_leaves",
]
