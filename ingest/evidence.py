"""The evidence stage: signed session manifests and per-tenant signed checkpoints.

Every ``checkpoint_interval_ms`` (and at once when asked, e.g. before a bundle), one round:

1. sign a manifest for every session that ended (closed or abandoned) and has not changed for
   ``manifest_delay_ms`` (late audit events of the session get that long to arrive), unless
   one already covers its last chunk (:func:`storage.evidence_store.manifests_due`);
2. for every tenant with pending ledger rows, sign a checkpoint over them (several when a
   backlog is large);
3. send every manifest and checkpoint not yet sent as an audit event (``session.manifest``,
   ``evidence.checkpoint``) to the events topic, so every SIEM sink holds a copy off-box,
   and write each checkpoint to ``checkpoint_dir`` when set. Only then are they marked sent:
   a failure sends them again (the events' uids are derived, so a copy is stored once).

Driven by PostgreSQL alone; retries, health and stop are the worker runtime's
(:class:`ingest.runtime.Runtime`). Several may run: a checkpoint takes a per-tenant lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from ingest.kafka import Producer, make_producer, send_confirmed
from ingest.runtime import Runtime, Stopped
from schemas.codec import encode_event
from schemas.evidence import envelope_sha256
from sessionvault.errors import (
    NotFoundError,
    SessionVaultError,
    StorageError,
    TransportError,
    ValidationError,
)
from sessionvault.settings import Settings, require
from storage import evidence_store as store
from storage import pg
from storage.keyring import KeyProvider, load_keys

log = logging.getLogger(__name__)

PRODUCE_TIMEOUT_S = 30.0
#: Sessions one manifest query returns (a round repeats it until fewer come back).
MANIFESTS_PER_QUERY = 100


@dataclass
class EvidenceStats:
    rounds: int = 0
    manifests: int = 0
    checkpoints: int = 0
    emitted: int = 0
    db_retries: int = 0


def manifest_event(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The audit event that carries a signed manifest (pure)."""
    body = envelope["body"]
    return {
        "sv_version": 1,
        "tenant": body["tenant"],
        "event": "session.manifest",
        "code": "SV1301I",
        "uid": "manifest-" + envelope_sha256(envelope)[:32],
        "time": body["signed_at"],
        "sid": body["sid"],
        "manifest": dict(envelope),
    }


def checkpoint_event(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The audit event that carries a signed checkpoint (its root, not its leaves)."""
    body = envelope["body"]
    return {
        "sv_version": 1,
        "tenant": body["tenant"],
        "event": "evidence.checkpoint",
        "code": "SV1302I",
        "uid": f"checkpoint-{body['n']}-" + envelope_sha256(envelope)[:16],
        "time": body["at"],
        "checkpoint": dict(envelope),
    }


def checkpoint_file(directory: Path, tenant: str, n: int) -> Path:
    """Where the outside copy of checkpoint ``n`` of ``tenant`` is written."""
    return directory / tenant / f"{n:012d}.json"


def write_checkpoint_copy(directory: Path, cp: store.CheckpointRecord) -> None:
    """Write ``{"envelope", "leaves"}`` atomically (temp file, fsync, rename)."""
    path = checkpoint_file(directory, cp.tenant, cp.n)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        fh.write(orjson.dumps({"envelope": cp.envelope, "leaves": cp.leaves}))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_checkpoint_copies(directory: Path, tenant: str) -> dict[int, dict[str, Any]]:
    """n -> envelope of every outside copy of ``tenant``'s checkpoints."""
    out: dict[int, dict[str, Any]] = {}
    folder = directory / tenant
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        with contextlib.suppress(ValueError, OSError, orjson.JSONDecodeError):
            doc = orjson.loads(path.read_bytes())
            out[int(doc["envelope"]["body"]["n"])] = doc["envelope"]
    return out


class EvidenceWorker:
    """See the module docstring. :meth:`step` is one round, :meth:`run` the loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        keys: KeyProvider | None = None,
        producer_factory: Callable[[], Producer] | None = None,
        emit: bool = True,
    ) -> None:
        require(settings, "postgres_dsn")
        self.settings = settings
        self.keys = keys or load_keys(settings)
        self.emit = emit
        self.stats = EvidenceStats()
        self.rt = Runtime(
            settings,
            name="evidence",
            retried=(StorageError, TransportError),
            on_failure=self._on_failure,
            logger=log,
        )
        self.health = self.rt.health
        self._producer_factory = producer_factory or (
            lambda: make_producer(settings, client_id="sessionvault-evidence")
        )
        self._producer: Producer | None = None
        self._pool: Any = None
        self._watermark: datetime | None = None

    async def _db(self) -> Any:
        if self._pool is None:
            self._pool = await pg.create_pool(
                self.settings.postgres_dsn.get(), min_size=1, max_size=2
            )
        return self._pool

    async def _on_failure(self, exc: SessionVaultError) -> None:
        self.stats.db_retries += 1
        if isinstance(exc, TransportError):
            self._drop_producer()

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=1)

    async def step(self, *, manifest_delay_ms: int | None = None) -> EvidenceStats:
        """One round (see the module docstring); returns the running totals."""
        pool = await self._db()
        delay = self.settings.manifest_delay_ms if manifest_delay_ms is None else manifest_delay_ms
        self.stats.rounds += 1
        # A watermark spares the scan of every ended session each round: sessions updated
        # since the last full look, less an hour (a transaction that stamped updated_at
        # commits seconds later, never an hour). Each process looks at everything once.
        round_start = datetime.now(UTC)
        while due := await store.manifests_due(
            pool, delay, MANIFESTS_PER_QUERY, changed_since=self._watermark
        ):
            for tenant, sid in due:
                inputs = await store.manifest_inputs(pool, tenant, sid)
                if inputs is not None:
                    await store.store_manifest(pool, self.keys, inputs)
                    self.stats.manifests += 1
            if len(due) < MANIFESTS_PER_QUERY:
                break
        self._watermark = round_start - timedelta(hours=1)
        for tenant in await store.pending_tenants(pool):
            while await store.checkpoint_tenant(pool, self.keys, tenant) is not None:
                self.stats.checkpoints += 1
        if self.emit:
            await self._emit(pool)
        return self.stats

    async def seal(self, tenant: str, sid: str) -> None:
        """Make sure ``sid`` has a manifest in a checkpoint now (an export of its bundle asks):
        sign its manifest if none covers its last chunk (the session must have ended), then
        checkpoint its tenant and send what is new."""
        pool = await self._db()
        current = await store.latest_manifest(pool, tenant, sid)
        inputs = await store.manifest_inputs(pool, tenant, sid)
        if inputs is None:
            raise NotFoundError(f"session {sid!r} not found")
        if inputs.session["status"] == "active":
            raise ValidationError(
                "session_active",
                f"session {sid} is still active: its manifest is signed when it ends",
            )
        final = inputs.session["last_hash"]
        if current is None or current.envelope["body"]["final_hash"] != final:
            await store.store_manifest(pool, self.keys, inputs)
            self.stats.manifests += 1
        while await store.checkpoint_tenant(pool, self.keys, tenant) is not None:
            self.stats.checkpoints += 1
        if self.emit:
            await self._emit(pool)

    async def _emit(self, pool: Any) -> None:
        manifests = await store.unemitted_manifests(pool)
        checkpoints = await store.unemitted_checkpoints(pool)
        if not manifests and not checkpoints:
            return
        if self.settings.checkpoint_dir:
            directory = Path(self.settings.checkpoint_dir)
            full = {(c.tenant, c.n) for c in checkpoints}
            for cp in await _with_leaves(pool, full):
                await asyncio.to_thread(write_checkpoint_copy, directory, cp)
        events = [manifest_event(e) for e in manifests]
        events += [checkpoint_event(c.envelope) for c in checkpoints]
        await asyncio.to_thread(self._produce, events)
        await store.mark_manifests_emitted(pool, manifests)
        await store.mark_checkpoints_emitted(pool, [(c.tenant, c.n) for c in checkpoints])
        self.stats.emitted += len(events)

    def _produce(self, events: Sequence[Mapping[str, Any]]) -> None:
        if self._producer is None:
            self._producer = self._producer_factory()
        topic = self.settings.topic_events
        send_confirmed(
            self._producer,
            [
                (topic, str(e.get("sid") or e["uid"]).encode(), encode_event(dict(e)))
                for e in events
            ],
            timeout_s=PRODUCE_TIMEOUT_S,
            what="send evidence events",
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Rounds every ``checkpoint_interval_ms`` until ``stop`` is set."""
        try:
            async with self.rt.watching(stop):
                while not self.rt.stop.is_set():
                    await self.rt.retry("signing evidence", self.step)
                    self.health.progressed()
                    await self.rt.sleep_or_stop(self.settings.checkpoint_interval_ms / 1000)
        except Stopped:
            pass
        finally:
            await self.close()

    async def close(self) -> None:
        self._drop_producer()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


async def _with_leaves(pool: Any, keys: set[tuple[str, int]]) -> list[store.CheckpointRecord]:
    out = []
    for tenant in sorted({t for t, _ in keys}):
        out += [cp for cp in await store.load_checkpoints(pool, tenant) if (tenant, cp.n) in keys]
    return out


__all__ = [
    "EvidenceStats",
    "EvidenceWorker",
    "checkpoint_event",
    "checkpoint_file",
    "manifest_event",
    "read_checkpoint_copies",
    "write_checkpoint_copy",
]
