"""The column-wise chunk decoder (schemas.codec.decode_packed_chunk, the persist worker's path)
agrees with a per-frame reference on every frame list: the same frame index and offsets for
the ones it accepts, the same reason and message for the ones it rejects."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from schemas.chain import chain_hash
from schemas.codec import CHUNK_MAGIC, decode_chunk, decode_packed_chunk
from schemas.frameindex import pack_frames, unpack_frames
from schemas.models import GENESIS_HASH, Frame, Stream
from sessionvault.errors import ValidationError
from tests.examples import examples


def _record(frames: list[Any], payload: bytes, hash_: str = GENESIS_HASH) -> bytes:
    header = {
        "sv_version": 1,
        "tenant": "acme",
        "sid": "s-1",
        "seq": 1,
        "frames": frames,
        "prev_hash": GENESIS_HASH,
        "hash": hash_,
    }
    h = orjson.dumps(header)
    return CHUNK_MAGIC + struct.pack(">I", len(h)) + h + payload


def _reference(frames: list[Any], payload: bytes) -> list[Frame] | tuple[str, str]:
    """Frame by frame, the rules the wire format states (schemas/json/chunk.v1.json)."""
    out, pos = [], 0
    for i, rf in enumerate(frames):
        if not (isinstance(rf, list) and len(rf) == 3):
            return ("wrong_type", f"frames[{i}] must be")
        off, stream, ln = rf
        if type(off) is not int or off < 0:
            return ("wrong_type", f"frames[{i}][0]")
        if not isinstance(stream, str) or stream not in {s.value for s in Stream}:
            return ("wrong_type", f"frames[{i}][1]")
        if type(ln) is not int or ln < 0:
            return ("wrong_type", f"frames[{i}][2]")
        if pos + ln > len(payload):
            return ("bad_framing", f"frames[{i}] needs")
        out.append(Frame(off, Stream(stream), payload[pos : pos + ln]))
        pos += ln
    if pos != len(payload):
        return ("bad_framing", "beyond the last frame")
    return out


def _assert_decodes_as(
    expected: list[Frame] | tuple[str, str], record: Callable[[str], bytes]
) -> None:
    """Both decoders on ``record(hash)``: the frames ``expected`` (the record then carrying
    their right hash), or the reason and message fragment ``expected`` names."""
    if isinstance(expected, list):
        value = record(chain_hash(GENESIS_HASH, "s-1", 1, expected))
        packed = decode_packed_chunk(value)
        assert packed.index == pack_frames(expected)
        assert packed.payload == b"".join(f.data for f in expected)
        assert unpack_frames(packed.index, packed.payload) == expected
        offsets = [f.offset_ms for f in expected]
        assert packed.first_offset_ms == (offsets[0] if offsets else None)
        assert packed.last_offset_ms == (max(offsets) if offsets else None)
        assert decode_chunk(value).frames == tuple(expected)
    else:
        reason, fragment = expected
        for decode in (decode_packed_chunk, decode_chunk):
            with pytest.raises(ValidationError) as err:
                decode(record(GENESIS_HASH))
            assert err.value.reason == reason
            assert fragment in str(err.value)


scalars = st.one_of(
    st.integers(min_value=-2, max_value=2**40),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=16),
    st.sampled_from(["o", "i", "r", "m", "e", "x", "z", "", "oo"]),
)
good_frame = st.tuples(
    st.integers(min_value=0, max_value=2**40),
    st.sampled_from([s.value for s in Stream]),
    st.integers(min_value=0, max_value=6),
).map(list)
# A good frame with one field replaced: the cases a column-wise check most easily misses
# (a bool offset, a float length, a stream that is not a str).
near_frame = st.tuples(good_frame, st.integers(min_value=0, max_value=2), scalars).map(
    lambda t: [t[2] if i == t[1] else v for i, v in enumerate(t[0])]
)
any_frame = st.one_of(
    good_frame,
    near_frame,
    st.lists(scalars, max_size=4),
    scalars,
    st.dictionaries(st.text(max_size=2), scalars),
)


@settings(max_examples=examples(3000), deadline=None)
@given(
    frames=st.one_of(st.lists(good_frame, max_size=12), st.lists(any_frame, max_size=6)),
    slack=st.integers(min_value=-3, max_value=3),
)
@example(frames=[[True, "o", 1]], slack=0)
@example(frames=[[0, "o", 2], [3, "i", True]], slack=0)
@example(frames=[[0, "o", 1.0]], slack=1)
@example(frames=[[0, 1, 1]], slack=1)
@example(frames=[[0, "o", 1, 2]], slack=0)
@example(frames=[[2**64 - 1, "o", 1]], slack=0)
@example(frames=["oio"], slack=0)
@example(frames=[{"a": 1, "b": 2, "c": 3}], slack=0)
@example(frames=[[0, "o", -1], [1, "o", 2]], slack=-1)
@example(frames=[[0, "o", 2**32]], slack=0)
def test_packed_decoder_matches_the_per_frame_rules(frames: list[Any], slack: int) -> None:
    lengths = [f[2] for f in frames if isinstance(f, list) and len(f) == 3]
    lengths = [x for x in lengths if isinstance(x, int)]
    payload = bytes(range(256))[: max(0, sum(x for x in lengths if x > 0) + slack)]
    _assert_decodes_as(_reference(frames, payload), lambda h: _record(frames, payload, h))


def test_a_tampered_payload_byte_is_bad_hash_on_the_packed_path() -> None:
    frames = [Frame(0, Stream.OUTPUT, b"hello"), Frame(5, Stream.INPUT, b"x")]
    spec = [[f.offset_ms, f.stream.value, len(f.data)] for f in frames]
    good = _record(spec, b"hellox", chain_hash(GENESIS_HASH, "s-1", 1, frames))
    assert decode_packed_chunk(good).index == pack_frames(frames)
    with pytest.raises(ValidationError) as err:
        decode_packed_chunk(good[:-1] + b"y")
    assert err.value.reason == "bad_hash"


def _record_v2(count: int, index: bytes, payload: bytes, hash_: str = GENESIS_HASH) -> bytes:
    header = {
        "sv_version": 2,
        "tenant": "acme",
        "sid": "s-1",
        "seq": 1,
        "frame_count": count,
        "prev_hash": GENESIS_HASH,
        "hash": hash_,
    }
    h = orjson.dumps(header)
    return CHUNK_MAGIC + struct.pack(">I", len(h)) + h + index + payload


def _reference_v2(count: int, tail: bytes) -> list[Frame] | tuple[str, str]:
    """Row by row, the rules of a version-2 record (schemas/json/chunk.v2.json) for a header
    naming ``count`` frames followed by ``tail``."""
    if 13 * count > len(tail):
        return ("bad_framing", "runs past the end")
    index, payload = tail[: 13 * count], tail[13 * count :]
    rows = [struct.unpack(">QcI", index[k : k + 13]) for k in range(0, len(index), 13)]
    for i, (_, code, _) in enumerate(rows):
        if code not in {s.value.encode() for s in Stream}:
            return ("wrong_type", f"frames[{i}] stream")
    out, pos = [], 0
    for i, (off, code, ln) in enumerate(rows):
        if pos + ln > len(payload):
            return ("bad_framing", f"frames[{i}] needs")
        out.append(Frame(off, Stream(code.decode()), payload[pos : pos + ln]))
        pos += ln
    if pos != len(payload):
        return ("bad_framing", "beyond the last frame")
    return out


@settings(max_examples=examples(2000), deadline=None)
@given(
    frames=st.lists(good_frame, max_size=10),
    count_delta=st.integers(min_value=-1, max_value=1),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=2),
    slack=st.integers(min_value=-3, max_value=3),
)
@example(frames=[[0, "o", 1]], count_delta=0, flips=[(8, ord("z"))], slack=0)
@example(frames=[[2**64 - 1, "x", 0]], count_delta=0, flips=[], slack=0)
def test_version_2_decoder_matches_the_row_rules(
    frames: list[Any], count_delta: int, flips: list[tuple[int, int]], slack: int
) -> None:
    """Version-2 records whose index or payload was damaged (bytes changed, a wrong count, too
    few or too many payload bytes): accepted exactly when the rows cover the payload, with the
    reason and message of the first bad row otherwise."""
    index = bytearray(pack_frames(Frame(o, Stream(s), b"") for o, s, _ in frames))
    for k, (_, _, ln) in enumerate(frames):
        index[13 * k + 9 : 13 * k + 13] = ln.to_bytes(4, "big")
    for at, byte in flips:
        if index:
            index[at % len(index)] = byte
    payload = bytes(range(256))[: max(0, sum(f[2] for f in frames) + slack)]
    count = max(0, len(frames) + count_delta)
    tail = bytes(index) + payload
    _assert_decodes_as(_reference_v2(count, tail), lambda h: _record_v2(count, b"", tail, h))
