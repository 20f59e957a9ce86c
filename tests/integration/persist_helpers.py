"""Helpers of the persist worker's integration tests: build sessions, produce, drain, read back.

Everything here talks to the real servers of the ``settings`` fixture.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ingest.kafka import make_producer
from ingest.persist import BatchReport, PersistWorker
from ingest.segmenter import Segmenter
from ingest.topics import consumer_lag
from schemas import GENESIS_HASH, Chunk, Frame, SessionInfo, Stream, chain_hash, encode_chunk
from schemas.frameindex import unpack_frames
from sessionvault.settings import Settings
from storage import pg
from storage.codec import Decompressor, load_index

AWKWARD = b"\x00\xff\xfe\x1b[31mred\x1b[0m\r\n\xc3\x28 bad utf8 \x80\x00"


@dataclass
class Session:
    """A produced session: its chunks and the exact bytes/frames they carry."""

    tenant: str
    sid: str
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def payload(self) -> bytes:
        return b"".join(c.payload for c in self.chunks)

    @property
    def frames(self) -> list[Frame]:
        return [f for c in self.chunks for f in c.frames]


def build_session(
    tenant: str,
    sid: str,
    n_chunks: int,
    rng: random.Random,
    *,
    sizes: tuple[int, ...] = (1, 60, 700, 3000),
    final: bool = True,
    user: str = "alice",
) -> Session:
    """``n_chunks`` hash-chained chunks: chunk 0 opens (no frames), the last is final."""
    s = Session(tenant, sid)
    prev = GENESIS_HASH
    offset = 0
    for seq in range(n_chunks):
        frames: tuple[Frame, ...] = ()
        if seq > 0:
            out = []
            for _ in range(rng.randint(1, 3)):
                offset += rng.randint(0, 400)
                n = rng.choice(sizes)
                # Mostly terminal-like text with raw, invalid-UTF-8 and NUL bytes mixed in.
                data = (AWKWARD + rng.randbytes(8) + b"$ ls -la\r\n" * 8) * (n // 100 + 1)
                out.append(Frame(offset, rng.choice([Stream.OUTPUT, Stream.INPUT]), data[:n]))
            if seq % 7 == 3:
                out.append(Frame(offset, Stream.RESIZE, b"120x40"))
            frames = tuple(out)
        info = SessionInfo("2026-11-21T10:00:00Z", 80, 24, user=user) if seq == 0 else None
        last = final and seq == n_chunks - 1
        h = chain_hash(prev, sid, seq, frames)
        s.chunks.append(Chunk(tenant, sid, seq, frames, prev, h, last, 0 if last else None, info))
        prev = h
    return s


def produce(settings: Settings, topic: str, items: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Produce (key, value) records and wait for every acknowledgement; return the count."""
    producer = make_producer(settings)
    n = 0
    try:
        futures = []
        for key, value in items:
            futures.append(producer.send(topic, key=key, value=value))
            n += 1
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=10)
    finally:
        producer.close(timeout=5)
    return n


def produce_sessions(settings: Settings, sessions: Iterable[Session]) -> int:
    return produce(
        settings,
        settings.topic_chunks,
        ((s.sid.encode(), encode_chunk(c)) for s in sessions for c in s.chunks),
    )


def group_lag(settings: Settings, group: str = "persist") -> dict[str, int]:
    """Committed lag of ``group`` per topic (topics with no commit yet are absent)."""
    rows = consumer_lag(settings.kafka_bootstrap, groups=[group])
    return {r.topic: r.lag for r in rows}


def drained(settings: Settings, topics: Iterable[str], group: str = "persist") -> bool:
    lag = group_lag(settings, group)
    return all(t in lag and lag[t] == 0 for t in topics)


async def run_until_drained(
    settings: Settings,
    topics: Iterable[str],
    *,
    group: str = "persist",
    timeout_s: float = 90.0,
    on_batch: Callable[[BatchReport], object] | None = None,
    insert_method: str = "unnest",
    segments: bool = True,
) -> PersistWorker:
    """Run an in-process persist worker until the group's committed lag is 0 on ``topics``
    and, with ``segments`` (the default), a segmenter beside it until every stored chunk is
    rendered into text segments (the segment queue is empty)."""
    wanted = list(topics)
    worker = PersistWorker(settings, group_id=group, insert_method=insert_method)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop=stop, on_batch=on_batch))
    seg = Segmenter(settings, poll_s=0.2) if segments else None
    seg_task = asyncio.create_task(seg.run(stop=stop)) if seg is not None else None
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            await asyncio.sleep(1.0)
            for t in (task, seg_task):
                if t is not None and t.done():
                    t.result()
                    raise AssertionError("a worker returned before it was stopped")
            if await asyncio.to_thread(drained, settings, wanted, group):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"lag not 0 after {timeout_s}s: {group_lag(settings, group)}")
        if seg is not None:
            await segments_caught_up(settings, timeout_s=max(10.0, deadline - time.monotonic()))
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*(t for t in (task, seg_task) if t is not None)), 30)
    return worker


async def segments_caught_up(settings: Settings, *, timeout_s: float = 60.0) -> None:
    """Wait until the segment queue is empty (a segmenter must be running)."""
    deadline = time.monotonic() + timeout_s
    dsn = settings.postgres_dsn.get()
    while (await fetch_all(dsn, "SELECT count(*) AS n FROM segment_queue"))[0]["n"]:
        if time.monotonic() > deadline:
            raise AssertionError(f"segment queue not empty after {timeout_s}s")
        await asyncio.sleep(0.2)


async def run_segmenter_until_caught_up(settings: Settings) -> Segmenter:
    """Render every queued session with an in-process segmenter (no Kafka involved)."""
    seg = Segmenter(settings)
    try:
        await seg.catch_up()
    finally:
        await seg.close()
    return seg


async def fetch_all(dsn: str, sql: str, *args: object) -> list[dict[str, Any]]:
    conn = await pg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def stored_sessions(dsn: str) -> dict[str, dict[str, Any]]:
    rows = await fetch_all(dsn, "SELECT * FROM sessions")
    for r in rows:
        r.pop("updated_at")
    return {str(r["sid"]): r for r in rows}


async def stored_payloads(dsn: str) -> dict[str, tuple[list[int], bytes, list[Frame]]]:
    """Per sid: seqs in order, the reassembled payload, the frames (all decompressed)."""
    conn = await pg.connect(dsn)
    try:
        dicts = {r["id"]: bytes(r["data"]) for r in await conn.fetch("SELECT * FROM zstd_dicts")}
        rows = await conn.fetch(
            "SELECT sid, seq, codec, dict_id, raw_len, payload, frames FROM chunks"
            " ORDER BY sid, seq"
        )
    finally:
        await conn.close()
    dec = Decompressor(dicts)
    out: dict[str, tuple[list[int], bytes, list[Frame]]] = {}
    for r in rows:
        data = dec.decompress(r["codec"], r["dict_id"], bytes(r["payload"]), r["raw_len"])
        seqs, payload, frames = out.get(r["sid"], ([], b"", []))
        frames = frames + unpack_frames(load_index(bytes(r["frames"])), data)
        out[r["sid"]] = ([*seqs, r["seq"]], payload + data, frames)
    return out


def produce_located(
    settings: Settings, topic: str, items: Iterable[tuple[bytes | None, bytes]]
) -> list[tuple[int, int]]:
    """Like :func:`produce`, returning each record's (partition, offset) in order."""
    producer = make_producer(settings)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in items]
        producer.flush(timeout=60)
        metas = [f.get(timeout=10) for f in futures]
    finally:
        producer.close(timeout=5)
    return [(m.partition, m.offset) for m in metas]
