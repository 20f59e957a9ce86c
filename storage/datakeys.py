"""Encryption at rest: per-tenant data keys, sealed chunk payloads, crypto-shredding.

A chunk's payload is compressed first (storage/codec.py), then sealed with AES-256-GCM under
its tenant's active data key: ``nonce (12 bytes) || ciphertext+tag``, with the associated data
``sv-chunk\\0 tenant \\0 sid \\0 seq``, so a sealed payload moved to another chunk, session or
tenant does not open. ``chunks.key_id`` names the data key (NULL: stored in the clear).

Data keys are random 32 bytes, stored only wrapped by the key provider's key-encryption key
(:meth:`storage.keyring.KeyProvider.wrap`, associated data ``sv-dek\\0 tenant \\0 key_id``) in
``tenant_data_keys``. Invariants:

* **A chunk is sealed with a key that is live when it commits.** The persist transaction reads
  the active key ``FOR SHARE`` (:meth:`DataKeys.sealer`), so shredding (which updates that row)
  waits for it, and the next batch gets a fresh key instead of a destroyed one.
* **Rotating the KEK rewrites no data**: :func:`rewrap` unwraps and wraps each data key again.
  Rotating a tenant's data key (:func:`rotate_data_key`) affects only later chunks.
* **Shredding** (:func:`shred_tenant`) destroys every wrapped data key of the tenant: every
  recording sealed with them is unreadable everywhere (readers raise
  :class:`~sessionvault.errors.ShreddedError`), the text derived from them is deleted, and a
  signed tombstone records who did it and why.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sessionvault.errors import ConfigError, IntegrityError, ShreddedError
from sessionvault.settings import Settings
from storage.evidence_store import add_tombstones, tombstone_body
from storage.keyring import KeyProvider, load_keys
from storage.persist_logic import PreparedChunk
from storage.pg import translate

# -- sealing (pure) ---------------------------------------------------------------------------


def _aad(tenant: str, sid: str, seq: int) -> bytes:
    return b"sv-chunk\x00" + tenant.encode() + b"\x00" + sid.encode() + b"\x00" + str(seq).encode()


def seal(dek: bytes, tenant: str, sid: str, seq: int, data: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(dek).encrypt(nonce, data, _aad(tenant, sid, seq))


def unseal(dek: bytes, tenant: str, sid: str, seq: int, blob: bytes) -> bytes:
    try:
        return AESGCM(dek).decrypt(blob[:12], blob[12:], _aad(tenant, sid, seq))
    except InvalidTag as exc:
        raise IntegrityError(
            f"sid {sid} seq {seq}: sealed payload does not open (altered or moved)"
        ) from exc


def _dek_aad(tenant: str, key_id: int) -> bytes:
    return b"sv-dek\x00" + tenant.encode() + b"\x00" + str(key_id).encode()


# -- which provider this process uses ---------------------------------------------------------

_settings: Settings | None = None
_provider: KeyProvider | None = None


def configure(settings: Settings, provider: KeyProvider | None = None) -> None:
    """Name the key provider of this process (its settings' key file, loaded when first
    needed). Entry points call it: the API, the CLI, the workers."""
    global _settings, _provider
    _settings, _provider = settings, provider


def provider() -> KeyProvider:
    global _provider
    if _provider is None:
        if _settings is None:
            raise ConfigError("encrypted recordings need the key file: no settings configured")
        _provider = load_keys(_settings)
    return _provider


# -- data keys in PostgreSQL ------------------------------------------------------------------


@dataclass
class DataKeys:
    """Unwrapped data keys of this process, by (tenant, key_id)."""

    cache: dict[tuple[str, int], bytes]

    def __init__(self) -> None:
        self.cache = {}

    async def key(self, db: Any, tenant: str, key_id: int) -> bytes:
        """The data key ``key_id`` of ``tenant``; ShreddedError when it was destroyed."""
        dek = self.cache.get((tenant, key_id))
        if dek is not None:
            return dek
        try:
            row = await db.fetchrow(
                "SELECT kek_id, wrapped, destroyed_at FROM tenant_data_keys"
                " WHERE tenant = $1 AND key_id = $2",
                tenant,
                key_id,
            )
        except Exception as exc:
            raise translate(exc, f"cannot read data key {key_id} of {tenant}") from exc
        if row is None or row["wrapped"] is None:
            when = "" if row is None else f" on {row['destroyed_at']:%Y-%m-%d %H:%M} UTC"
            raise ShreddedError(
                f"the recordings of tenant {tenant} sealed with data key {key_id} were"
                f" crypto-shredded{when}: they cannot be read"
            )
        dek = provider().unwrap(row["kek_id"], bytes(row["wrapped"]), _dek_aad(tenant, key_id))
        self.cache[(tenant, key_id)] = dek
        return dek

    async def open_payload(
        self, db: Any, tenant: str, sid: str, seq: int, key_id: int | None, blob: bytes
    ) -> bytes:
        """A stored payload as compressed: unsealed when ``key_id`` is set."""
        if key_id is None:
            return blob
        return unseal(await self.key(db, tenant, key_id), tenant, sid, seq, blob)

    async def sealer(self, conn: Any, tenant: str) -> tuple[int, bytes]:
        """The active data key of ``tenant`` (created when it has none), locked ``FOR SHARE``
        for the caller's transaction (see the module docstring)."""
        row = await conn.fetchrow(
            "SELECT key_id FROM tenant_data_keys WHERE tenant = $1 AND wrapped IS NOT NULL"
            " ORDER BY key_id DESC LIMIT 1 FOR SHARE",
            tenant,
        )
        if row is None:
            key_id = await _new_key(conn, tenant)
            row = await conn.fetchrow(
                "SELECT key_id FROM tenant_data_keys WHERE tenant = $1 AND key_id = $2"
                " AND wrapped IS NOT NULL FOR SHARE",
                tenant,
                key_id,
            )
            if row is None:  # shredded between the insert and now: the caller retries
                raise ShreddedError(f"the data key of {tenant} was destroyed while sealing")
        key_id = int(row["key_id"])
        return key_id, await self.key(conn, tenant, key_id)

    async def seal_batch(self, conn: Any, chunks: Sequence[PreparedChunk]) -> list[PreparedChunk]:
        """``chunks`` with their stored payloads sealed (new objects: a retried transaction
        seals the original payloads again, never twice)."""
        keys: dict[str, tuple[int, bytes]] = {}
        out = []
        for p in chunks:
            c = p.chunk
            if c.tenant not in keys:
                keys[c.tenant] = await self.sealer(conn, c.tenant)
            key_id, dek = keys[c.tenant]
            out.append(
                replace(p, stored=seal(dek, c.tenant, c.sid, c.seq, p.stored), key_id=key_id)
            )
        return out


async def _new_key(conn: Any, tenant: str) -> int:
    """Insert a new data key for ``tenant`` (the next key_id); returns its id."""
    next_id = await conn.fetchval(
        "SELECT coalesce(max(key_id), 0) + 1 FROM tenant_data_keys WHERE tenant = $1", tenant
    )
    kek_id, wrapped = provider().wrap(secrets.token_bytes(32), _dek_aad(tenant, int(next_id)))
    await conn.execute(
        "INSERT INTO tenant_data_keys (tenant, key_id, kek_id, wrapped) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (tenant, key_id) DO NOTHING",
        tenant,
        next_id,
        kek_id,
        wrapped,
    )
    return int(next_id)


async def rotate_data_key(pool: Any, tenant: str) -> int:
    """A new active data key for ``tenant``; chunks sealed before keep theirs."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7413015, hashtext($1))", tenant)
            return await _new_key(conn, tenant)
    except Exception as exc:
        raise translate(exc, f"cannot rotate the data key of {tenant}") from exc


async def rewrap(pool: Any) -> int:
    """Wrap every live data key again under the provider's active KEK (after ``keys rotate
    --kek``); no chunk is rewritten. Returns how many keys were re-wrapped."""
    keys = provider()
    n = 0
    try:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT tenant, key_id, kek_id, wrapped FROM tenant_data_keys"
                " WHERE wrapped IS NOT NULL FOR UPDATE"
            )
            for r in rows:
                aad = _dek_aad(r["tenant"], r["key_id"])
                dek = keys.unwrap(r["kek_id"], bytes(r["wrapped"]), aad)
                kek_id, wrapped = keys.wrap(dek, aad)
                if kek_id == r["kek_id"]:
                    continue
                await conn.execute(
                    "UPDATE tenant_data_keys SET kek_id = $3, wrapped = $4"
                    " WHERE tenant = $1 AND key_id = $2",
                    r["tenant"],
                    r["key_id"],
                    kek_id,
                    wrapped,
                )
                n += 1
    except (IntegrityError, ConfigError):
        raise
    except Exception as exc:
        raise translate(exc, "cannot re-wrap data keys") from exc
    return n


#: Tables holding text derived from recordings (deleted when a tenant is shredded).
DERIVED_TABLES = (
    "text_segments",
    "session_keyframes",
    "session_markers",
    "detect_feed",
    "session_text",
    "segment_queue",
)


async def shred_tenant(
    pool: Any, keys: KeyProvider, tenant: str, *, actor: str, reason: str
) -> list[int]:
    """Destroy every data key of ``tenant`` (see the module docstring); returns their ids."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "UPDATE tenant_data_keys SET wrapped = NULL, destroyed_at = now()"
                " WHERE tenant = $1 AND wrapped IS NOT NULL RETURNING key_id",
                tenant,
            )
            ids = sorted(int(r["key_id"]) for r in rows)
            for table in DERIVED_TABLES:
                await conn.execute(f"DELETE FROM {table} WHERE tenant = $1", tenant)
            body = tombstone_body(
                tenant,
                "shred",
                actor=actor,
                reason=reason,
                now=datetime.now(UTC),
                key_ids=ids,
            )
            await add_tombstones(conn, keys, [body])
    except Exception as exc:
        raise translate(exc, f"cannot shred tenant {tenant}") from exc
    return ids


#: The data keys every reader in this process shares.
DATA_KEYS = DataKeys()


def text_kept(settings: Settings, tenant: str) -> bool:
    """Whether text derived from ``tenant``'s recordings is stored (segments for search,
    keyframes, command markers, output lines for detection). Clear-text tenants: always. With
    encryption at rest: only for the tenants named in ``searchable_text_tenants`` (see
    docs/evidence.md for why the default is not to)."""
    if not settings.encrypt_at_rest:
        return True
    named = {t.strip() for t in settings.searchable_text_tenants.split(",") if t.strip()}
    return tenant in named or "*" in named


__all__ = [
    "DATA_KEYS",
    "DERIVED_TABLES",
    "DataKeys",
    "configure",
    "provider",
    "rewrap",
    "rotate_data_key",
    "seal",
    "shred_tenant",
    "text_kept",
    "unseal",
]
