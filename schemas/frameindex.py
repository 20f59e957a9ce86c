"""The frame index: per frame ``offset_ms`` (u64 BE), stream code (1 ASCII byte), length
(u32 BE), 13 bytes a frame, in frame order. Pure.

One definition used three ways: it is what a chunk's hash covers for its frames
(:mod:`schemas.chain`), what is stored beside each payload (the ``chunks.frames`` column), and
what a chunk record carries (version 2; a version-1 record lists its frames in its JSON header,
and the persist worker builds this index from that list), with no :class:`Frame` made per frame
(:func:`schemas.codec.decode_packed_chunk`). Keeping them the same bytes is what lets the worker
hash and store a chunk without ever cutting its payload into frames.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.models import Chunk, Frame, PackedChunk, Stream

FRAME = struct.Struct(">QcI")
"""One frame's descriptor in the index."""
FRAME_BYTES = FRAME.size
STREAM_CODES: dict[str, bytes] = {s.value: s.value.encode() for s in Stream}
"""A stream's one-letter name (as in a chunk header) -> its byte in the index."""
_STREAMS = {s.value.encode(): s for s in Stream}
_LITTLE = sys.byteorder == "little"


def pack_frames(frames: Iterable[Frame]) -> bytes:
    """The index of ``frames``."""
    return b"".join(FRAME.pack(f.offset_ms, f.stream.value.encode(), len(f.data)) for f in frames)


def pack_specs(offsets: Sequence[int], codes: Iterable[bytes], lengths: Sequence[int]) -> bytes:
    """The index of frames given column-wise, built column by column: each column is packed
    once (``array``), then its bytes are laid into the 13-byte rows with strided slice
    assignments, so nothing in Python runs per frame (the per-frame work was most of the
    persist worker's CPU). Raises :class:`OverflowError` for a value the index cannot hold (a
    negative one included), :class:`TypeError` for one that is not an integer, and
    :class:`ValueError` when the columns differ in length or a code is not one byte."""
    n = len(offsets)
    offs = array("Q", offsets)
    lens = array("I", lengths)
    if _LITTLE:  # the index is big-endian
        offs.byteswap()
        lens.byteswap()
    off_bytes, len_bytes = offs.tobytes(), lens.tobytes()
    code_bytes = b"".join(codes)
    if len(lens) != n or len(code_bytes) != n:
        raise ValueError("frame index columns differ in length")
    rows = bytearray(FRAME_BYTES * n)
    for k in range(8):
        rows[k::FRAME_BYTES] = off_bytes[k::8]
    rows[8::FRAME_BYTES] = code_bytes
    for k in range(4):
        rows[9 + k :: FRAME_BYTES] = len_bytes[k::4]
    return bytes(rows)


STREAM_BYTES = frozenset(STREAM_CODES.values())
"""Every byte a stream may be in the index."""
_STREAM_ALPHABET = b"".join(sorted(STREAM_BYTES))


def _column(index: bytes, at: int, width: int, count: int) -> bytes:
    """Bytes ``at .. at+width`` of each of the ``count`` rows, row after row."""
    col = bytearray(width * count)
    for k in range(width):
        col[k::width] = index[at + k :: FRAME_BYTES]
    return bytes(col)


@dataclass(frozen=True)
class IndexColumns:
    """A frame index read column-wise (what a chunk record of version 2 carries): checked and
    summed in C, no Python work per frame."""

    offsets: array[int]
    codes: bytes
    lengths: array[int]


def index_columns(index: bytes) -> IndexColumns:
    """The columns of ``index``; raises :class:`ValueError` if it is not whole rows."""
    count, rest = divmod(len(index), FRAME_BYTES)
    if rest:
        raise ValueError(f"frame index of {len(index)} bytes is not whole {FRAME_BYTES}-byte rows")
    offsets = array("Q", _column(index, 0, 8, count))
    lengths = array("I", _column(index, 9, 4, count))
    if _LITTLE:
        offsets.byteswap()
        lengths.byteswap()
    return IndexColumns(offsets, index[8::FRAME_BYTES], lengths)


def first_bad_stream(codes: bytes) -> int | None:
    """The position of the first byte of ``codes`` that is not a stream's, or None."""
    if not codes.translate(None, _STREAM_ALPHABET):
        return None
    return next(i for i, c in enumerate(codes) if bytes((c,)) not in STREAM_BYTES)


def unpack_frames(index: bytes, payload: bytes) -> list[Frame]:
    """The frames an index cuts from ``payload``; the index must cover it exactly."""
    frames: list[Frame] = []
    pos = 0
    for off, st, ln in FRAME.iter_unpack(index):
        frames.append(Frame(off, _STREAMS[st], payload[pos : pos + ln]))
        pos += ln
    if pos != len(payload):
        raise ValueError(f"frame index covers {pos} bytes, payload has {len(payload)}")
    return frames


def pack_chunk(chunk: Chunk) -> PackedChunk:
    """``chunk`` as a :class:`PackedChunk` (what the persist path takes)."""
    frames = chunk.frames
    return PackedChunk(
        chunk.tenant,
        chunk.sid,
        chunk.seq,
        pack_frames(frames),
        chunk.payload,
        chunk.prev_hash,
        chunk.hash,
        chunk.final,
        chunk.exit_code,
        chunk.session,
        frames[0].offset_ms if frames else None,
        max(f.offset_ms for f in frames) if frames else None,
    )


def unpack_chunk(packed: PackedChunk) -> Chunk:
    """The :class:`Chunk` with frames that ``packed`` describes."""
    return Chunk(
        packed.tenant,
        packed.sid,
        packed.seq,
        tuple(unpack_frames(packed.index, packed.payload)),
        packed.prev_hash,
        packed.hash,
        packed.final,
        packed.exit_code,
        packed.session,
    )
