"""Per-session hash chain (tamper evidence). Pure.

``hash(chunk) = sha256(prev_hash || sid || 0x00 || seq || frames || payload)`` where
``prev_hash`` is the previous chunk's hash as 32 raw bytes (all zeros for seq 0), ``seq`` is
8 bytes big-endian, and each frame contributes ``offset_ms`` (8 bytes BE), the stream code
(1 ASCII byte) and its length (4 bytes BE). Changing any byte, timing, order or chunk
boundary of a session breaks every later link.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from schemas.frameindex import pack_frames
from schemas.models import GENESIS_HASH, Chunk, Frame


def chain_hash(prev_hash: str, sid: str, seq: int, frames: Sequence[Frame]) -> str:
    """The hash of a chunk of ``frames`` (see the module's docstring)."""
    return chain_hash_packed(
        prev_hash, sid, seq, pack_frames(frames), b"".join(f.data for f in frames)
    )


def chain_hash_packed(
    prev_hash: str, sid: str, seq: int, index: bytes, payload: bytes | memoryview
) -> str:
    """The same hash from the chunk's frame index (:mod:`schemas.frameindex`: the per-frame
    part of the preimage is exactly the index) and its payload."""
    h = hashlib.sha256()
    h.update(bytes.fromhex(prev_hash))
    h.update(sid.encode())
    h.update(b"\x00")
    h.update(seq.to_bytes(8, "big"))
    h.update(index)
    h.update(payload)
    return h.hexdigest()


def verify_chain(chunks: Iterable[Chunk]) -> tuple[bool, str]:
    """Check seq continuity and every link. Returns (ok, message naming the first fault)."""
    prev = GENESIS_HASH
    expected_seq = 0
    for c in chunks:
        if c.seq != expected_seq:
            return False, f"sid {c.sid}: expected seq {expected_seq}, found {c.seq}"
        if c.prev_hash != prev:
            return False, f"sid {c.sid} seq {c.seq}: prev_hash does not match chunk {c.seq - 1}"
        actual = chain_hash(c.prev_hash, c.sid, c.seq, c.frames)
        if actual != c.hash:
            return False, f"sid {c.sid} seq {c.seq}: content does not match its hash"
        prev = c.hash
        expected_seq += 1
    return True, f"{expected_seq} chunks verified"
