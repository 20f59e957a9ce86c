"""Dead letters: every kind of bad record lands in the dead-letter topic with its reason and its
ORIGINAL bytes, and the valid records around it are stored (the worker keeps going)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import struct

import orjson
import pytest
from click.testing import CliRunner

from ingest.deadletter import iter_deadletters
from schemas import Chunk, Frame, Stream, chain_hash, encode_chunk, encode_event
from schemas.codec import CHUNK_MAGIC
from sessionvault.cli import main
from sessionvault.settings import Settings
from tests.integration.persist_helpers import (
    build_session,
    fetch_all,
    produce_located,
    run_until_drained,
    stored_payloads,
    stored_sessions,
)

pytestmark = pytest.mark.integration


def with_header(value: bytes, **changes: object) -> bytes:
    """A chunk record with its JSON header edited (payload untouched)."""
    (hlen,) = struct.unpack_from(">I", value, 4)
    header = orjson.loads(value[8 : 8 + hlen])
    header.update(changes)
    h = orjson.dumps(header)
    return CHUNK_MAGIC + struct.pack(">I", len(h)) + h + value[8 + hlen :]


def test_each_bad_record_is_dead_lettered_with_reason_and_original_bytes(
    settings: Settings,
) -> None:
    tenant = settings.tenant
    rng = random.Random(11)
    good = build_session(tenant, "good", 6, rng)
    victim = build_session(tenant, "victim", 4, rng)
    orphan = build_session(tenant, "orphan", 3, rng)
    c1 = victim.chunks[1]
    intruder = Chunk("intruder", "victim", 1, c1.frames, c1.prev_hash, c1.hash)
    big_frames = (Frame(1, Stream.OUTPUT, b"\x1b" * (300 * 1024)),)
    big = Chunk(
        tenant, "good", 99, big_frames, "0" * 64, chain_hash("0" * 64, "good", 99, big_frames)
    )
    g1 = good.chunks[1]
    other_frames = (Frame(5, Stream.OUTPUT, b"not what was recorded\r\n"),)
    # Same (sid, seq) as a stored chunk, other content, a valid hash of its own: a conflict.
    forged = Chunk(
        tenant, "good", 1, other_frames, g1.prev_hash,
        chain_hash(g1.prev_hash, "good", 1, other_frames),
    )  # fmt: skip
    tampered = bytearray(encode_chunk(good.chunks[2]))
    tampered[-1] ^= 0xFF

    # (key, value, expected reason or None for valid) in produce order; keys keep sessions
    # on one partition, so order within a session is kept.
    chunk_items: list[tuple[bytes, bytes, str | None]] = [
        (b"good", encode_chunk(good.chunks[0]), None),
        (b"good", encode_chunk(good.chunks[1]), None),
        (b"good", encode_chunk(good.chunks[1]), None),  # redelivered: a silent duplicate
        (b"good", encode_chunk(forged), "conflicting_duplicate"),
        (b"good", with_header(encode_chunk(good.chunks[2]), sv_version=3), "unknown_version"),
        (b"good", bytes(tampered), "bad_hash"),
        (b"good", with_header(encode_chunk(good.chunks[2]), seq="2"), "wrong_type"),
        (b"good", encode_chunk(big), "oversize"),
        (b"good", b"SVCK\x00\x00\x00\x05{nope", "bad_json"),
        *((b"good", encode_chunk(c), None) for c in good.chunks[2:]),
        (b"victim", encode_chunk(victim.chunks[0]), None),
        (b"victim", encode_chunk(intruder), "tenant_mismatch"),
        *((b"victim", encode_chunk(c), None) for c in victim.chunks[1:]),
        *((b"orphan", encode_chunk(c), "unknown_session") for c in orphan.chunks[1:]),
        (b"good", encode_chunk(forged), "conflicting_duplicate"),  # in a later batch
    ]
    ev = {"sv_version": 1, "tenant": tenant, "event": "user.login", "time": "2026-11-21T10:00:00Z"}
    event_items: list[tuple[bytes | None, bytes, str | None]] = [
        (None, encode_event({**ev, "uid": "ok-1"}), None),
        (None, b'{"sv_version": 1, "tenant": ', "bad_json"),
        (None, encode_event({**ev, "uid": "v2", "sv_version": 2}), "unknown_version"),
        (None, encode_event({**ev, "uid": 5}), "wrong_type"),
        (
            None,
            encode_event({k: v for k, v in ev.items() if k != "event"} | {"uid": "m"}),
            "missing_field",
        ),
        (None, encode_event({**ev, "uid": "nul", "cmd": "rm\u0000-rf"}), "wrong_type"),
        (None, encode_event({**ev, "uid": "ok-2"}), None),
    ]
    where_chunks = produce_located(
        settings, settings.topic_chunks, [(k, v) for k, v, _ in chunk_items]
    )
    where_events = produce_located(
        settings, settings.topic_events, [(k, v) for k, v, _ in event_items]
    )

    small = dataclasses.replace(settings, max_record_bytes=256 * 1024)
    asyncio.run(run_until_drained(small, [settings.topic_chunks, settings.topic_events]))

    expected = {
        (settings.topic_chunks, *where_chunks[i]): (reason, value)
        for i, (_, value, reason) in enumerate(chunk_items)
        if reason
    } | {
        (settings.topic_events, *where_events[i]): (reason, value)
        for i, (_, value, reason) in enumerate(event_items)
        if reason
    }
    letters = list(iter_deadletters(settings))
    got = {(d.source_topic, d.source_partition, d.source_offset): d for d in letters}
    assert len(letters) == len(expected)
    assert set(got) == set(expected)
    for where, (reason, value) in expected.items():
        d = got[where]
        assert (d.reason, d.worker) == (reason, "persist"), where
        assert d.value == value, f"{where}: dead letter bytes differ from the original"
        assert d.error
    mismatch = next(i for i, item in enumerate(chunk_items) if item[2] == "tenant_mismatch")
    assert got[(settings.topic_chunks, *where_chunks[mismatch])].key == b"victim"

    dsn = settings.postgres_dsn.get()
    stored = asyncio.run(stored_payloads(dsn))
    assert stored["good"][1] == good.payload
    assert stored["victim"][1] == victim.payload
    assert "orphan" not in stored
    rows = asyncio.run(stored_sessions(dsn))
    assert rows["victim"]["tenant"] == tenant
    assert rows["victim"]["chunks"] == len(victim.chunks)
    uids = asyncio.run(fetch_all(dsn, "SELECT uid FROM events ORDER BY uid"))
    assert [r["uid"] for r in uids] == ["ok-1", "ok-2"]

    result = CliRunner().invoke(main, ["deadletter", "list", "--reason", "bad_json"], obj=settings)
    assert result.exit_code == 0, result.output
    assert result.output.count("bad_json") >= 2
    assert "2 dead letters" in result.output


def test_a_record_larger_than_any_dead_letter_is_dead_lettered_cut_and_the_worker_goes_on(
    settings: Settings,
) -> None:
    """A 10 MiB record the broker accepted (far over max_record_bytes, so no dead letter can
    carry it whole) ends dead-lettered with a prefix, its size and sha256; the session after
    it on the same partition is stored and the group's lag returns to 0."""
    from ingest.kafka import make_producer

    rng = random.Random(3)
    good = build_session(settings.tenant, "after-poison", 4, rng)
    poison = CHUNK_MAGIC + rng.randbytes(10 * 1024 * 1024)
    producer = make_producer(settings, max_request_size=12 * 1024 * 1024)
    try:
        futures = [producer.send(settings.topic_chunks, key=b"after-poison", value=poison)]
        futures += [
            producer.send(settings.topic_chunks, key=b"after-poison", value=encode_chunk(c))
            for c in good.chunks
        ]
        producer.flush(timeout=60)
        where = futures[0].get(timeout=10)
    finally:
        producer.close(timeout=5)

    asyncio.run(run_until_drained(settings, [settings.topic_chunks], timeout_s=120))
    (letter,) = list(iter_deadletters(settings))
    assert (letter.source_partition, letter.source_offset) == (where.partition, where.offset)
    assert letter.reason == "oversize"
    assert letter.truncated == "value"
    assert letter.original_bytes == len(poison)
    assert letter.original_sha256 == hashlib.sha256(poison).hexdigest()
    assert letter.value is not None
    assert 0 < len(letter.value) <= settings.max_record_bytes + 64 * 1024
    assert poison.startswith(letter.value)
    stored = asyncio.run(stored_payloads(settings.postgres_dsn.get()))
    assert stored["after-poison"][1] == good.payload


def test_a_forgery_and_a_redelivery_of_a_stored_chunk_in_one_batch_dead_letter_the_forgery_only(
    settings: Settings,
) -> None:
    rng = random.Random(8)
    good = build_session(settings.tenant, "kept", 3, rng)
    produce_located(
        settings, settings.topic_chunks, [(b"kept", encode_chunk(c)) for c in good.chunks]
    )
    asyncio.run(run_until_drained(settings, [settings.topic_chunks]))
    c1 = good.chunks[1]
    frames = (Frame(5, Stream.OUTPUT, b"not what was recorded\r\n"),)
    forged = Chunk(
        settings.tenant,
        "kept",
        1,
        frames,
        c1.prev_hash,
        chain_hash(c1.prev_hash, "kept", 1, frames),
    )
    where = produce_located(
        settings,
        settings.topic_chunks,
        [(b"kept", encode_chunk(forged)), (b"kept", encode_chunk(c1))],
    )
    # The same group: its next batch is exactly [forgery, redelivery].
    asyncio.run(run_until_drained(settings, [settings.topic_chunks]))
    letters = list(iter_deadletters(settings))
    assert [(d.reason, d.source_offset) for d in letters] == [
        ("conflicting_duplicate", where[0][1])
    ]
    # The hash it names as stored is the one PostgreSQL holds.
    assert f"stored hash {c1.hash[:16]}" in letters[0].error
    stored = asyncio.run(stored_payloads(settings.postgres_dsn.get()))
    assert stored["kept"][1] == good.payload
