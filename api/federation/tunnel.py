"""The tunnel's wire protocol: many request streams over one WebSocket (docs/federation.md).

The leaf dials out; the root sends requests down the tunnel and the leaf answers them, so the
leaf needs no inbound port. Every WebSocket message is binary: one byte of kind, four of stream
id (big-endian), then the payload. Streams are independent, and memory is bounded end to end by
credit: the root grants a stream ``window`` DATA messages when it asks, and one more for each it
has consumed; the leaf never sends DATA without credit (so a slow reader at the root holds the
leaf's producer, not a growing queue), and each DATA carries at most :data:`MAX_DATA_BYTES`.

====== ============== ==========================================================================
kind   direction      payload
====== ============== ==========================================================================
REQ    root -> leaf   JSON {method, path, query: [[k, v]], identity: {root, user, roles}, window}
HEAD   leaf -> root   JSON {status, headers: [[k, v]]}
DATA   leaf -> root   body bytes
END    leaf -> root   (empty): the body is complete
ERROR  leaf -> root   JSON {message}: the leaf could not answer (the stream ends)
CREDIT root -> leaf   u32: this many more DATA messages
CANCEL root -> leaf   (empty): the root no longer wants the answer
RENEW  leaf -> root   JSON {csr}: a new certificate for the same leaf (rotation)
RENEWD root -> leaf   JSON {cert} or {error}
====== ============== ==========================================================================
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from sessionvault.errors import ValidationError

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_DATA_BYTES",
    "Frame",
    "Kind",
    "decode",
    "encode",
    "encode_json",
]

#: Largest body piece per DATA message (the leaf coalesces smaller writes up to it).
MAX_DATA_BYTES = 256 * 1024
#: DATA messages a stream may have in flight: 16 x 256 KiB = 4 MiB per stream at most.
DEFAULT_WINDOW = 16
_HEADER = struct.Struct(">BI")


class Kind(enum.IntEnum):
    REQ = 1
    HEAD = 2
    DATA = 3
    END = 4
    ERROR = 5
    CREDIT = 6
    CANCEL = 7
    RENEW = 8
    RENEWED = 9


@dataclass(frozen=True, slots=True)
class Frame:
    """One tunnel message."""

    kind: Kind
    stream: int
    payload: bytes = b""

    def json(self) -> Any:
        """The payload as JSON (REQ, HEAD, ERROR, RENEW, RENEWED)."""
        try:
            return orjson.loads(self.payload)
        except orjson.JSONDecodeError as exc:
            raise ValidationError("bad_frame", f"tunnel {self.kind.name}: not JSON") from exc

    def credit(self) -> int:
        """A CREDIT message's count."""
        if len(self.payload) != 4:
            raise ValidationError("bad_frame", "tunnel CREDIT: not a u32")
        return int.from_bytes(self.payload, "big")


def encode(kind: Kind, stream: int, payload: bytes = b"") -> bytes:
    """One message's bytes."""
    return _HEADER.pack(kind, stream) + payload


def encode_json(kind: Kind, stream: int, value: Any) -> bytes:
    return encode(kind, stream, orjson.dumps(value))


def decode(message: bytes | str) -> Frame:
    """Parse one message; :class:`ValidationError` for anything that is not one."""
    if isinstance(message, str) or len(message) < _HEADER.size:
        raise ValidationError("bad_frame", "tunnel message: too short or not binary")
    kind, stream = _HEADER.unpack_from(message)
    try:
        return Frame(Kind(kind), stream, bytes(message[_HEADER.size :]))
    except ValueError as exc:
        raise ValidationError("bad_frame", f"tunnel message: unknown kind {kind}") from exc
