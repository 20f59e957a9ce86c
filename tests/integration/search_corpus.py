"""The search corpus: >= 1M generated audit events across several tenants, text segments, and
the Teleport fixtures, in one PostgreSQL database (reused by the search tests and bench/).

* Generated events have realistic Teleport shapes (session.start/end, session.command with
  argv, exec, kube.request with verbs/namespaces/resources, user.login), a fixed seed, and are
  loaded with binary COPY. Their search columns come from the same function the writer uses
  (:func:`storage.search.model.event_columns`). Secondary indexes are dropped before the COPY
  and re-created from their own definitions afterwards (much faster than maintaining them row
  by row), so the schema is exactly the migrated one.
* Generated terminal output is rendered with the writer's code
  (:func:`storage.search.segments.render_session`) and COPY'd into ``text_segments``.
* The Teleport fixtures (/work/shared/fixtures/teleport: events.jsonl and session.tar) go
  through the importers and the persist worker's write path (:func:`ingest.persist.prepare_batch`
  + :func:`ingest.persist.store_batch`), exactly as records from Kafka would.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from ingest.consumer import Record
from ingest.import_cmd import recording_chunks
from ingest.importers import load_recording
from ingest.importers.teleport_json import load as load_teleport_events
from ingest.persist import prepare_batch, store_batch
from ingest.persist_logic import month_of, parse_time
from schemas import Chunk, Frame, SessionInfo, Stream, chain_hash, encode_chunk
from schemas.models import GENESIS_HASH
from sessionvault.settings import Settings
from storage import pg
from storage.codec import Compressor
from storage.eventstore import ensure_partitions, known_partitions
from storage.search.model import event_columns, to_us
from storage.search.segments import SessionText, render_session

FIXTURES = Path("/work/shared/fixtures/teleport")
SEED = 20260401
BASE = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_S = 150 * 86400  # five months: several monthly partitions

# tenant -> number of generated events (the small ones are checked by Python filtering).
TENANTS = {"acme": 700_000, "globex": 270_000, "initech": 20_000, "umbrella": 10_000}
FIXTURE_TENANT = "teleport-fx"

USERS = ["alice", "bob", "carol", "dave", "eve", "mallory", "trent", "peggy", "Alice", "ørjan"]
LOGINS = ["root", "ubuntu", "ec2-user", "admin", "deploy"]
CLUSTERS = ["prod-eu", "prod-us", "staging"]
KCLUSTERS = ["gke-prod", "eks-prod", "kind-dev", "aks-stage"]
NAMESPACES = ["default", "kube-system", "payments", "web", "monitoring"]
RESOURCES = ["pods", "deployments", "secrets", "configmaps", "services", "nodes"]
VERBS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
COMMANDS = [
    ["/usr/bin/ls", "-la", "/var/log"],
    ["/usr/bin/rm", "-rf", "/tmp/build"],
    ["/usr/bin/cat", "/etc/passwd"],
    ["/usr/bin/sudo", "systemctl", "restart", "nginx"],
    ["/usr/bin/grep", "-R", "password", "/etc"],
    ["/usr/bin/psql", "-c", "SELECT * FROM users WHERE name LIKE 'a%_b'"],
    ["/usr/bin/echo", "100% done; DROP TABLE events; --"],
    ["/usr/bin/find", "/", "-name", "*.pem"],
    ["/usr/bin/curl", "-s", "http://10.0.0.1/a_b\\c"],
    ["/usr/bin/vim", "/etc/nginx/nginx.conf"],
    ["/usr/bin/kubectl", "delete", "pod", "web-1"],
    ["/usr/bin/echo", 'say "rm -rf" (quoted) AND more'],
    ["/usr/bin/tar", "czf", "/backup/Straße.tgz", "/home"],
]
SEGMENT_LINES = [
    "total 48",
    "drwxr-xr-x  2 root root 4096 Jan  1 00:00 .",
    "rm: cannot remove '/tmp/build': Permission denied",
    "ERROR 42501: permission denied for table users",
    "100% [=======================] 12.3MB/s",
    "Killed process 4242 (python3) total-vm:12%_usage",
    "C:\\Windows\\System32> dir",
    "-- DROP TABLE events; -- comment",
    "Grüße aus München: STRASSE und Straße",
    'pod "web-1" deleted',
]


@dataclass
class CorpusInfo:
    """What was loaded (counts by tenant, fixture ids, timings)."""

    dsn: str
    events: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    fixture_sid: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_events(self) -> int:
        return sum(self.events.values())


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _time(t_us: int) -> str:
    return (BASE + timedelta(microseconds=t_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def generate_events(tenant: str, n: int, seed: int) -> Iterator[dict[str, Any]]:
    """``n`` events of ``tenant`` (deterministic for ``seed``), as event-v1 field dicts."""
    rng = random.Random(f"{seed}:{tenant}")
    made = 0
    while made < n:
        t = rng.randrange(SPAN_S * 1_000_000)
        shape = rng.random()
        user = rng.choice(USERS)
        login = rng.choice(LOGINS)
        base: dict[str, Any] = {
            "tenant": tenant,
            "user": user,
            "cluster_name": rng.choice(CLUSTERS),
        }
        if shape < 0.45:  # an SSH session: start, commands, end
            sid = _uid(rng)
            server = f"srv-{rng.randrange(200):03d}"
            common = {
                **base,
                "sid": sid,
                "login": login,
                "server_id": server,
                "server_hostname": f"node-{server}",
            }
            k = min(n - made, rng.randint(2, 8))
            for i in range(k):
                ev: dict[str, Any] = {**common, "ei": i, "uid": _uid(rng), "time": _time(t)}
                if i == 0:
                    ev.update(
                        event="session.start",
                        code="T2000I",
                        size="80:25",
                        **{"addr.remote": f"10.1.{rng.randrange(256)}.{rng.randrange(256)}:5{i}"},
                    )
                elif i == k - 1:
                    ev.update(event="session.end", code="T2004I")
                else:
                    cmd = rng.choice(COMMANDS)
                    ev.update(
                        event="session.command",
                        code="T4000I",
                        path=cmd[0],
                        program=cmd[0].rsplit("/", 1)[-1],
                        argv=cmd[1:],
                        return_code=rng.choice([0, 0, 0, 1, 2]),
                    )
                yield ev
                made += 1
                t += rng.randrange(1, 30_000_000)
        elif shape < 0.80:  # kube.request
            ns = rng.choice(NAMESPACES)
            res = rng.choice(RESOURCES)
            name = f"{res[:-1]}-{rng.randrange(50)}"
            yield {
                **base,
                "event": "kube.request",
                "code": "T3009I",
                "uid": _uid(rng),
                "time": _time(t),
                "login": login,
                "kubernetes_cluster": rng.choice(KCLUSTERS),
                "proto": "kube",
                "namespace": "default",
                "verb": rng.choice(VERBS),
                "request_path": f"/api/v1/namespaces/{ns}/{res}/{name}",
                "resource_api_group": "core/v1",
                "resource_kind": res,
                "resource_name": name,
                "resource_namespace": ns,
                "response_code": rng.choice([200, 200, 201, 403, 404]),
            }
            made += 1
        elif shape < 0.92:  # exec
            cmd = rng.choice(COMMANDS)
            yield {
                **base,
                "event": "exec",
                "code": rng.choice(["T3002I", "T3002E"]),
                "uid": _uid(rng),
                "time": _time(t),
                "login": login,
                "server_id": f"srv-{rng.randrange(200):03d}",
                "command": " ".join(cmd),
                "exitCode": str(rng.choice([0, 1])),
            }
            made += 1
        else:  # user.login
            yield {
                **base,
                "event": "user.login",
                "code": rng.choice(["T1000I", "T1000W"]),
                "uid": _uid(rng),
                "time": _time(t),
                "method": rng.choice(["local", "oidc"]),
                "success": rng.random() < 0.9,
            }
            made += 1


def event_record(fields: dict[str, Any]) -> tuple[Any, ...]:
    """The ``events`` row (COPY column order of :data:`EVENT_COPY_COLUMNS`)."""
    when = parse_time(fields["time"])
    c = event_columns(fields, to_us(when))
    user = fields.get("user")
    sid = fields.get("sid")
    return (
        fields["tenant"],
        fields["uid"],
        when,
        fields["event"],
        fields.get("code", ""),
        sid,
        fields.get("ei"),
        user if isinstance(user, str) else "",
        orjson.dumps(fields).decode(),
        c.time_us,
        c.login,
        c.server_id,
        c.cluster_name,
        c.kubernetes_cluster,
        c.kubernetes_namespace,
        c.kubernetes_resource_kind,
        c.kubernetes_resource_name,
        c.verb,
        c.text_norm,
    )


EVENT_COPY_COLUMNS = [
    "tenant",
    "uid",
    "time",
    "event",
    "code",
    "sid",
    "ei",
    "user_name",
    "body",
    "time_us",
    "login",
    "server_id",
    "cluster_name",
    "kubernetes_cluster",
    "kubernetes_namespace",
    "kubernetes_resource_kind",
    "kubernetes_resource_name",
    "verb",
    "text_norm",
]
SEGMENT_COPY_COLUMNS = [
    "sid",
    "seg_no",
    "tenant",
    "start_ms",
    "end_ms",
    "time_us",
    "text",
    "text_norm",
    "times",
    "user_name",
    "login",
    "server_id",
    "cluster_name",
    "kubernetes_cluster",
]


def generate_output(
    tenant: str, n_sessions: int, seed: int
) -> Iterator[tuple[SessionText, list[Chunk]]]:
    """Synthetic recorded sessions: coloured prompts, commands typed with corrections, output."""
    rng = random.Random(f"{seed}:out:{tenant}")
    for _ in range(n_sessions):
        sid = _uid(rng)
        started = rng.randrange(SPAN_S * 1_000_000)
        user = rng.choice(USERS)
        frames: list[Frame] = []
        off = 0
        for _ in range(rng.randint(3, 12)):
            off += rng.randint(50, 3000)
            frames.append(Frame(off, Stream.OUTPUT, f"\x1b[01;32m{user}@node\x1b[00m:~$ ".encode()))
            cmd = " ".join(rng.choice(COMMANDS))
            for ch in cmd:
                off += rng.randint(20, 200)
                frames.append(Frame(off, Stream.OUTPUT, ch.encode()))
            if rng.random() < 0.3:  # a typo corrected with backspace
                frames.append(Frame(off + 10, Stream.OUTPUT, b"x\x08 \x08"))
                off += 10
            frames.append(Frame(off, Stream.OUTPUT, b"\r\n"))
            for _ in range(rng.randint(0, 4)):
                off += rng.randint(1, 100)
                frames.append(
                    Frame(off, Stream.OUTPUT, (rng.choice(SEGMENT_LINES) + "\r\n").encode())
                )
        chunk = Chunk(tenant, sid, 1, tuple(frames), GENESIS_HASH, GENESIS_HASH, final=True)
        ctx = SessionText(
            tenant=tenant,
            sid=sid,
            started_us=to_us(BASE) + started,
            user=user,
            login=rng.choice(LOGINS),
            server_id=f"srv-{rng.randrange(200):03d}",
            cluster_name=rng.choice(CLUSTERS),
        )
        yield ctx, [chunk]


def segment_record(g: Any) -> tuple[Any, ...]:
    return (
        g.sid,
        g.seg_no,
        g.tenant,
        g.start_ms,
        g.end_ms,
        g.time_us,
        g.text,
        g.text_norm,
        list(g.times),
        g.user,
        g.login,
        g.server_id,
        g.cluster_name,
        g.kubernetes_cluster,
    )


async def _copy_with_indexes_dropped(
    conn: Any,
    dsn: str,
    table: str,
    columns: Sequence[str],
    records: Iterator[tuple[Any, ...]],
    *,
    batch: int = 100_000,
) -> int:
    """COPY into ``table`` with its non-unique indexes dropped, then re-create them."""
    defs = await conn.fetch(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i"
        " JOIN pg_class c ON c.relname = i.indexname"
        " JOIN pg_index x ON x.indexrelid = c.oid"
        " WHERE i.tablename = $1 AND NOT x.indisunique",
        table,
    )
    for d in defs:
        await conn.execute(f'DROP INDEX "{d["indexname"]}"')
    n = 0
    chunk: list[tuple[Any, ...]] = []
    for r in records:
        chunk.append(r)
        if len(chunk) >= batch:
            await conn.copy_records_to_table(table, records=chunk, columns=list(columns))
            n += len(chunk)
            chunk = []
    if chunk:
        await conn.copy_records_to_table(table, records=chunk, columns=list(columns))
        n += len(chunk)
    await conn.execute("SET maintenance_work_mem = '256MB'")
    # Two cores: build two indexes at once.
    sem = asyncio.Semaphore(2)

    async def build(sql: str) -> None:
        async with sem:
            c2 = await pg.connect(dsn)
            try:
                await c2.execute("SET maintenance_work_mem = '256MB'")
                await c2.execute(sql)
            finally:
                await c2.close()

    # pg_indexes shows a partitioned index as "ON ONLY parent", which would not recurse.
    await asyncio.gather(*(build(d["indexdef"].replace(" ON ONLY ", " ON ")) for d in defs))
    return n


async def persist_records(
    dsn: str, settings: Settings, topic_values: Sequence[tuple[str, bytes]]
) -> None:
    """Run records through the persist worker's write path (decode, validate, compress, one
    transaction per batch), as if polled from Kafka."""
    records = [Record(topic, 0, i, None, value) for i, (topic, value) in enumerate(topic_values)]
    batch = prepare_batch(records, settings, Compressor(settings.zstd_level))
    assert not batch.rejects, batch.rejects
    conn = await pg.connect(dsn)
    try:
        parts = await known_partitions(conn)
        await store_batch(conn, batch, partitions=parts)
    finally:
        await conn.close()


async def load_fixtures(dsn: str, settings: Settings, tenant: str = FIXTURE_TENANT) -> str:
    """The Teleport fixtures through the importers and the persist path; returns the sid."""
    events = load_teleport_events(FIXTURES / "events.jsonl", tenant=tenant)
    rec = load_recording("teleport", FIXTURES / "session.tar", tenant=tenant)
    chunks = list(recording_chunks(rec, tenant=tenant, max_bytes=64 * 1024))
    items = [(settings.topic_events, orjson.dumps(e)) for e in events]
    items += [(settings.topic_chunks, encode_chunk(c)) for c in chunks]
    await persist_records(dsn, settings, items)
    return rec.sid


async def build_corpus(
    dsn: str,
    settings: Settings,
    *,
    tenants: dict[str, int] | None = None,
    seed: int = SEED,
    output_sessions: int = 400,
) -> CorpusInfo:
    """Load the whole corpus into the (migrated, empty) database at ``dsn``."""
    tenants = TENANTS if tenants is None else tenants
    info = CorpusInfo(dsn)
    conn = await pg.connect(dsn)
    try:
        t0 = time.monotonic()
        months = {month_of(BASE + timedelta(seconds=s)) for s in range(0, SPAN_S + 86400, 86400)}
        await ensure_partitions(conn, {m for m in months if m}, await known_partitions(conn))

        def events() -> Iterator[tuple[Any, ...]]:
            for tenant, n in tenants.items():
                for f in generate_events(tenant, n, seed):
                    yield event_record(f)
                info.events[tenant] = n

        await _copy_with_indexes_dropped(conn, dsn, "events", EVENT_COPY_COLUMNS, events())
        info.seconds["events"] = time.monotonic() - t0
        t1 = time.monotonic()

        def segments() -> Iterator[tuple[Any, ...]]:
            for tenant in tenants:
                count = 0
                for ctx, chunks in generate_output(tenant, output_sessions, seed):
                    for g in render_session(ctx, chunks).segments:
                        count += 1
                        yield segment_record(g)
                info.segments[tenant] = count

        await _copy_with_indexes_dropped(
            conn, dsn, "text_segments", SEGMENT_COPY_COLUMNS, segments()
        )
        info.seconds["segments"] = time.monotonic() - t1
        await conn.execute("ANALYZE events")
        await conn.execute("ANALYZE text_segments")
    finally:
        await conn.close()
    t2 = time.monotonic()
    info.fixture_sid = await load_fixtures(dsn, settings)
    info.seconds["fixtures"] = time.monotonic() - t2
    return info


def session_chunks(
    tenant: str,
    sid: str,
    frames: Sequence[Frame],
    *,
    started_at: str,
    user: str = "alice",
    per_chunk: int = 5,
) -> list[Chunk]:
    """Hash-chained chunks of a session (chunk 0 opens it, the last is final)."""
    out: list[Chunk] = []
    prev = GENESIS_HASH
    groups = [tuple(frames[i : i + per_chunk]) for i in range(0, len(frames), per_chunk)]
    info = SessionInfo(started_at, 80, 24, user=user)
    all_groups: list[tuple[Frame, ...]] = [(), *groups]
    for seq, fr in enumerate(all_groups):
        last = seq == len(all_groups) - 1
        h = chain_hash(prev, sid, seq, fr)
        out.append(
            Chunk(
                tenant, sid, seq, fr, prev, h, last, 0 if last else None, info if seq == 0 else None
            )
        )
        prev = h
    return out
