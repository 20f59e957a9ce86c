"""ChunkBuilder: seq 0 at open, size and linger cuts, giant-write split, valid hash chain."""

from __future__ import annotations

import pytest

from ingest.batching import FRAME_OVERHEAD, ChunkBuilder, ChunkLimits
from schemas import Chunk, SessionInfo, Stream, decode_chunk, encode_chunk, verify_chain

INFO = SessionInfo("2026-11-21T10:00:00.000Z", 80, 24, user="alice")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def builder(max_bytes: int = 1000, linger_ms: int = 50) -> tuple[ChunkBuilder, FakeClock]:
    clock = FakeClock()
    b = ChunkBuilder("acme", "s-1", INFO, ChunkLimits(max_bytes, linger_ms), clock=clock)
    return b, clock


def test_open_returns_seq0_with_session_info_and_no_frames() -> None:
    b, _ = builder()
    c0 = b.open()
    assert (c0.seq, c0.frames, c0.session, c0.final) == (0, (), INFO, False)
    assert decode_chunk(encode_chunk(c0)) == c0


def test_add_before_open_is_refused() -> None:
    b, _ = builder()
    with pytest.raises(RuntimeError):
        b.add(Stream.OUTPUT, b"x")


def test_small_writes_stay_pending_until_linger_expires() -> None:
    b, clock = builder(linger_ms=50)
    b.open()
    assert b.add(Stream.OUTPUT, b"hello") == []
    clock.t += 0.049
    assert b.add(Stream.OUTPUT, b" world") == []
    assert b.poll() == []
    clock.t += 0.002
    (c,) = b.poll()
    assert c.seq == 1
    assert c.payload == b"hello world"
    assert [f.offset_ms for f in c.frames] == [0, 49]
    assert b.poll() == []


def test_linger_counts_from_first_pending_frame_not_session_start() -> None:
    b, clock = builder(linger_ms=50)
    b.open()
    clock.t += 10.0
    b.add(Stream.OUTPUT, b"late")
    clock.t += 0.030
    assert b.poll() == []
    clock.t += 0.020
    assert len(b.poll()) == 1


def test_size_cut_when_pending_cost_reaches_max_bytes() -> None:
    b, _ = builder(max_bytes=200)
    b.open()
    data = b"a" * (200 - FRAME_OVERHEAD)
    (c,) = b.add(Stream.OUTPUT, data)
    assert c.payload == data
    assert b.pending_bytes == 0


def test_giant_write_is_split_so_no_chunk_exceeds_max_bytes() -> None:
    b, clock = builder(max_bytes=256)
    b.open()
    clock.t += 0.007
    data = bytes(range(256)) * 20  # 5120 bytes, includes NUL and invalid UTF-8
    chunks = b.add(Stream.OUTPUT, data)
    chunks += [b.finish(0)]
    assert all(c.payload_len <= 256 for c in chunks)
    assert b"".join(c.payload for c in chunks) == data
    assert {f.offset_ms for c in chunks for f in c.frames} == {7}
    assert len(chunks) >= 5120 // 256


def test_many_tiny_frames_are_bounded_by_frame_overhead() -> None:
    b, clock = builder(max_bytes=1000)
    b.open()
    out: list[Chunk] = []
    for i in range(500):
        clock.t += 0.001 + (i % 3) * 0.0001  # distinct ms, so frames are not merged
        out += b.add(Stream.OUTPUT if i % 2 else Stream.INPUT, b"x")
    assert out, "cost of frame headers must force cuts"
    assert all(len(c.frames) * (1 + FRAME_OVERHEAD) <= 1000 for c in out)


def test_same_stream_same_millisecond_writes_merge_into_one_frame() -> None:
    b, _ = builder()
    b.open()
    b.add(Stream.OUTPUT, b"ab")
    b.add(Stream.OUTPUT, b"cd")
    b.add(Stream.INPUT, b"x")
    c = b.finish(0)
    frames = [(f.stream, f.data) for f in c.frames]
    assert frames == [(Stream.OUTPUT, b"abcd"), (Stream.INPUT, b"x")]


def test_finish_emits_final_chunk_with_exit_code_and_refuses_more() -> None:
    b, _ = builder()
    b.open()
    b.add(Stream.OUTPUT, b"bye")
    last = b.finish(3)
    assert (last.final, last.exit_code, last.payload) == (True, 3, b"bye")
    with pytest.raises(RuntimeError):
        b.add(Stream.OUTPUT, b"x")


def test_all_chunks_form_a_valid_chain_that_survives_the_wire() -> None:
    b, clock = builder(max_bytes=300, linger_ms=20)
    chunks = [b.open()]
    for i in range(200):
        clock.t += 0.003
        chunks += b.add(Stream.OUTPUT, b"\x1b[31m%d\xff\x00" % i)
        chunks += b.poll()
        if i % 50 == 0:
            chunks += b.add(Stream.RESIZE, b"100x40")
    chunks.append(b.finish(0))
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    ok, msg = verify_chain(decode_chunk(encode_chunk(c)) for c in chunks)
    assert ok, msg


def test_offsets_are_integer_ms_since_start_and_non_decreasing() -> None:
    b, clock = builder(linger_ms=10_000)
    b.open()
    for dt in (0.0004, 0.0011, 0.5, 2.25):
        clock.t += dt
        b.add(Stream.OUTPUT, b"%f" % dt)
    offsets = [f.offset_ms for f in b.finish(0).frames]
    assert offsets == [0, 1, 501, 2751]
