"""Chunk and event wire codecs: round trips and named validation failures."""

from __future__ import annotations

import orjson
import pytest

from schemas import (
    GENESIS_HASH,
    Chunk,
    Frame,
    SessionInfo,
    Stream,
    chain_hash,
    decode_chunk,
    decode_event,
    encode_chunk,
    verify_chain,
)
from schemas.codec import CHUNK_MAGIC, decode_packed_chunk
from schemas.frameindex import FRAME, pack_frames
from schemas.validate import schema_errors
from sessionvault.errors import UnknownVersionError, ValidationError

AWKWARD = b"\x00\xff\xfe\x1b[31mred\x1b[0m\r\n\xc3\x28 invalid utf8 \x80\x00"


def make_chunk(
    seq: int = 0, prev: str = GENESIS_HASH, frames: tuple[Frame, ...] | None = None
) -> Chunk:
    frames = frames or (
        Frame(0, Stream.OUTPUT, AWKWARD),
        Frame(5, Stream.RESIZE, b"100x40"),
        Frame(7, Stream.INPUT, b"ls\r"),
        Frame(9, Stream.OUTPUT, b""),
    )
    info = SessionInfo("2026-11-21T10:00:00Z", 80, 24, user="alice") if seq == 0 else None
    h = chain_hash(prev, "s-1", seq, frames)
    return Chunk("acme", "s-1", seq, frames, prev, h, session=info)


def test_chunk_round_trip_keeps_arbitrary_bytes_exactly() -> None:
    chunk = make_chunk()
    decoded = decode_chunk(encode_chunk(chunk))
    assert decoded == chunk
    assert decoded.payload == AWKWARD + b"100x40ls\r"


def test_chunk_header_satisfies_published_json_schema() -> None:
    value = encode_chunk(make_chunk())
    hlen = int.from_bytes(value[4:8], "big")
    assert schema_errors("chunk", orjson.loads(value[8 : 8 + hlen])) == []


def test_tampered_payload_byte_is_rejected_as_bad_hash() -> None:
    value = bytearray(encode_chunk(make_chunk()))
    value[-5] ^= 0x01
    with pytest.raises(ValidationError) as err:
        decode_chunk(bytes(value))
    assert err.value.reason == "bad_hash"


@pytest.mark.parametrize(
    ("mutate", "reason", "needle"),
    [
        (lambda h: h.update(sv_version=3), "unknown_version", "sv_version 3"),
        (lambda h: h.update(sv_version=True), "unknown_version", "sv_version True"),
        (lambda h: h.update(seq=-1), "wrong_type", "'seq'"),
        (lambda h: h.update(seq="1"), "wrong_type", "'seq'"),
        (lambda h: h.pop("tenant"), "missing_field", "'tenant'"),
        (lambda h: h["frames"].__setitem__(0, [0, "z", 3]), "wrong_type", "frames[0][1]"),
        (lambda h: h.pop("session"), "missing_field", "'session'"),
    ],
)
def test_bad_chunk_header_is_rejected_with_reason_naming_the_field(mutate, reason, needle) -> None:  # type: ignore[no-untyped-def]
    value = encode_chunk(make_chunk(), version=1)
    hlen = int.from_bytes(value[4:8], "big")
    header = orjson.loads(value[8 : 8 + hlen])
    mutate(header)
    h = orjson.dumps(header)
    bad = CHUNK_MAGIC + len(h).to_bytes(4, "big") + h + value[8 + hlen :]
    with pytest.raises(ValidationError) as err:
        decode_chunk(bad)
    assert err.value.reason == reason
    assert needle in str(err.value)
    if reason == "unknown_version":
        assert isinstance(err.value, UnknownVersionError)


def test_both_wire_versions_decode_to_the_same_chunk_and_hash_alike() -> None:
    chunk = make_chunk()
    v1, v2 = encode_chunk(chunk, version=1), encode_chunk(chunk)
    assert v1 != v2
    # Version 2 carries the same index bytes the hash covers, right after its header.
    assert v2[8 + int.from_bytes(v2[4:8], "big") :].startswith(pack_frames(chunk.frames))
    assert decode_chunk(v1) == decode_chunk(v2) == chunk
    assert decode_packed_chunk(v1) == decode_packed_chunk(v2)
    hlen = int.from_bytes(v1[4:8], "big")
    assert schema_errors("chunk.v1", orjson.loads(v1[8 : 8 + hlen])) == []


def _v2(header_changes: dict[str, object], tail: bytes | None = None) -> bytes:
    """A version-2 record of make_chunk() with its header changed, or its index and payload
    replaced by ``tail``."""
    value = encode_chunk(make_chunk())
    hlen = int.from_bytes(value[4:8], "big")
    header = {**orjson.loads(value[8 : 8 + hlen]), **header_changes}
    h = orjson.dumps(header)
    return (
        CHUNK_MAGIC + len(h).to_bytes(4, "big") + h + (value[8 + hlen :] if tail is None else tail)
    )


@pytest.mark.parametrize(
    ("value", "reason", "needle"),
    [
        (lambda: _v2({"frame_count": -1}), "wrong_type", "'frame_count'"),
        (lambda: _v2({"frame_count": True}), "wrong_type", "'frame_count'"),
        (lambda: _v2({"frame_count": 10**6}), "bad_framing", "runs past the end"),
        (
            lambda: _v2({"frame_count": 1}, FRAME.pack(0, b"z", 1) + b"x"),
            "wrong_type",
            "frames[0] stream b'z'",
        ),
        (
            lambda: _v2(
                {"frame_count": 2}, FRAME.pack(0, b"o", 1) + FRAME.pack(1, b"o", 5) + b"xy"
            ),
            "bad_framing",
            "frames[1] needs 5 bytes",
        ),
        (
            lambda: _v2({"frame_count": 1}, FRAME.pack(0, b"o", 1) + b"xyz"),
            "bad_framing",
            "2 bytes beyond the last frame",
        ),
        (lambda: _v2({"frame_count": 0}, b"x"), "bad_framing", "1 bytes beyond the last frame"),
        (
            lambda: _v2({"frame_count": 0}, b""),
            "bad_hash",
            "does not match",
        ),
    ],
)
def test_bad_version_2_frame_index_is_rejected_naming_the_frame(value, reason, needle) -> None:  # type: ignore[no-untyped-def]
    for decode in (decode_packed_chunk, decode_chunk):
        with pytest.raises(ValidationError) as err:
            decode(value())
        assert err.value.reason == reason
        assert needle in str(err.value)


def test_oversize_and_garbage_chunk_records_are_rejected() -> None:
    with pytest.raises(ValidationError) as err:
        decode_chunk(b"x" * 100, max_bytes=50)
    assert err.value.reason == "oversize"
    with pytest.raises(ValidationError) as err:
        decode_chunk(b"{not a chunk")
    assert err.value.reason == "bad_framing"


def test_hash_chain_verifies_and_detects_reordering() -> None:
    c0 = make_chunk(0)
    c1 = make_chunk(1, c0.hash, (Frame(20, Stream.OUTPUT, b"more"),))
    assert verify_chain([c0, c1])[0]
    assert not verify_chain([c1, c0])[0]


def test_event_keeps_unknown_fields_and_rejects_bad_types() -> None:
    raw = {
        "sv_version": 1,
        "tenant": "acme",
        "event": "session.start",
        "uid": "u1",
        "time": "2026-11-21T10:00:00.123Z",
        "ei": 0,
        "x_custom": {"deep": [1, 2]},
    }
    ev = decode_event(orjson.dumps(raw))
    assert ev.fields["x_custom"] == {"deep": [1, 2]}
    with pytest.raises(ValidationError) as err:
        decode_event(orjson.dumps({**raw, "ei": "zero"}))
    assert err.value.reason == "wrong_type"
    assert "ei" in str(err.value)
    with pytest.raises(ValidationError) as err:
        decode_event(b"{bad json")
    assert err.value.reason == "bad_json"
    with pytest.raises(UnknownVersionError):
        decode_event(orjson.dumps({**raw, "sv_version": 9}))
    with pytest.raises(ValidationError) as err:
        decode_event(orjson.dumps({**raw, "time": "yesterday"}))
    assert "time" in str(err.value)


def test_the_settings_accept_exactly_the_chunk_versions_the_codec_reads() -> None:
    from schemas.models import CHUNK_VERSIONS
    from sessionvault.settings import CHUNK_WIRE_VERSIONS

    assert CHUNK_WIRE_VERSIONS == CHUNK_VERSIONS
