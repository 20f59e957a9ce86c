"""SDK against the real broker: byte-exact chunks, spool while the broker is down, drain."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from deploy.stack import LocalStack
from ingest.sdk import AuditEmitter, SessionRecorder, Transport, drain_spool
from ingest.spool import list_segments, owner_dirs
from schemas import Chunk, SessionInfo, decode_chunk, decode_event, verify_chain
from sessionvault.settings import Settings

pytestmark = pytest.mark.integration

AWKWARD = b"\x1b[1;31mred\x1b[0m \x00\xff\xfe\xc3\x28 \r\n"
INFO = SessionInfo("2026-11-21T10:00:00.000Z", 80, 24, user="alice", login="root")


def consume_all(settings: Settings, topic: str, *, idle_s: float = 2.0) -> list[Any]:
    """Every record of ``topic`` (all partitions, from the beginning), with a plain consumer."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None
    )
    try:
        deadline = time.monotonic() + 15
        parts: set[int] | None = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.2)
        assert parts, f"topic {topic} has no partitions"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            batch = consumer.poll(200)
            for records in batch.values():
                out.extend(records)
                last = time.monotonic()
            if all(consumer.position(tp) >= ends[tp] for tp in tps) and out:
                # Give late records a short chance, then stop.
                idle_s = min(idle_s, 0.5)
        return out
    finally:
        consumer.close()


def chunks_of(records: list[Any], sid: str) -> list[Chunk]:
    chunks = [decode_chunk(r.value) for r in records if r.key == sid.encode()]
    return sorted(chunks, key=lambda c: c.seq)


@pytest.fixture
def transport(settings: Settings) -> Iterator[Transport]:
    t = Transport(settings, retry_interval_s=0.3)
    try:
        yield t
    finally:
        t.close(5)


def test_recorder_chunks_read_back_byte_exact_with_valid_chain(
    settings: Settings, transport: Transport
) -> None:
    rec = SessionRecorder(settings, INFO, sid="s-exact", transport=transport)
    written = b""
    for i in range(300):
        data = AWKWARD + b"line %d " % i + bytes(range(256))
        rec.output(data)
        written += data
    rec.resize(120, 40)
    rec.close(7)
    assert transport.flush(20)

    chunks = chunks_of(consume_all(settings, settings.topic_chunks), "s-exact")
    ok, msg = verify_chain(chunks)
    assert ok, msg
    assert chunks[0].session == INFO
    assert chunks[-1].final
    assert chunks[-1].exit_code == 7
    assert b"".join(f.data for c in chunks for f in c.frames if f.stream == "o") == written
    assert [f.data for c in chunks for f in c.frames if f.stream == "r"] == [b"120x40"]
    assert all(c.payload_len <= settings.chunk_max_bytes for c in chunks)


def test_audit_emitter_fills_defaults_and_keys_by_sid(
    settings: Settings, transport: Transport
) -> None:
    emitter = AuditEmitter(settings, transport=transport)
    sent = emitter.emit({"event": "session.start", "code": "T2000I", "sid": "s-ev", "x": 1})
    sent2 = emitter.emit({"event": "user.login", "code": "T1000I", "user": "bob"})
    assert transport.flush(20)
    records = consume_all(settings, settings.topic_events)
    by_key = {r.key: decode_event(r.value) for r in records}
    ev = by_key[b"s-ev"]
    assert ev.fields == sent
    assert ev.tenant == settings.tenant
    assert ev.fields["sv_version"] == 1
    assert ev.fields["x"] == 1
    assert by_key[sent2["uid"].encode()].fields["user"] == "bob"


def test_broker_outage_spools_without_blocking_and_delivers_exactly_once_in_order(
    settings: Settings, stack: LocalStack, transport: Transport
) -> None:
    rec = SessionRecorder(settings, INFO, sid="s-outage", transport=transport)
    written = b""
    for i in range(50):
        data = b"before %d\r\n" % i
        rec.output(data)
        written += data
    time.sleep(0.2)  # let the linger cut the last pending chunk
    assert transport.flush(20)
    before = chunks_of(consume_all(settings, settings.topic_chunks), "s-outage")
    assert before

    stack.stop_broker()
    try:
        slowest = 0.0
        deadline = time.monotonic() + 30
        i = 0
        while transport.mode != Transport.SPOOL or transport.stats().spooled_bytes == 0:
            assert time.monotonic() < deadline, "transport never switched to the spool"
            data = b"during %d \xff\x00\r\n" % i
            t0 = time.monotonic()
            rec.output(data)
            slowest = max(slowest, time.monotonic() - t0)
            written += data
            i += 1
            time.sleep(0.01)
        for j in range(200):
            data = b"spooled %d %s\r\n" % (j, b"x" * (j % 300))
            t0 = time.monotonic()
            rec.output(data)
            slowest = max(slowest, time.monotonic() - t0)
            written += data
        time.sleep(0.3)
        spooled = transport.stats().spooled_bytes
        assert spooled > 0
        assert list_segments(transport.spool.dir)
        # The producer's metadata wait is 2 s: a write that waited on Kafka would show it.
        assert slowest < 1.0, f"a write blocked for {slowest:.2f}s while the broker was down"
    finally:
        stack.start_broker(same_port=True)
        stack.ensure_topics(settings)
    rec.close(0)
    assert transport.flush(60), f"spool not drained: {transport.stats()}"
    assert not list_segments(transport.spool.dir)

    after = chunks_of(consume_all(settings, settings.topic_chunks), "s-outage")
    chunks = before + after
    seqs = [c.seq for c in chunks]
    assert sorted(seqs) == list(range(len(chunks))), "every (sid, seq) exactly once"
    ok, msg = verify_chain(sorted(chunks, key=lambda c: c.seq))
    assert ok, msg
    assert b"".join(c.payload for c in sorted(chunks, key=lambda c: c.seq)) == written
    assert chunks[-1].final


def test_spool_left_by_dead_producer_is_sent_by_drain(settings: Settings) -> None:
    # A producer that cannot reach any broker (nothing listens on port 9) spools everything.
    dead = dataclasses.replace(settings, kafka_bootstrap="127.0.0.1:9")
    t = Transport(dead, retry_interval_s=60)
    rec = SessionRecorder(dead, INFO, sid="s-drain", transport=t)
    rec.output(AWKWARD)  # pending until close: chunks are seq 0 (open) and seq 1 (final)
    rec.close(0)
    assert t.close(timeout_s=3) is False
    (owner,) = owner_dirs(settings.resolved_spool_dir)
    assert list_segments(owner)

    report = drain_spool(settings)
    assert (report.directories, report.records, report.remaining) == (1, 2, 0)
    chunks = chunks_of(consume_all(settings, settings.topic_chunks), "s-drain")
    assert [c.seq for c in chunks] == [0, 1]
    ok, msg = verify_chain(chunks)
    assert ok, msg
    assert b"".join(c.payload for c in chunks) == AWKWARD
