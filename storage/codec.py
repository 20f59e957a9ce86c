"""How chunk payloads and frame indexes are stored. Pure (no database imports).

Payloads are zstd-compressed. When a trained dictionary is available (``sessionvault dict
train``), every payload is compressed with it, in one pass with the dictionary precomputed for
the level; otherwise plain zstd. Measured on the benchmark corpus (docs/benchmarks.md), the
dictionary wins at every chunk size: about 2x the ratio at 1 KiB, +12% at 16 KiB and +3-4% at
64 KiB, where it takes zstd-3 past zlib-6's ratio while still compressing over 4x faster. An
earlier version compressed twice (plain and with the dictionary) and kept the smaller: that
doubled the CPU cost for a gain of well under 1%. A payload that does not shrink is stored raw.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import zstandard

from schemas.frameindex import FRAME
from schemas.models import Frame, Stream

CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_ZSTD_DICT = 2
#: Largest payload sampled for dictionary training (small payloads gain the most).
DICT_MAX_INPUT = 16 * 1024


#: First byte of a stored frame index that is zstd-compressed. A raw index starts with the
#: high byte of its first frame's offset, at most 0x7f: offsets above 2^63-1 are refused
#: before anything is stored (:func:`storage.persist_logic.check_chunk_storable`).
INDEX_ZSTD_MARK = b"\xff"
_INDEX_MIN_BYTES = 64  # a handful of frames: compression cannot pay for its own header
_local = threading.local()


def store_index(index: bytes) -> bytes:
    """A frame index (:mod:`schemas.frameindex`) as stored: zstd-3 behind
    :data:`INDEX_ZSTD_MARK` when that is smaller, else as it is. Keystroke-heavy chunks have
    one 13-byte descriptor per keystroke: raw, the index was 23% of their stored bytes."""
    if len(index) < _INDEX_MIN_BYTES:
        return index
    ctx = getattr(_local, "cctx", None)
    if ctx is None:
        ctx = _local.cctx = zstandard.ZstdCompressor(level=3)
    packed = ctx.compress(index)
    return INDEX_ZSTD_MARK + packed if len(packed) + 1 < len(index) else index


def load_index(stored: bytes) -> bytes:
    """The frame index that :func:`store_index` stored (raw indexes written before it
    compressed them read as they are)."""
    if stored[:1] != INDEX_ZSTD_MARK:
        return stored
    ctx = getattr(_local, "dctx", None)
    if ctx is None:
        ctx = _local.dctx = zstandard.ZstdDecompressor()
    try:
        return ctx.decompress(stored[1:])
    except zstandard.ZstdError as exc:
        raise ValueError(f"stored frame index does not decompress: {exc}") from exc


def frame_index_totals(index: bytes) -> dict[str, int]:
    """Bytes per stream code (``o``, ``i``, ...) in a frame index, without the payload."""
    out: dict[str, int] = {}
    for _, st, ln in FRAME.iter_unpack(index):
        key = st.decode()
        out[key] = out.get(key, 0) + ln
    return out


@dataclass(frozen=True, slots=True)
class RawOutput:
    """What a raw export takes from one chunk: the output and stderr bytes of its frames from
    ``from_ms`` on, in order; how many frames (and payload bytes) those were; and their
    error-channel frames (a kubectl exec's exit status)."""

    data: bytes
    frames: int
    bytes_in: int
    errors: tuple[Frame, ...]


_RAW_STREAMS = (Stream.OUTPUT.value.encode(), Stream.STDERR.value.encode())
_ERROR_STREAM = Stream.ERROR.value.encode()


def raw_output(index: bytes, payload: bytes, *, from_ms: int = 0) -> RawOutput:
    """:class:`RawOutput` of a stored chunk, straight from its frame index: runs of output
    frames are sliced out of the payload whole, no frame object made (the raw export's
    path; byte for byte what the frames' data joined would be)."""
    parts: list[bytes] = []
    errors: list[Frame] = []
    pos = frames = bytes_in = 0
    start = -1
    for off, st, ln in FRAME.iter_unpack(index):
        kept = off >= from_ms
        if kept and st in _RAW_STREAMS:
            if start < 0:
                start = pos
        elif start >= 0:
            parts.append(payload[start:pos])
            start = -1
        if kept:
            frames += 1
            bytes_in += ln
            if st == _ERROR_STREAM:
                errors.append(Frame(off, Stream.ERROR, payload[pos : pos + ln]))
        pos += ln
    if pos != len(payload):
        raise ValueError(f"frame index covers {pos} bytes, payload has {len(payload)}")
    if start >= 0:
        parts.append(payload[start:pos])
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    return RawOutput(data, frames, bytes_in, tuple(errors))


@dataclass(frozen=True)
class ZstdDict:
    id: int
    data: bytes


class Compressor:
    """Per-worker compressor (zstd contexts are not thread-safe: one per thread)."""

    def __init__(self, level: int = 3, dictionary: ZstdDict | None = None) -> None:
        self.level = level
        self.dictionary = dictionary
        if dictionary is not None:
            zdict = zstandard.ZstdCompressionDict(dictionary.data)
            # Precomputing once saves re-deriving the dictionary's tables on every call.
            zdict.precompute_compress(level=level)
            self._ctx = zstandard.ZstdCompressor(dict_data=zdict)
            self._codec = CODEC_ZSTD_DICT
        else:
            self._ctx = zstandard.ZstdCompressor(level=level)
            self._codec = CODEC_ZSTD

    def compress(self, payload: bytes) -> tuple[int, int | None, bytes]:
        """Return (codec, dict id or None, stored bytes); never larger than the raw payload."""
        out = self._ctx.compress(payload)
        if len(out) >= len(payload):
            return (CODEC_RAW, None, payload)
        if self.dictionary is not None:
            return (self._codec, self.dictionary.id, out)
        return (self._codec, None, out)


class Decompressor:
    def __init__(self, dictionaries: dict[int, bytes] | None = None) -> None:
        self._plain = zstandard.ZstdDecompressor()
        self._dicts = dict(dictionaries or {})
        self._dict_ctx: dict[int, zstandard.ZstdDecompressor] = {}

    def add_dictionary(self, dict_id: int, data: bytes) -> None:
        self._dicts[dict_id] = data

    def has_dictionary(self, dict_id: int) -> bool:
        return dict_id in self._dicts

    def decompress(self, codec: int, dict_id: int | None, data: bytes, raw_len: int) -> bytes:
        if codec == CODEC_RAW:
            return data
        if codec == CODEC_ZSTD:
            return bytes(self._plain.decompress(data, max_output_size=raw_len))
        if codec == CODEC_ZSTD_DICT and dict_id is not None:
            ctx = self._dict_ctx.get(dict_id)
            if ctx is None:
                ctx = zstandard.ZstdDecompressor(
                    dict_data=zstandard.ZstdCompressionDict(self._dicts[dict_id])
                )
                self._dict_ctx[dict_id] = ctx
            return bytes(ctx.decompress(data, max_output_size=raw_len))
        raise ValueError(f"unknown payload codec {codec}")


def train_dictionary(
    samples: list[bytes | bytearray | memoryview], dict_size: int = 64 * 1024
) -> bytes:
    return bytes(zstandard.train_dictionary(dict_size, samples).as_bytes())
