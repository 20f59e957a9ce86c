"""The persist worker's pure decisions: session opening, rejects, counters, integrity, events."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from ingest.consumer import Record, next_offsets
from ingest.deadletter import deadletter_headers, parse_deadletter
from ingest.persist import prepare_batch
from schemas import (
    GENESIS_HASH,
    AuditEvent,
    Chunk,
    Frame,
    SessionInfo,
    Stream,
    chain_hash,
    encode_chunk,
)
from schemas.frameindex import pack_chunk, unpack_chunk
from sessionvault.backoff import backoff_ms
from sessionvault.errors import ValidationError
from sessionvault.settings import Settings
from storage.codec import Compressor, Decompressor
from storage.persist_logic import (
    ChunkRow,
    PreparedChunk,
    SessionState,
    check_chunk_storable,
    classify_chunks,
    conflicting_rows,
    event_row,
    fold_inserted,
    judge_repeats,
    month_bounds,
    month_of,
    opened_state,
    partition_name,
)

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def chain(sid: str, n: int, tenant: str = "acme", *, final: bool = False) -> list[Chunk]:
    out: list[Chunk] = []
    prev = GENESIS_HASH
    for seq in range(n):
        frames = (Frame(seq * 10, Stream.OUTPUT, f"out {seq}\r\n".encode()),) if seq else ()
        info = SessionInfo("2026-11-21T10:00:00Z", 80, 24, user="alice") if seq == 0 else None
        h = chain_hash(prev, sid, seq, frames)
        last = final and seq == n - 1
        out.append(
            Chunk(tenant, sid, seq, frames, prev, h, last, 3 if last else None, session=info)
        )
        prev = h
    return out


def prep(chunks: list[Chunk], start_ref: int = 0) -> list[PreparedChunk]:
    return [
        PreparedChunk(
            start_ref + i,
            pack_chunk(c),
            1,
            None,
            b"z" * max(1, c.payload_len // 2),
            b"",
            c.payload_len,
        )
        for i, c in enumerate(chunks)
    ]


def existing(sid: str, tenant: str = "acme", **kw: object) -> dict[str, SessionState]:
    return {sid: SessionState(sid=sid, tenant=tenant, started_at=T0, **kw)}  # type: ignore[arg-type]


def test_seq0_then_seq1_in_one_batch_opens_the_session_and_stores_both() -> None:
    plan = classify_chunks({}, prep(chain("s", 2)))
    assert [o.sid for o in plan.opens] == ["s"]
    assert [r.prepared.seq for r in plan.rows] == [0, 1]
    assert plan.rejects == []


def test_seq1_before_its_seq0_in_the_batch_is_unknown_session() -> None:
    c0, c1 = chain("s", 2)
    plan = classify_chunks({}, prep([c1, c0]))
    assert [(r.ref, r.reason) for r in plan.rejects] == [(0, "unknown_session")]
    assert [r.prepared.seq for r in plan.rows] == [0]


def test_chunk_of_a_never_opened_session_is_rejected_as_unknown_session() -> None:
    plan = classify_chunks({}, prep(chain("s", 3)[1:]))
    assert {r.reason for r in plan.rejects} == {"unknown_session"}
    assert plan.rows == []
    assert plan.opens == []


def test_chunk_with_another_tenant_than_the_session_is_tenant_mismatch() -> None:
    chunks = chain("s", 3, tenant="evil")
    plan = classify_chunks(existing("s", tenant="acme"), prep(chunks))
    assert [r.reason for r in plan.rejects] == ["tenant_mismatch"] * 3
    assert plan.rows == []


def test_same_chunk_twice_in_a_batch_is_offered_once_and_the_repeat_is_a_duplicate() -> None:
    c = chain("s", 2)
    plan = classify_chunks({}, prep([c[0], c[1], c[1]]))
    assert len(plan.rows) == 2
    assert [p.ref for p in plan.repeats] == [2]
    assert judge_repeats(plan.repeats, {("s", 1): c[1].hash}) == ([], 1)


def _forged(c: Chunk) -> Chunk:
    frames = (Frame(1, Stream.OUTPUT, b"other bytes"),)
    return Chunk(c.tenant, c.sid, c.seq, frames, c.prev_hash,
                 chain_hash(c.prev_hash, c.sid, c.seq, frames))  # fmt: skip


def test_same_seq_with_other_content_in_a_batch_is_rejected_as_a_conflict_first_copy_kept() -> None:
    c = chain("s", 2)
    plan = classify_chunks({}, prep([c[0], c[1], _forged(c[1])]))
    assert [unpack_chunk(r.prepared.chunk) for r in plan.rows] == [c[0], c[1]]
    assert plan.rejects == []
    rejects, dups = judge_repeats(plan.repeats, {("s", 1): c[1].hash})
    assert ([(r.ref, r.reason) for r in rejects], dups) == ([(2, "conflicting_duplicate")], 0)
    assert f"stored hash {c[1].hash[:16]}" in rejects[0].message


def test_a_forgery_before_a_redelivery_of_a_stored_chunk_is_the_conflict_not_the_redelivery() -> (
    None
):
    c = chain("s", 3)
    forged = _forged(c[1])
    # c[1] is stored; the batch brings a forged seq 1, then c[1] again (a redelivery).
    plan = classify_chunks(existing("s"), prep([forged, c[1]]))
    assert [unpack_chunk(r.prepared.chunk) for r in plan.rows] == [forged]
    stored = {("s", 1): c[1].hash}  # the database kept its chunk: nothing was inserted
    conflicts = conflicting_rows(plan.rows, [], stored)
    assert [(r.ref, r.reason) for r in conflicts] == [(0, "conflicting_duplicate")]
    assert f"stored hash {c[1].hash[:16]}" in conflicts[0].message
    assert judge_repeats(plan.repeats, stored) == ([], 1)  # the redelivery is silent


def test_not_inserted_rows_conflict_only_when_the_stored_hash_differs() -> None:
    c = chain("s", 3)
    forged = _forged(c[2])
    rows = [ChunkRow(p, 0, 0) for p in prep([c[0], c[1], forged])]
    stored = {("s", 1): c[1].hash, ("s", 2): c[2].hash}
    # c[0] was inserted now; c[1] is stored with the same hash (a redelivery); forged is seq 2,
    # stored with another hash.
    rejects = conflicting_rows(rows, [rows[0]], stored)
    assert [(r.ref, r.reason) for r in rejects] == [(2, "conflicting_duplicate")]
    assert "seq 2" in rejects[0].message


def test_empty_chunk_sits_at_the_session_end_so_far() -> None:
    chunks = chain("s", 3, final=True)
    bare_final = Chunk(
        "acme", "s", 3, (), chunks[-1].hash, chain_hash(chunks[-1].hash, "s", 3, ()), True, 0
    )
    plan = classify_chunks({}, prep([*chunks, bare_final]))
    last = plan.rows[-1]
    assert (last.first_offset_ms, last.last_offset_ms) == (20, 20)


def test_fold_counts_only_inserted_rows_and_tracks_last_hash() -> None:
    chunks = chain("s", 4)
    plan = classify_chunks({}, prep(chunks))
    states = {"s": opened_state(plan.opens[0])}
    changed = fold_inserted(states, plan.rows[:3])
    st = changed["s"]
    assert st.chunks == 3
    assert st.bytes == sum(c.payload_len for c in chunks[:3])
    assert st.last_seq == 2
    assert st.last_hash == chunks[2].hash
    assert st.integrity == "ok"
    assert st.duration_ms == 20


def test_fold_of_nothing_inserted_changes_nothing() -> None:
    assert fold_inserted(existing("s", chunks=5, last_seq=4), []) == {}


def test_skipped_seq_marks_gap_and_late_chunk_does_not_move_last_seq() -> None:
    chunks = chain("s", 5)
    prepared = prep(chunks)
    states = existing("s", chunks=2, last_seq=1, last_hash=chunks[1].hash)
    rows = [ChunkRow(prepared[4], 40, 40), ChunkRow(prepared[2], 20, 20)]
    st = fold_inserted(states, rows)["s"]
    assert st.integrity == "gap"
    assert st.last_seq == 4
    assert st.last_hash == chunks[4].hash
    assert st.chunks == 4


def test_wrong_prev_hash_for_the_next_seq_marks_broken_and_broken_outranks_gap() -> None:
    chunks = chain("s", 3)
    forged = Chunk("acme", "s", 2, chunks[2].frames, "f" * 64, chunks[2].hash)
    states = existing("s", chunks=2, last_seq=1, last_hash=chunks[1].hash, integrity="gap")
    st = fold_inserted(states, [ChunkRow(prep([forged])[0], 20, 20)])["s"]
    assert st.integrity == "broken"


def test_final_chunk_closes_session_with_exit_code_and_end_from_duration() -> None:
    chunks = chain("s", 3, final=True)
    plan = classify_chunks({}, prep(chunks))
    st = fold_inserted({"s": opened_state(plan.opens[0])}, plan.rows)["s"]
    assert st.status == "closed"
    assert st.exit_code == 3
    assert st.ended_at == T0 + timedelta(milliseconds=20)


def test_final_chunk_keeps_an_end_time_already_set_by_session_end_event() -> None:
    chunks = chain("s", 2, final=True)
    ended = T0 + timedelta(hours=1)
    states = existing("s", chunks=1, last_seq=0, last_hash=chunks[0].hash, ended_at=ended)
    st = fold_inserted(states, [ChunkRow(prep(chunks)[1], 10, 10)])["s"]
    assert st.ended_at == ended


def test_seq_beyond_int32_is_rejected_before_it_can_fail_a_transaction() -> None:
    c = Chunk("acme", "s", 2**31, (), GENESIS_HASH, GENESIS_HASH)
    with pytest.raises(ValidationError) as err:
        check_chunk_storable(pack_chunk(c))
    assert err.value.reason == "out_of_range"


def test_nul_in_session_metadata_is_rejected() -> None:
    info = SessionInfo("2026-11-21T10:00:00Z", 80, 24, user="al\x00ice")
    c = Chunk("acme", "s", 0, (), GENESIS_HASH, GENESIS_HASH, session=info)
    with pytest.raises(ValidationError) as err:
        check_chunk_storable(pack_chunk(c))
    assert err.value.reason == "wrong_type"


def event(**extra: object) -> AuditEvent:
    fields: dict[str, object] = {
        "sv_version": 1,
        "tenant": "acme",
        "event": "session.start",
        "uid": "u1",
        "time": "2026-11-21T10:00:00.123456789Z",
    }
    fields.update(extra)
    return AuditEvent(fields)


def test_event_row_keeps_body_text_and_parses_time_to_utc() -> None:
    raw = b'{"sv_version":1,"tenant":"acme","event":"session.start","uid":"u1","time":"x"}'
    row = event_row(event(sid="s", ei=4, user="bob", code="T2000I"), raw)
    assert row.body == raw.decode()
    assert row.time == datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC)
    assert (row.sid, row.ei, row.user_name, row.code) == ("s", 4, "bob", "T2000I")


def test_event_with_escaped_nul_in_a_nested_string_is_rejected() -> None:
    with pytest.raises(ValidationError):
        event_row(event(extra={"cmd": ["ls", "a\x00b"]}), b'{"cmd":"a\\u0000b"}')


def test_month_partition_window_sends_far_times_to_default() -> None:
    now = datetime(2026, 11, 21, tzinfo=UTC)
    assert month_of(datetime(2026, 12, 31, 23, 59, tzinfo=UTC), now=now) == (2026, 12)
    assert month_of(datetime(1970, 1, 1, tzinfo=UTC), now=now) is None
    assert month_of(datetime(2031, 1, 1, tzinfo=UTC), now=now) is None
    assert month_bounds(2026, 12) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert partition_name(2026, 3) == "events_y2026m03"


def test_backoff_doubles_then_stays_at_the_cap() -> None:
    assert [backoff_ms(a, 1000) for a in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]
    assert backoff_ms(500, 30_000) == 30_000


def test_next_offsets_are_last_plus_one_per_partition() -> None:
    recs = [
        Record("t", 0, 5, None, b""),
        Record("t", 0, 7, None, b""),
        Record("t", 1, 2, None, b""),
    ]
    assert next_offsets(recs) == {("t", 0): 8, ("t", 1): 3}


def test_deadletter_headers_round_trip_through_parse() -> None:
    src = Record("sv.chunks.v1", 3, 42, b"sid-1", b"\x00\xffraw")
    headers = deadletter_headers(src, "bad_json", "x" * 5000, "persist")
    dl = parse_deadletter(Record("sv.deadletter.v1", 0, 9, src.key, src.value, tuple(headers)))
    assert (dl.reason, dl.source, dl.worker) == ("bad_json", "sv.chunks.v1[3]@42", "persist")
    assert dl.value == b"\x00\xffraw"
    assert dl.key == b"sid-1"
    assert len(dl.error) == 1000


def test_prepare_batch_rejects_bad_records_and_compresses_payload_bytes_exactly() -> None:
    s = Settings(topic_chunks="c", topic_events="e")
    awkward = b"\x00\xff\xfe\x1b[31m\xc3\x28" * 100
    c0 = chain("s", 1)[0]
    frames = (Frame(5, Stream.OUTPUT, awkward), Frame(6, Stream.INPUT, b"ls\r"))
    c1 = Chunk("acme", "s", 1, frames, c0.hash, chain_hash(c0.hash, "s", 1, frames))
    recs = [
        Record("c", 0, 0, b"s", encode_chunk(c0)),
        Record("e", 0, 0, None, b"{nope"),
        Record("c", 0, 1, b"s", encode_chunk(c1)),
        Record("c", 0, 2, b"s", None),
        Record("x", 0, 0, None, b"{}"),
    ]
    batch = prepare_batch(recs, s, Compressor(3))
    assert [(r.ref, r.reason) for r in batch.rejects] == [
        (1, "bad_json"),
        (3, "empty"),
        (4, "unknown_topic"),
    ]
    p = batch.chunks[1]
    assert p.raw_len == len(awkward) + 3
    assert Decompressor().decompress(p.codec, p.dict_id, p.stored, p.raw_len) == awkward + b"ls\r"


def test_a_dead_letter_is_bounded_and_describes_what_it_cut() -> None:
    from ingest.deadletter import bounded_deadletter

    big = Record("sv.chunks.v1", 3, 77, b"k" * 5000, bytes(range(256)) * 400, ())
    key, value, headers = bounded_deadletter(big, "oversize", "too big", "persist", 64 * 1024)
    assert key is not None
    assert value is not None
    size = len(key) + len(value) + sum(len(k) + len(v) for k, v in headers)
    assert size <= 64 * 1024
    assert big.value is not None
    assert big.key is not None
    assert big.value.startswith(value)
    assert big.key.startswith(key)
    d = parse_deadletter(Record("dl", 0, 1, key, value, tuple(headers)))
    assert (d.original_bytes, d.truncated) == (len(big.value), "key,value")
    assert d.original_sha256 == hashlib.sha256(big.value).hexdigest()
    assert d.source == "sv.chunks.v1[3]@77"
    # A record that fits is carried whole, and says so by not saying "truncated".
    small = Record("sv.chunks.v1", 0, 1, b"k", b"v" * 100, ())
    key, value, headers = bounded_deadletter(small, "bad_json", "x", "persist", 64 * 1024)
    assert (key, value) == (small.key, small.value)
    assert "sv-truncated" not in dict(headers)


def test_a_chunk_for_an_abandoned_session_revives_it_and_a_final_one_closes_it() -> None:
    chunks = chain("s", 4, final=True)
    plan = classify_chunks({}, prep(chunks))
    opened = fold_inserted({"s": opened_state(plan.opens[0])}, plan.rows[:2])["s"]
    abandoned = dataclasses.replace(opened, status="abandoned", ended_at=T0)
    revived = fold_inserted({"s": abandoned}, plan.rows[2:3])["s"]
    assert (revived.status, revived.ended_at, revived.last_seq) == ("active", None, 2)
    closed = fold_inserted({"s": abandoned}, plan.rows[2:])["s"]
    assert closed.status == "closed"
    assert closed.ended_at is not None
    assert closed.ended_at != T0  # at its last frame, not where it was given up


def test_offset_beyond_int64_is_rejected_before_it_can_fail_a_transaction() -> None:
    frames = (Frame(2**63, Stream.OUTPUT, b"x"),)
    c = Chunk("acme", "s", 1, frames, GENESIS_HASH, chain_hash(GENESIS_HASH, "s", 1, frames))
    with pytest.raises(ValidationError) as err:
        check_chunk_storable(pack_chunk(c))
    assert err.value.reason == "out_of_range"
