"""Wire contracts: value types, JSON Schema files (``schemas/json``), codecs, hash chain."""

from schemas.chain import chain_hash, verify_chain
from schemas.codec import decode_chunk, decode_event, encode_chunk, encode_event, validate_event
from schemas.models import (
    CHUNK_VERSION,
    CHUNK_VERSIONS,
    EVENT_VERSION,
    GENESIS_HASH,
    AuditEvent,
    Chunk,
    Frame,
    SessionInfo,
    Stream,
)

__all__ = [
    "CHUNK_VERSION",
    "CHUNK_VERSIONS",
    "EVENT_VERSION",
    "GENESIS_HASH",
    "AuditEvent",
    "Chunk",
    "Frame",
    "SessionInfo",
    "Stream",
    "chain_hash",
    "decode_chunk",
    "decode_event",
    "encode_chunk",
    "encode_event",
    "validate_event",
    "verify_chain",
]
