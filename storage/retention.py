"""Retention (per-tenant age limits) and legal hold, on PostgreSQL and the OpenSearch index.

Invariants:

* A tenant without a policy keeps everything: deletion is never a default.
* A session under legal hold keeps its row, chunks, text segments, its events (events whose
  ``sid`` is that session) and its index documents, however old.
* Holds and retention batches serialise per tenant: :func:`set_hold` takes the tenant's
  advisory lock exclusively, every deleting transaction takes it shared and re-reads the holds
  after acquiring it, so a hold committed before a batch is always honoured, and a hold set
  while a batch runs waits for that batch.
* A session is past retention when its last activity (``ended_at``, else ``started_at`` plus
  its last frame offset) is older than ``now - sessions_days``; an event when its ``time`` is
  older than ``now - events_days``.
* Index documents are deleted before the PostgreSQL rows they mirror, inside the same
  transaction for sessions: when OpenSearch fails, the rows stay and the next run tries again
  (event documents are deleted by time range, so a later run also catches up on them).
* A monthly event partition is dropped whole only when every tenant with rows in it has a
  policy whose cutoff lies at or after the partition's end, and none of its rows belongs to a
  held session. Everything else goes by batched ``DELETE``.
* asyncpg exceptions never leave this module (:func:`storage.pg.translate`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeAlias

from sessionvault.errors import NotFoundError, SessionVaultError, StorageError, ValidationError
from storage.evidence_store import add_tombstones, tombstone_body
from storage.keyring import KeyProvider
from storage.pg import translate

log = logging.getLogger(__name__)

Executor: TypeAlias = Any  # asyncpg Pool or Connection

__all__ = [
    "HoldRecord",
    "IndexDeleter",
    "PartitionInfo",
    "RetentionPolicy",
    "RetentionReport",
    "TenantRetention",
    "apply_retention",
    "cutoffs",
    "droppable",
    "get_policies",
    "hold_history",
    "list_holds",
    "release_hold",
    "set_hold",
    "set_policy",
]

# Advisory lock (two-key form: this class, hashtext(tenant)) between holds and deletions.
HOLD_LOCK_CLASS = 7413010
# storage.eventstore's partition-creation lock: dropping a partition takes it too.
PARTITION_LOCK = 7413002
MAX_DAYS = 365 * 100
_PARTITION_RE = re.compile(r"^events_y(\d{4})m(\d{2})$")


# -- pure parts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long a tenant keeps audit events and session recordings."""

    tenant: str
    events_days: int
    sessions_days: int
    updated_at: datetime | None = None
    updated_by: str = ""


def check_days(name: str, days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValidationError("bad_policy", f"{name}: a whole number of days from 1 to {MAX_DAYS}")
    return days


def cutoffs(policy: RetentionPolicy, now: datetime) -> tuple[datetime, datetime]:
    """(events cutoff, sessions cutoff): anything older than these is past retention."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now - timedelta(days=policy.events_days), now - timedelta(days=policy.sessions_days)


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """A monthly ``events`` partition: its range and who has rows in it."""

    name: str
    start: datetime
    end: datetime
    tenants: frozenset[str]
    has_held_rows: bool


def partition_range(name: str) -> tuple[datetime, datetime] | None:
    """[start, end) of a monthly partition named by :func:`storage.persist_logic.partition_name`
    (None for other tables, e.g. the default partition)."""
    m = _PARTITION_RE.match(name)
    if not m:
        return None
    year, month = int(m.group(1)), int(m.group(2))
    if not 1 <= month <= 12:
        return None
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def droppable(part: PartitionInfo, events_cutoffs: Mapping[str, datetime]) -> bool:
    """True when every row of ``part`` is past its tenant's event retention and none is held.

    ``events_cutoffs`` has a cutoff for each tenant with a policy; a tenant without one keeps
    its events, so a partition holding any of its rows stays. An empty partition is droppable
    once it is past every policy (a late event for its month then lands in the default
    partition, which is searched and retained like any other).
    """
    if part.has_held_rows:
        return False
    if not part.tenants:
        return bool(events_cutoffs) and all(part.end <= c for c in events_cutoffs.values())
    for tenant in part.tenants:
        cutoff = events_cutoffs.get(tenant)
        if cutoff is None or part.end > cutoff:
            return False
    return True


# -- records -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoldRecord:
    """One legal-hold decision (``action`` is ``set`` or ``release``)."""

    tenant: str
    sid: str
    action: str
    reason: str
    actor: str
    at: datetime


@dataclass
class TenantRetention:
    """What retention found (dry run) or removed for one tenant."""

    tenant: str
    events_cutoff: datetime
    sessions_cutoff: datetime
    events: int = 0
    sessions: int = 0
    chunks: int = 0
    segments: int = 0
    index_documents: int = 0
    session_ids: list[str] = field(default_factory=list)
    held_session_ids: list[str] = field(default_factory=list)
    held_events: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "events_cutoff": self.events_cutoff.isoformat(),
            "sessions_cutoff": self.sessions_cutoff.isoformat(),
            "events": self.events,
            "sessions": self.sessions,
            "chunks": self.chunks,
            "text_segments": self.segments,
            "index_documents": self.index_documents,
            "session_ids": list(self.session_ids),
            "held_session_ids": list(self.held_session_ids),
            "held_events": self.held_events,
        }


@dataclass
class RetentionReport:
    """The outcome of :func:`apply_retention` (``dry_run``: what WOULD go)."""

    dry_run: bool
    now: datetime
    tenants: list[TenantRetention] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)  # dropped (or droppable in a dry run)
    opensearch: bool = False  # index documents were handled

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "now": self.now.isoformat(),
            "opensearch": self.opensearch,
            "partitions": list(self.partitions),
            "tenants": [t.to_json() for t in self.tenants],
        }


class IndexDeleter(Protocol):
    """The part of :class:`storage.search.opensearch.OpenSearchStore` retention uses."""

    def delete_by_query(self, query: Mapping[str, Any], *, refresh: bool = True) -> int: ...

    def count(self, query: Mapping[str, Any] | None = None) -> int: ...


def events_index_query(tenant: str, cutoff_us: int, held_sids: Sequence[str]) -> dict[str, Any]:
    """Event documents of ``tenant`` older than ``cutoff_us``, except held sessions' events."""
    q: dict[str, Any] = {
        "bool": {
            "filter": [
                {"term": {"kind": "event"}},
                {"term": {"tenant": tenant}},
                {"range": {"time_us": {"lt": cutoff_us}}},
            ]
        }
    }
    if held_sids:
        q["bool"]["must_not"] = [{"terms": {"sid": list(held_sids)}}]
    return q


def segments_index_query(tenant: str, sids: Sequence[str]) -> dict[str, Any]:
    """Output-segment documents of these sessions of ``tenant``."""
    return {
        "bool": {
            "filter": [
                {"term": {"kind": "output"}},
                {"term": {"tenant": tenant}},
                {"terms": {"sid": list(sids)}},
            ]
        }
    }


def tenant_segments_index_query(tenant: str) -> dict[str, Any]:
    """Every output-segment document of ``tenant`` (crypto-shredding removes them all)."""
    return {"bool": {"filter": [{"term": {"kind": "output"}}, {"term": {"tenant": tenant}}]}}


def _us(when: datetime) -> int:
    d = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


# -- database helpers --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _connection(db: Executor) -> AsyncIterator[Any]:
    if hasattr(db, "acquire"):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


async def _tenant_lock(conn: Any, tenant: str, *, shared: bool) -> None:
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await conn.execute(f"SELECT {fn}($1, hashtext($2))", HOLD_LOCK_CLASS, tenant)


async def _has_table(conn: Any, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


# -- policies ----------------------------------------------------------------------------------


async def set_policy(
    db: Executor, tenant: str, *, events_days: int, sessions_days: int, actor: str
) -> RetentionPolicy:
    """Create or replace ``tenant``'s policy."""
    check_days("events_days", events_days)
    check_days("sessions_days", sessions_days)
    if not tenant:
        raise ValidationError("bad_policy", "tenant: required")
    try:
        row = await db.fetchrow(
            "INSERT INTO retention_policies (tenant, events_days, sessions_days, updated_by)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (tenant) DO UPDATE SET"
            " events_days = EXCLUDED.events_days, sessions_days = EXCLUDED.sessions_days,"
            " updated_at = now(), updated_by = EXCLUDED.updated_by"
            " RETURNING tenant, events_days, sessions_days, updated_at, updated_by",
            tenant,
            events_days,
            sessions_days,
            actor,
        )
    except Exception as exc:
        raise translate(exc, "cannot store retention policy") from exc
    return RetentionPolicy(**dict(row))


async def delete_policy(db: Executor, tenant: str) -> bool:
    """Remove ``tenant``'s policy (it then keeps everything); True when there was one."""
    try:
        status = await db.execute("DELETE FROM retention_policies WHERE tenant = $1", tenant)
    except Exception as exc:
        raise translate(exc, "cannot delete retention policy") from exc
    return str(status).endswith(" 1")


async def get_policies(db: Executor, tenant: str | None = None) -> list[RetentionPolicy]:
    """Every policy (or ``tenant``'s), by tenant."""
    try:
        rows = await db.fetch(
            "SELECT tenant, events_days, sessions_days, updated_at, updated_by"
            " FROM retention_policies WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant",
            tenant,
        )
    except Exception as exc:
        raise translate(exc, "cannot read retention policies") from exc
    return [RetentionPolicy(**dict(r)) for r in rows]


# -- legal hold --------------------------------------------------------------------------------


async def _hold(
    db: Executor,
    tenant: str,
    sid: str,
    *,
    hold: bool,
    reason: str,
    actor: str,
    keys: KeyProvider | None = None,
) -> HoldRecord:
    reason = reason.strip()
    if not reason:
        raise ValidationError("bad_hold", "a reason is required (it is kept with the decision)")
    if not actor:
        raise ValidationError("bad_hold", "the actor is required")
    try:
        async with _connection(db) as conn, conn.transaction():
            await _tenant_lock(conn, tenant, shared=False)
            current = await conn.fetchval(
                "SELECT legal_hold FROM sessions WHERE sid = $1 AND tenant = $2 FOR UPDATE",
                sid,
                tenant,
            )
            if current is None:
                raise NotFoundError(f"session {sid!r} not found")
            if not hold and not current:
                raise ValidationError("bad_hold", f"session {sid!r} is not under legal hold")
            if current != hold:
                await conn.execute(
                    "UPDATE sessions SET legal_hold = $3 WHERE sid = $1 AND tenant = $2",
                    sid,
                    tenant,
                    hold,
                )
            row = await conn.fetchrow(
                "INSERT INTO legal_holds (tenant, sid, action, reason, actor)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING tenant, sid, action, reason, actor, at",
                tenant,
                sid,
                "set" if hold else "release",
                reason,
                actor,
            )
            if not hold and keys is not None:
                # Releasing a hold is what lets retention delete the session: signed.
                await add_tombstones(
                    conn,
                    keys,
                    [
                        tombstone_body(
                            tenant,
                            "hold_release",
                            actor=actor,
                            reason=reason,
                            now=datetime.now(UTC),
                            sid=sid,
                        )
                    ],
                )
    except (NotFoundError, ValidationError):
        raise
    except Exception as exc:
        raise translate(exc, f"cannot change legal hold of session {sid}") from exc
    log.info("legal hold %s on session %s (tenant %s) by %s", row["action"], sid, tenant, actor)
    return HoldRecord(**dict(row))


async def set_hold(db: Executor, tenant: str, sid: str, *, reason: str, actor: str) -> HoldRecord:
    """Put session ``sid`` of ``tenant`` under legal hold (recorded with who, when and why).

    Setting it again on a held session records the new reason; the session stays held.
    """
    return await _hold(db, tenant, sid, hold=True, reason=reason, actor=actor)


async def release_hold(
    db: Executor,
    tenant: str,
    sid: str,
    *,
    reason: str,
    actor: str,
    keys: KeyProvider | None = None,
) -> HoldRecord:
    """Release the legal hold of ``sid`` (ValidationError when it is not held); with
    ``keys``, a signed ``hold_release`` tombstone records who and why."""
    return await _hold(db, tenant, sid, hold=False, reason=reason, actor=actor, keys=keys)


async def hold_history(db: Executor, tenant: str, sid: str | None = None) -> list[HoldRecord]:
    """Every hold decision of ``tenant`` (or of one session), oldest first."""
    try:
        rows = await db.fetch(
            "SELECT tenant, sid, action, reason, actor, at FROM legal_holds"
            " WHERE tenant = $1 AND ($2::text IS NULL OR sid = $2) ORDER BY at, id",
            tenant,
            sid,
        )
    except Exception as exc:
        raise translate(exc, "cannot read legal holds") from exc
    return [HoldRecord(**dict(r)) for r in rows]


async def list_holds(db: Executor, tenant: str) -> list[HoldRecord]:
    """The sessions of ``tenant`` under hold now, each with the decision that set it."""
    try:
        rows = await db.fetch(
            "SELECT DISTINCT ON (s.sid) h.tenant, h.sid, h.action, h.reason, h.actor, h.at"
            " FROM sessions s JOIN legal_holds h ON h.tenant = s.tenant AND h.sid = s.sid"
            " AND h.action = 'set' WHERE s.tenant = $1 AND s.legal_hold"
            " ORDER BY s.sid, h.at DESC, h.id DESC",
            tenant,
        )
    except Exception as exc:
        raise translate(exc, "cannot list legal holds") from exc
    return [HoldRecord(**dict(r)) for r in rows]


# -- retention ---------------------------------------------------------------------------------

_SESSION_PAST = "COALESCE(ended_at, started_at + duration_ms * interval '1 millisecond') < $2"
_HELD_EVENT = (
    "EXISTS (SELECT 1 FROM sessions s WHERE s.tenant = e.tenant AND s.sid = e.sid AND s.legal_hold)"
)

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


async def _partitions(conn: Any) -> list[PartitionInfo]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass ORDER BY 1"
    )
    out = []
    for r in rows:
        name = r["relname"]
        bounds = partition_range(name)
        if bounds is None:
            continue
        # Distinct tenants by a loose index scan (one probe per tenant, not a full scan).
        tenants = await conn.fetch(
            f"WITH RECURSIVE t AS (SELECT min(tenant) AS v FROM {name}"
            f" UNION ALL SELECT (SELECT min(tenant) FROM {name} WHERE tenant > t.v)"
            " FROM t WHERE t.v IS NOT NULL) SELECT v FROM t WHERE v IS NOT NULL"
        )
        held = await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {name} e JOIN sessions s ON s.tenant = e.tenant"
            " AND s.sid = e.sid WHERE s.legal_hold)"
        )
        out.append(PartitionInfo(name, *bounds, frozenset(v["v"] for v in tenants), bool(held)))
    return out


async def apply_retention(
    pool: Executor,
    *,
    now: datetime | None = None,
    tenants: Iterable[str] | None = None,
    dry_run: bool = False,
    index: IndexDeleter | None = None,
    actor: str = "",
    batch_rows: int = 5000,
    session_batch: int = 200,
    drop_partitions: bool = True,
    progress: Progress = _quiet,
    keys: KeyProvider | None = None,
) -> RetentionReport:
    """Delete (or, with ``dry_run``, count and list) what is past each tenant's policy.

    ``tenants`` limits the run (default: every tenant with a policy). ``index``: the
    OpenSearch store whose documents go too (None: PostgreSQL only; the index then keeps
    stale documents until a later run with it, or a reindex). Partitions are only dropped
    when the run covers every tenant with a policy.

    ``keys``: every deletion leaves a signed tombstone in its own transaction (what, which
    policy, who), so ``verify`` tells a policy deletion from tampering. Without keys the
    deletions are unsigned and ``verify`` reports them as deleted.
    """
    now = now or datetime.now(UTC)
    wanted = None if tenants is None else set(tenants)
    report = RetentionReport(dry_run=dry_run, now=now, opensearch=index is not None)
    async with _connection(pool) as conn:
        try:
            policies = await get_policies(conn)
        except StorageError:
            raise
    all_cutoffs = {p.tenant: cutoffs(p, now)[0] for p in policies}
    selected = [p for p in policies if wanted is None or p.tenant in wanted]
    if wanted:
        missing = wanted - {p.tenant for p in policies}
        for t in sorted(missing):
            progress(f"tenant {t}: no retention policy, nothing to do")

    dropped_rows: dict[str, int] = {}
    if drop_partitions and wanted is None and all_cutoffs:
        report.partitions = await _drop_partitions(
            pool, all_cutoffs, dry_run, progress, dropped_rows, keys, actor
        )

    for policy in selected:
        ev_cut, se_cut = cutoffs(policy, now)
        tr = TenantRetention(policy.tenant, ev_cut, se_cut)
        report.tenants.append(tr)
        if not dry_run:
            tr.events += dropped_rows.get(policy.tenant, 0)
        try:
            sign = _Signer(keys, policy, actor, now)
            await _tenant_sessions(pool, tr, dry_run, index, session_batch, progress, sign)
            await _tenant_events(pool, tr, dry_run, index, batch_rows, progress, sign)
            if not dry_run:
                await _record_run(pool, tr, now, actor)
        except SessionVaultError:
            raise
        except Exception as exc:
            raise translate(exc, f"retention of tenant {policy.tenant}") from exc
    return report


async def _drop_partitions(
    pool: Executor,
    all_cutoffs: Mapping[str, datetime],
    dry_run: bool,
    progress: Progress,
    dropped_rows: dict[str, int],
    keys: KeyProvider | None,
    actor: str,
) -> list[str]:
    """Drop (dry run: list) the partitions :func:`droppable` allows; add the rows dropped per
    tenant to ``dropped_rows``."""
    dropped: list[str] = []
    oldest_cutoff = min(all_cutoffs.values())
    async with _connection(pool) as conn:
        try:
            parts = [p for p in await _partitions(conn) if p.end <= oldest_cutoff]
        except Exception as exc:
            raise translate(exc, "cannot inspect event partitions") from exc
        for part in parts:
            if not droppable(part, all_cutoffs):
                continue
            if dry_run:
                dropped.append(part.name)
                progress(f"partition {part.name}: would be dropped (all rows past retention)")
                continue
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
                    for tenant in sorted(part.tenants):
                        await _tenant_lock(conn, tenant, shared=True)
                    # Re-check under the locks: a hold may have been set since the look.
                    fresh = [p for p in await _partitions(conn) if p.name == part.name]
                    if not fresh or not droppable(fresh[0], all_cutoffs):
                        continue
                    counts = await conn.fetch(
                        f"SELECT tenant, count(*) AS n FROM {part.name} GROUP BY tenant"
                    )
                    await conn.execute(f"ALTER TABLE events DETACH PARTITION {part.name}")
                    await conn.execute(f"DROP TABLE {part.name}")
                    if keys is not None:
                        await add_tombstones(
                            conn,
                            keys,
                            [
                                tombstone_body(
                                    r["tenant"],
                                    "events",
                                    actor=actor,
                                    reason=f"retention: partition {part.name} dropped",
                                    now=datetime.now(UTC),
                                    before_us=_us(part.end),
                                    except_sids=[],
                                )
                                for r in counts
                            ],
                        )
            except Exception as exc:
                raise translate(exc, f"cannot drop partition {part.name}") from exc
            for r in counts:
                dropped_rows[r["tenant"]] = dropped_rows.get(r["tenant"], 0) + int(r["n"])
            dropped.append(part.name)
            progress(f"partition {part.name}: dropped ({sum(int(r['n']) for r in counts)} rows)")
    return dropped


async def _tenant_sessions(
    pool: Executor,
    tr: TenantRetention,
    dry_run: bool,
    index: IndexDeleter | None,
    session_batch: int,
    progress: Progress,
    sign: _Signer,
) -> None:
    tenant, cutoff = tr.tenant, tr.sessions_cutoff
    async with _connection(pool) as conn:
        segments_table = await _has_table(conn, "text_segments")
        held = await conn.fetch(
            f"SELECT sid FROM sessions WHERE tenant = $1 AND legal_hold AND {_SESSION_PAST}"
            " ORDER BY sid",
            tenant,
            cutoff,
        )
        tr.held_session_ids = [r["sid"] for r in held]
        if dry_run:
            rows = await conn.fetch(
                f"SELECT sid FROM sessions WHERE tenant = $1 AND NOT legal_hold"
                f" AND {_SESSION_PAST} ORDER BY started_at, sid",
                tenant,
                cutoff,
            )
            sids = [r["sid"] for r in rows]
            tr.session_ids = sids
            tr.sessions = len(sids)
            tr.chunks = int(
                await conn.fetchval(
                    "SELECT count(*) FROM chunks WHERE tenant = $1 AND sid = ANY($2::text[])",
                    tenant,
                    sids,
                )
            )
            if segments_table:
                tr.segments = int(
                    await conn.fetchval(
                        "SELECT count(*) FROM text_segments"
                        " WHERE tenant = $1 AND sid = ANY($2::text[])",
                        tenant,
                        sids,
                    )
                )
            if index is not None and sids:
                tr.index_documents += index.count(segments_index_query(tenant, sids))
            progress(
                f"tenant {tenant}: {tr.sessions} sessions ({tr.chunks} chunks) would go,"
                f" {len(tr.held_session_ids)} past retention kept under legal hold"
            )
            return
        while True:
            async with conn.transaction():
                await _tenant_lock(conn, tenant, shared=True)
                rows = await conn.fetch(
                    f"SELECT sid FROM sessions WHERE tenant = $1 AND NOT legal_hold"
                    f" AND {_SESSION_PAST} ORDER BY started_at, sid LIMIT $3 FOR UPDATE",
                    tenant,
                    cutoff,
                    session_batch,
                )
                sids = [r["sid"] for r in rows]
                if not sids:
                    break
                if index is not None:
                    # Before the rows: if OpenSearch fails, the rows stay for the next run.
                    tr.index_documents += index.delete_by_query(segments_index_query(tenant, sids))
                if segments_table:
                    tr.segments += _count(
                        await conn.execute(
                            "DELETE FROM text_segments WHERE tenant = $1 AND sid = ANY($2::text[])",
                            tenant,
                            sids,
                        )
                    )
                if await _has_table(conn, "session_text"):
                    # The segmenter's position and queue entries (ingest.segmenter); it holds
                    # FOR KEY SHARE on a session it renders, so it cannot write after this.
                    await conn.execute(
                        "DELETE FROM session_text WHERE tenant = $1 AND sid = ANY($2::text[])",
                        tenant,
                        sids,
                    )
                    await conn.execute(
                        "DELETE FROM segment_queue WHERE tenant = $1 AND sid = ANY($2::text[])",
                        tenant,
                        sids,
                    )
                for derived in ("session_keyframes", "session_markers"):
                    if await _has_table(conn, derived):
                        await conn.execute(
                            f"DELETE FROM {derived} WHERE tenant = $1 AND sid = ANY($2::text[])",
                            tenant,
                            sids,
                        )
                if await _has_table(conn, "detect_feed"):
                    await conn.execute(
                        "DELETE FROM detect_feed WHERE tenant = $1 AND sid = ANY($2::text[])",
                        tenant,
                        sids,
                    )
                tr.chunks += _count(
                    await conn.execute(
                        "DELETE FROM chunks WHERE tenant = $1 AND sid = ANY($2::text[])",
                        tenant,
                        sids,
                    )
                )
                tr.sessions += _count(
                    await conn.execute(
                        "DELETE FROM sessions WHERE tenant = $1 AND sid = ANY($2::text[])",
                        tenant,
                        sids,
                    )
                )
                await sign.sessions(conn, tenant, sids, cutoff)
                tr.session_ids.extend(sids)
            progress(f"tenant {tenant}: {tr.sessions} sessions, {tr.chunks} chunks deleted")


async def _tenant_events(
    pool: Executor,
    tr: TenantRetention,
    dry_run: bool,
    index: IndexDeleter | None,
    batch_rows: int,
    progress: Progress,
    sign: _Signer,
) -> None:
    tenant, cutoff = tr.tenant, tr.events_cutoff
    async with _connection(pool) as conn:
        tr.held_events = int(
            await conn.fetchval(
                f"SELECT count(*) FROM events e WHERE e.tenant = $1 AND e.time < $2"
                f" AND {_HELD_EVENT}",
                tenant,
                cutoff,
            )
        )
        if dry_run:
            tr.events = int(
                await conn.fetchval(
                    f"SELECT count(*) FROM events e WHERE e.tenant = $1 AND e.time < $2"
                    f" AND NOT {_HELD_EVENT}",
                    tenant,
                    cutoff,
                )
            )
            if index is not None:
                held = await _held_sids(conn, tenant)
                tr.index_documents += index.count(events_index_query(tenant, _us(cutoff), held))
            progress(
                f"tenant {tenant}: {tr.events} events would go"
                f" ({tr.held_events} kept under legal hold)"
            )
            return
        if index is not None:
            async with conn.transaction():
                await _tenant_lock(conn, tenant, shared=True)
                held = await _held_sids(conn, tenant)
                tr.index_documents += index.delete_by_query(
                    events_index_query(tenant, _us(cutoff), held)
                )
        signed = False  # one tombstone per run, in the first deleting transaction
        while True:
            async with conn.transaction():
                await _tenant_lock(conn, tenant, shared=True)
                n = _count(
                    await conn.execute(
                        "WITH d AS (SELECT e.tenant, e.uid, e.time FROM events e"
                        f" WHERE e.tenant = $1 AND e.time < $2 AND NOT {_HELD_EVENT} LIMIT $3)"
                        " DELETE FROM events x USING d"
                        " WHERE x.tenant = d.tenant AND x.uid = d.uid AND x.time = d.time",
                        tenant,
                        cutoff,
                        batch_rows,
                    )
                )
                if n and not signed:
                    await sign.events(conn, tenant, cutoff, await _held_sids(conn, tenant))
                    signed = True
            tr.events += n
            if n:
                progress(f"tenant {tenant}: {tr.events} events deleted")
            if n < batch_rows:
                break


@dataclass(frozen=True)
class _Signer:
    """The tombstones of one tenant's retention run (nothing without keys)."""

    keys: KeyProvider | None
    policy: RetentionPolicy
    actor: str
    now: datetime

    def _reason(self, what: str, cutoff: datetime) -> str:
        days = self.policy.sessions_days if what == "sessions" else self.policy.events_days
        return f"retention: {what}_days={days}, before {cutoff.isoformat()}"

    async def sessions(self, conn: Any, tenant: str, sids: Sequence[str], cutoff: datetime) -> None:
        if self.keys is None:
            return
        reason = self._reason("sessions", cutoff)
        bodies = [
            tombstone_body(tenant, "session", actor=self.actor, reason=reason, now=self.now, sid=s)
            for s in sids
        ]
        await add_tombstones(conn, self.keys, bodies)

    async def events(self, conn: Any, tenant: str, cutoff: datetime, held: Sequence[str]) -> None:
        if self.keys is None:
            return
        body = tombstone_body(
            tenant,
            "events",
            actor=self.actor,
            reason=self._reason("events", cutoff),
            now=self.now,
            before_us=_us(cutoff),
            except_sids=list(held),
        )
        await add_tombstones(conn, self.keys, [body])


async def _held_sids(conn: Any, tenant: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT sid FROM sessions WHERE tenant = $1 AND legal_hold ORDER BY sid", tenant
    )
    return [r["sid"] for r in rows]


async def _record_run(pool: Executor, tr: TenantRetention, now: datetime, actor: str) -> None:
    async with _connection(pool) as conn:
        await conn.execute(
            "INSERT INTO retention_runs (tenant, started_at, events_cutoff, sessions_cutoff,"
            " events_deleted, sessions_deleted, chunks_deleted, segments_deleted,"
            " held_sessions, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            tr.tenant,
            now,
            tr.events_cutoff,
            tr.sessions_cutoff,
            tr.events,
            tr.sessions,
            tr.chunks,
            tr.segments,
            len(tr.held_session_ids),
            actor,
        )


def _count(status: str) -> int:
    """Rows affected, from asyncpg's command status (``DELETE 12``)."""
    try:
        return int(str(status).rsplit(" ", 1)[-1])
    except ValueError:
        return 0
