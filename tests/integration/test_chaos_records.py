"""No poison pill in any consumer: oversized, truncated, random, mutated and header-heavy records
on both topics, interleaved with good sessions and events on the same partitions, while every
consumer runs (persist, segmenter, index, detect, a SIEM sink).

Shown: every good session stored byte-exact, every good event delivered, every bad record
dead-lettered by the persist worker (and by the sink for events) with a reason, every group's
lag back to 0, and no worker stalled. Real broker, PostgreSQL and OpenSearch-compatible server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.deadletter import iter_deadletters
from ingest.health import RUNNING
from ingest.index_worker import IndexWorker
from ingest.kafka import make_producer
from ingest.persist import PersistWorker
from ingest.runtime import run_blocking
from ingest.segmenter import Segmenter
from schemas import encode_chunk
from schemas.codec import CHUNK_MAGIC
from sessionvault.settings import Settings
from siem.config import parse_siem_config
from siem.detect import DetectWorker
from tests.integration.persist_helpers import build_session, group_lag, stored_payloads
from tests.integration.siem_support import make_events, running_sink

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

Item = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]  # topic, key, value, hdrs


def _flip(rng: random.Random, value: bytes, n: int) -> bytes:
    b = bytearray(value)
    for _ in range(n):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def hostile(
    rng: random.Random, s: Settings, keys: list[bytes], chunk: bytes, event: bytes
) -> list[Item]:
    """Bad records of every class, keyed like the good sessions so they share partitions."""
    c, e = s.topic_chunks, s.topic_events
    heavy = [(f"h{i}", rng.randbytes(512)) for i in range(200)]  # ~100 KiB of headers

    def k() -> bytes:
        return rng.choice(keys)

    out: list[Item] = [
        # oversized: far over max_record_bytes (the broker accepts it)
        (c, k(), CHUNK_MAGIC + rng.randbytes(10 * 1024 * 1024), []),
        (e, k(), b'{"event":"x","pad":"' + b"A" * (10 * 1024 * 1024) + b'"}', []),
        # empty and null values, a null key
        (c, k(), b"", []),
        (e, k(), None, []),
        (e, None, b"{}", []),
        # header-heavy
        (c, k(), rng.randbytes(300), heavy),
        (e, k(), b"not json", heavy),
        # JSON that is hostile to parsers
        (e, k(), b"[" * 5000 + b"]" * 5000, []),
        (e, k(), b'{"sv_version":1,"tenant":"t","event":"exec","uid":"u","time":1e999}', []),
        (e, k(), b'{"sv_version":1,"tenant":"t","uid":"' + b"\xff\xfe" * 10 + b'"}', []),
        (e, k(), orjson.dumps({"sv_version": 10**18, "tenant": s.tenant}), []),
        (c, k(), CHUNK_MAGIC + b"\xff\xff\xff\xff" + b"{}", []),
        (c, k(), CHUNK_MAGIC + b"\x00\x00\x00\x10" + b'{"seq":1e400}', []),
    ]
    for _ in range(6):  # truncated
        out.append((c, k(), chunk[: rng.randrange(1, len(chunk))], []))
        out.append((e, k(), event[: rng.randrange(1, len(event))], []))
    for _ in range(6):  # random, with and without the chunk magic
        out.append((c, k(), rng.randbytes(rng.randrange(1, 4000)), []))
        out.append((c, k(), CHUNK_MAGIC + rng.randbytes(rng.randrange(1, 4000)), []))
        out.append((e, k(), rng.randbytes(rng.randrange(1, 4000)), []))
    for _ in range(6):  # bit flips in an otherwise valid record
        out.append((c, k(), _flip(rng, chunk, rng.randrange(1, 4)), []))
    return out


def _send_all(s: Settings, items: list[Item]) -> list[tuple[str, int, int]]:
    """Produce in order; (topic, partition, offset) of each."""
    producer = make_producer(s, max_request_size=12 * 1024 * 1024)
    try:
        futures = [producer.send(t, key=k, value=v, headers=h or None) for t, k, v, h in items]
        producer.flush(timeout=120)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=5)
    return [(m.topic, m.partition, m.offset) for m in metas]


def _wait(what: str, done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_hostile_records_on_every_topic_end_dead_lettered_and_no_consumer_stalls(
    settings: Settings, tmp_path: Path
) -> None:
    s = dataclasses.replace(
        settings, opensearch_index_prefix=f"cx-{uuid.uuid4().hex[:10]}", worker_stall_after_ms=5000
    )
    rng = random.Random(20261202)
    sessions = [build_session(s.tenant, f"chaos-{i}", 5, rng) for i in range(4)]
    keys = [x.sid.encode() for x in sessions]
    events = make_events(s.tenant, sessions=2, per_session=4)
    good: list[Item] = [
        (s.topic_chunks, c.sid.encode(), encode_chunk(c), []) for x in sessions for c in x.chunks
    ]
    good += [(s.topic_events, e["sid"].encode(), orjson.dumps(e), []) for e in events]
    # A good record may also carry many headers.
    good[1] = (*good[1][:3], [(f"x{i}", b"\x00\xff" * 100) for i in range(100)])
    bad = hostile(rng, s, keys, good[2][2] or b"", good[-1][2] or b"")
    # Interleave, keeping each good session's own order (same key: same partition, in order).
    items: list[Item] = []
    g, b = list(good), list(bad)
    rng.shuffle(b)
    while g or b:
        if g and (not b or rng.random() < 0.6):
            items.append(g.pop(0))
        else:
            items.append(b.pop(0))
    where = _send_all(s, items)
    bad_at = {where[i] for i, it in enumerate(items) if any(it is x for x in bad)}
    bad_events_at = {w for w in bad_at if w[0] == s.topic_events}

    sink_name = f"chaos-{s.tenant[-8:]}"
    out = tmp_path / "sink.jsonl"
    cfg = parse_siem_config(
        f'[[sink]]\nname = "{sink_name}"\ntype = "jsonl"\nformat = "ecs"\npath = "{out}"\n'.encode()
    ).sinks[0]
    detect = DetectWorker(s, group_id=f"detect-{s.tenant[-8:]}")
    persist = PersistWorker(s)
    index = IndexWorker(s)
    segmenter = Segmenter(s, poll_s=0.2)
    groups = {
        "persist": [s.topic_chunks, s.topic_events],
        "index": [s.topic_chunks, s.topic_events],
        detect.group_id: [s.topic_events],
        f"siem-{sink_name}": [s.topic_events],
    }

    def caught_up() -> bool:
        for group, topics in groups.items():
            lag = group_lag(s, group)
            if any(lag.get(t) != 0 for t in topics):
                return False
        return True

    async def run_async(stop: asyncio.Event, done: threading.Event) -> None:
        tasks = [
            asyncio.create_task(persist.run(stop=stop)),
            asyncio.create_task(segmenter.run(stop=stop)),
            asyncio.create_task(index.run(stop=stop)),
        ]
        while not done.is_set():
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

    done = threading.Event()
    stop_detect = threading.Event()
    errors: list[BaseException] = []

    def guard(fn: Callable[[], Any]) -> Callable[[], None]:
        def target() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return target

    loop_thread = threading.Thread(
        target=guard(lambda: asyncio.run(run_async(asyncio.Event(), done))), daemon=True
    )
    detect_thread = threading.Thread(
        target=guard(lambda: run_blocking(lambda ev: detect.run(stop=ev), stop_detect)),
        daemon=True,
    )
    verdicts: dict[str, Any] = {}
    try:
        with running_sink(s, cfg, state_home=tmp_path) as sink:
            loop_thread.start()
            detect_thread.start()
            _wait("every group caught up", lambda: caught_up() or bool(errors), 240)
            assert not errors, errors
            for name, w in (("persist", persist), ("index", index), ("segmenter", segmenter),
                            ("detect", detect), ("sink", sink.worker)):  # fmt: skip
                verdicts[name] = w.health.verdict()
    finally:
        done.set()
        stop_detect.set()
        loop_thread.join(90)
        detect_thread.join(90)
    assert not errors, errors
    assert {n: v.state for n, v in verdicts.items()} == dict.fromkeys(verdicts, RUNNING)

    # Every good session stored byte-exact.
    stored = asyncio.run(stored_payloads(s.postgres_dsn.get()))
    for x in sessions:
        assert stored[x.sid][1] == x.payload, x.sid
    # Every good event delivered (terminal-output "print" events are skipped by default; the
    # detect worker's alerts may come along).
    delivered = {orjson.loads(line)["event"]["id"] for line in out.read_bytes().splitlines()}
    assert {e["uid"] for e in events if e["event"] != "print"} <= delivered
    # Every bad record dead-lettered with a reason: by the persist worker, and events by the sink.
    letters = list(iter_deadletters(s))
    by_worker: dict[str, set[tuple[str, int, int]]] = {}
    for d in letters:
        assert d.reason, d
        by_worker.setdefault(d.worker, set()).add(
            (d.source_topic, d.source_partition, d.source_offset)
        )
    assert by_worker.get("persist") == bad_at
    assert by_worker.get(f"siem-{sink_name}") == bad_events_at
    assert set(by_worker) == {"persist", f"siem-{sink_name}"}
