"""Wire encoding and decoding of chunks and events, with validation that names the fault.

Pure: no Kafka or database imports. Decoding never decodes terminal bytes as text.

Chunk wire format: ``b"SVCK" | u32 BE header length | header JSON | [frame index] | payload``.
Version 2 (written): the header satisfies ``schemas/json/chunk.v2.json`` and names
``frame_count``; the frame index that follows it is ``frame_count`` rows of 13 bytes
(:mod:`schemas.frameindex`: offset_ms u64 BE, stream byte, length u32 BE), then the payload, the
frames' bytes concatenated in order. Version 1 (still read): the header (``chunk.v1.json``)
lists the frames as ``[offset_ms, stream, length]`` and the payload follows it directly. Both
hash the same bytes. Events are JSON objects satisfying ``schemas/json/event.v1.json``.
"""

from __future__ import annotations

import re
import struct
from datetime import datetime
from typing import Any

import orjson

from schemas.chain import chain_hash_packed
from schemas.frameindex import (
    FRAME_BYTES,
    STREAM_CODES,
    first_bad_stream,
    index_columns,
    pack_frames,
    pack_specs,
    unpack_chunk,
)
from schemas.models import (
    CHUNK_VERSION,
    CHUNK_VERSIONS,
    EVENT_VERSION,
    AuditEvent,
    Chunk,
    Frame,
    PackedChunk,
    SessionInfo,
    Stream,
)
from schemas.validate import event_errors
from sessionvault.errors import UnknownVersionError, ValidationError
from sessionvault.names import is_tenant_name

CHUNK_MAGIC = b"SVCK"
_HLEN = struct.Struct(">I")
_SID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_STREAMS = {s.value: s for s in Stream}


def encode_chunk(chunk: Chunk, *, version: int = CHUNK_VERSION) -> bytes:
    """The chunk record of ``chunk`` in wire ``version`` (2 unless a consumer still running an
    older release needs 1: ``SESSIONVAULT_CHUNK_WIRE_VERSION``)."""
    header: dict[str, Any] = {
        "sv_version": version,
        "tenant": chunk.tenant,
        "sid": chunk.sid,
        "seq": chunk.seq,
    }
    parts = [f.data for f in chunk.frames]
    if version == 1:
        header["frames"] = [[f.offset_ms, f.stream.value, len(f.data)] for f in chunk.frames]
    elif version == 2:
        header["frame_count"] = len(chunk.frames)
        parts.insert(0, pack_frames(chunk.frames))
    else:
        raise ValueError(f"chunk wire version {version} is not one of {CHUNK_VERSIONS}")
    header["prev_hash"] = chunk.prev_hash
    header["hash"] = chunk.hash
    if chunk.final:
        header["final"] = True
        header["exit_code"] = chunk.exit_code
    if chunk.session is not None:
        header["session"] = chunk.session.to_json()
    h = orjson.dumps(header)
    return b"".join([CHUNK_MAGIC, _HLEN.pack(len(h)), h, *parts])


def _bad(reason: str, message: str) -> ValidationError:
    return ValidationError(reason, message)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_rfc3339(value: object) -> bool:
    if not isinstance(value, str) or "T" not in value:
        return False
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return dt.tzinfo is not None


def decode_chunk_header(value: bytes, max_bytes: int) -> tuple[dict[str, Any], int]:
    """Parse and check the framing and header; return (header, payload start)."""
    if len(value) > max_bytes:
        raise _bad("oversize", f"chunk record is {len(value)} bytes, limit is {max_bytes}")
    if len(value) < 8 or value[:4] != CHUNK_MAGIC:
        raise _bad("bad_framing", "chunk record does not start with the SVCK magic")
    (hlen,) = _HLEN.unpack_from(value, 4)
    if 8 + hlen > len(value):
        raise _bad("bad_framing", f"header length {hlen} runs past the end of the record")
    try:
        header = orjson.loads(value[8 : 8 + hlen])
    except orjson.JSONDecodeError as exc:
        raise _bad("bad_json", f"chunk header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _bad("wrong_type", "chunk header must be a JSON object")
    return header, 8 + hlen


def _check_identity(header: dict[str, Any]) -> None:
    """Version, required fields, tenant, sid, seq and the two hashes of a chunk header."""
    version = header.get("sv_version")
    if version is None:
        raise _bad("missing_field", "chunk header: required field 'sv_version' is missing")
    if type(version) is not int or version not in CHUNK_VERSIONS:
        raise UnknownVersionError(
            f"chunk header: sv_version {version!r} is not known"
            f" ({', '.join(map(str, CHUNK_VERSIONS))})"
        )
    frames = "frames" if version == 1 else "frame_count"
    for name in ("tenant", "sid", "seq", frames, "prev_hash", "hash"):
        if name not in header:
            raise _bad("missing_field", f"chunk header: required field {name!r} is missing")
    tenant, sid, seq = header["tenant"], header["sid"], header["seq"]
    if not is_tenant_name(tenant):
        raise _bad(
            "wrong_type",
            f"chunk header: 'tenant' must match [A-Za-z0-9_.-]{{1,63}}, got {tenant!r}",
        )
    if not isinstance(sid, str) or not _SID_RE.fullmatch(sid):
        raise _bad("wrong_type", f"chunk header: 'sid' must be a session id string, got {sid!r}")
    if not _is_int(seq) or seq < 0:
        raise _bad("wrong_type", f"chunk header: 'seq' must be an integer >= 0, got {seq!r}")
    for name in ("prev_hash", "hash"):
        if not isinstance(header[name], str) or not _HASH_RE.fullmatch(header[name]):
            raise _bad("wrong_type", f"chunk header: {name!r} must be 64 lowercase hex digits")


def _frame_spec(i: int, rf: object) -> tuple[int, Stream, int]:
    """``(offset_ms, stream, length)`` of ``frames[i]`` in a chunk header."""
    if not (isinstance(rf, list) and len(rf) == 3):
        raise _bad("wrong_type", f"chunk header: frames[{i}] must be [offset_ms, stream, length]")
    off, st, ln = rf
    if not _is_int(off) or off < 0:
        raise _bad("wrong_type", f"chunk header: frames[{i}][0] offset_ms must be an integer >= 0")
    stream = _STREAMS.get(st) if isinstance(st, str) else None
    if stream is None:
        raise _bad(
            "wrong_type", f"chunk header: frames[{i}][1] stream {st!r} is not one of o,i,r,m,e,x"
        )
    if not _is_int(ln) or ln < 0:
        raise _bad("wrong_type", f"chunk header: frames[{i}][2] length must be an integer >= 0")
    return off, stream, ln


def _frames(raw_frames: object, value: bytes, start: int) -> list[Frame]:
    """The frames a header lists, cut from the payload that follows it; the lengths must
    account for every payload byte."""
    if not isinstance(raw_frames, list):
        raise _bad("wrong_type", "chunk header: 'frames' must be an array")
    frames: list[Frame] = []
    pos, end = start, len(value)
    for i, rf in enumerate(raw_frames):
        off, stream, ln = _frame_spec(i, rf)
        if pos + ln > end:
            raise _bad("bad_framing", f"frames[{i}] needs {ln} bytes but the payload ends first")
        frames.append(Frame(off, stream, value[pos : pos + ln]))
        pos += ln
    if pos != end:
        raise _bad("bad_framing", f"payload has {end - pos} bytes beyond the last frame")
    return frames


def _pack_fast(raw_frames: object, payload_len: int) -> tuple[bytes, int | None, int | None]:
    """``(index, first offset, largest offset)`` of a header's frames, checked column-wise
    (a few C-level passes instead of Python per frame). Raises (TypeError, ValueError,
    KeyError, OverflowError) on anything :func:`_frames` would reject; the caller then asks
    :func:`_frames` for the message naming the first bad frame."""
    if type(raw_frames) is not list:
        raise TypeError("frames")
    if not raw_frames:
        if payload_len:
            raise ValueError("payload beyond frames")
        return b"", None, None
    # No per-element shape check: the header is JSON, so an element that is not a
    # [offset, stream, length] list (a string, an object, a number, another length) fails in
    # zip, in the unpacking or in the type checks below.
    offsets, streams, lengths = zip(*raw_frames, strict=True)
    # type() rather than isinstance: bool is an int subclass and is not a valid count here.
    if set(map(type, offsets)) != {int} or set(map(type, lengths)) != {int}:
        raise TypeError("offset or length")
    if sum(lengths) != payload_len:  # (negative values are refused by pack_specs)
        raise ValueError("payload size")
    index = pack_specs(offsets, map(STREAM_CODES.__getitem__, streams), lengths)
    return index, offsets[0], max(offsets)


def _frame_index(
    raw_frames: object, value: bytes, start: int
) -> tuple[bytes, int | None, int | None]:
    try:
        return _pack_fast(raw_frames, len(value) - start)
    except (TypeError, ValueError, KeyError, OverflowError):
        pass
    _frames(raw_frames, value, start)  # raises, naming the first bad frame
    # _frames accepts what the index cannot hold: an offset past 2^64-1.
    raise _bad("wrong_type", "chunk header: a frame's offset_ms does not fit 64 bits")


def _carried_index(count: object, value: bytes, start: int) -> tuple[bytes, int | None, int | None]:
    """``(index, first offset, largest offset)`` of a version-2 record, whose frame index of
    ``count`` rows starts at ``start``; checked column-wise (stream bytes, lengths against the
    payload), with the same reasons and messages as version 1's per-frame rules."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise _bad("wrong_type", "chunk header: 'frame_count' must be an integer >= 0")
    end = start + FRAME_BYTES * count
    if end > len(value):
        raise _bad(
            "bad_framing", f"a frame index of {count} frames runs past the end of the record"
        )
    index = value[start:end]
    payload_len = len(value) - end
    if not count:
        if payload_len:
            raise _bad("bad_framing", f"payload has {payload_len} bytes beyond the last frame")
        return b"", None, None
    cols = index_columns(index)
    bad = first_bad_stream(cols.codes)
    if bad is not None:
        raise _bad(
            "wrong_type",
            f"frame index: frames[{bad}] stream {cols.codes[bad : bad + 1]!r} is not one of"
            " o,i,r,m,e,x",
        )
    if sum(cols.lengths) != payload_len:
        pos = 0
        for i, ln in enumerate(cols.lengths):
            if pos + ln > payload_len:
                raise _bad(
                    "bad_framing", f"frames[{i}] needs {ln} bytes but the payload ends first"
                )
            pos += ln
        raise _bad("bad_framing", f"payload has {payload_len - pos} bytes beyond the last frame")
    return index, cols.offsets[0], max(cols.offsets)


def decode_packed_chunk(
    value: bytes, *, max_bytes: int = 4 * 1024 * 1024, verify: bool = True
) -> PackedChunk:
    """Decode and validate a chunk record (either version) into a :class:`PackedChunk`: its
    frame index is the record's own (version 2) or built from the header's list (version 1),
    and its payload is the record's tail, so no frame object is made (the persist worker's
    path). Raises :class:`ValidationError` with a reason code,
    exactly as :func:`decode_chunk` does.

    With ``verify`` the chunk's own hash is recomputed; a mismatch is ``bad_hash``.
    """
    header, start = decode_chunk_header(value, max_bytes)
    _check_identity(header)
    tenant, sid, seq = header["tenant"], header["sid"], header["seq"]
    if header["sv_version"] == 1:
        index, first, last = _frame_index(header["frames"], value, start)
    else:
        index, first, last = _carried_index(header["frame_count"], value, start)
        start += len(index)
    session = None
    if "session" in header:
        session = _decode_session(header["session"])
    if seq == 0 and session is None:
        raise _bad(
            "missing_field", "chunk header: seq 0 must carry 'session' (it opens the session)"
        )
    final = header.get("final", False)
    if not isinstance(final, bool):
        raise _bad("wrong_type", "chunk header: 'final' must be a boolean")
    exit_code = header.get("exit_code")
    if exit_code is not None and not _is_int(exit_code):
        raise _bad("wrong_type", "chunk header: 'exit_code' must be an integer or null")
    payload = value[start:]
    if (
        verify
        and chain_hash_packed(header["prev_hash"], sid, seq, index, payload) != header["hash"]
    ):
        raise _bad("bad_hash", f"sid {sid} seq {seq}: content does not match its hash")
    return PackedChunk(
        tenant,
        sid,
        seq,
        index,
        payload,
        header["prev_hash"],
        header["hash"],
        final,
        exit_code,
        session,
        first,
        last,
    )


def decode_chunk(value: bytes, *, max_bytes: int = 4 * 1024 * 1024, verify: bool = True) -> Chunk:
    """Decode and validate a chunk record, cut into frames. Raises :class:`ValidationError`
    with a reason code (see :func:`decode_packed_chunk`)."""
    return unpack_chunk(decode_packed_chunk(value, max_bytes=max_bytes, verify=verify))


def _decode_session(d: object) -> SessionInfo:
    if not isinstance(d, dict):
        raise _bad("wrong_type", "chunk header: 'session' must be an object")
    if not is_rfc3339(d.get("started_at")):
        raise _bad("wrong_type", "chunk header: session.started_at must be an RFC 3339 time")
    for name in ("cols", "rows"):
        v = d.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535:
            raise _bad("wrong_type", f"chunk header: session.{name} must be an integer 1..65535")
    for k, v in d.items():
        if k not in ("cols", "rows") and not isinstance(v, str):
            raise _bad("wrong_type", f"chunk header: session.{k} must be a string")
    return SessionInfo.from_json(d)


def encode_event(fields: dict[str, Any]) -> bytes:
    return orjson.dumps(fields)


def decode_event(value: bytes, *, max_bytes: int = 4 * 1024 * 1024) -> AuditEvent:
    """Decode and validate an audit event record (JSON). Unknown fields are kept."""
    if len(value) > max_bytes:
        raise _bad("oversize", f"event record is {len(value)} bytes, limit is {max_bytes}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _bad("bad_json", f"event is not valid JSON: {exc}") from exc
    return validate_event(data)


def validate_event(data: object) -> AuditEvent:
    if not isinstance(data, dict):
        raise _bad("wrong_type", "event must be a JSON object")
    version = data.get("sv_version")
    if version is not None and version != EVENT_VERSION:
        raise UnknownVersionError(f"event: sv_version {version!r} is not known (1)")
    errors = event_errors(data)
    if errors:
        reason, message = errors[0]
        raise _bad(reason, message)
    if not is_rfc3339(data["time"]):
        raise _bad("wrong_type", f"event field 'time': {data['time']!r} is not an RFC 3339 time")
    return AuditEvent(data)
