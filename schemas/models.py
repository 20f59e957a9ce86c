"""Value types of the wire contracts (one module, like aiokafka's structs).

Pure: no Kafka, PostgreSQL or OpenSearch imports. Bytes stay bytes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

CHUNK_VERSION = 2
"""The chunk record version written (:func:`schemas.codec.encode_chunk`); every version in
:data:`CHUNK_VERSIONS` is read."""
CHUNK_VERSIONS = (1, 2)
EVENT_VERSION = 1
GENESIS_HASH = "0" * 64


class Stream(StrEnum):
    """What a frame carries. SSH sessions use o/i/r/m; kubectl exec adds e and x.

    For kubectl exec, stdout is ``o``, stdin ``i``, stderr ``e``, the error channel (the
    Status JSON with the exit code) ``x`` and resize ``r``.
    """

    OUTPUT = "o"
    INPUT = "i"
    RESIZE = "r"
    MARKER = "m"
    STDERR = "e"
    ERROR = "x"


@dataclass(frozen=True, slots=True)
class Frame:
    """One write to one stream, ``offset_ms`` after the session started.

    ``data`` is raw bytes. For ``r`` it is ASCII ``COLSxROWS``; for ``m`` a UTF-8 label.
    """

    offset_ms: int
    stream: Stream
    data: bytes


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """Session metadata carried by chunk 0, which opens the session.

    Chunk 0 carries it (rather than relying on the session.start event) because chunks and
    events travel on different topics with no order between them, while a session's chunks are
    ordered on one partition: the opening chunk is always seen before the session's others.
    """

    started_at: str
    cols: int
    rows: int
    kind: str = "ssh"
    user: str = ""
    login: str = ""
    server_id: str = ""
    cluster_name: str = ""
    kubernetes_cluster: str = ""
    command: str = ""
    term: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"started_at": self.started_at, "cols": self.cols, "rows": self.rows}
        for name in (
            "kind",
            "user",
            "login",
            "server_id",
            "cluster_name",
            "kubernetes_cluster",
            "command",
            "term",
        ):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SessionInfo:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Chunk:
    """A run of frames of one session, hash-chained to the chunk before it.

    Invariant: ``(sid, seq)`` identifies a chunk; seq counts from 0 without gaps.
    ``hash = chain_hash(prev_hash, sid, seq, frames, payload)`` (see :mod:`schemas.chain`).
    """

    tenant: str
    sid: str
    seq: int
    frames: tuple[Frame, ...]
    prev_hash: str
    hash: str
    final: bool = False
    exit_code: int | None = None
    session: SessionInfo | None = None

    @property
    def payload(self) -> bytes:
        return b"".join(f.data for f in self.frames)

    @property
    def payload_len(self) -> int:
        return sum(len(f.data) for f in self.frames)


@dataclass(frozen=True, slots=True)
class PackedChunk:
    """A chunk as the persist path handles it: the header's fields, and its frames as a packed
    frame index (:mod:`schemas.frameindex`) beside the payload they cut, with no
    :class:`Frame` per frame. The same chunk as :class:`Chunk`: same identity, same hash.

    Invariant: ``index`` describes frames whose lengths add up to ``len(payload)``;
    ``first_offset_ms`` is the first frame's offset and ``last_offset_ms`` the largest, both
    ``None`` for a chunk without frames.
    """

    tenant: str
    sid: str
    seq: int
    index: bytes
    payload: bytes
    prev_hash: str
    hash: str
    final: bool = False
    exit_code: int | None = None
    session: SessionInfo | None = None
    first_offset_ms: int | None = None
    last_offset_ms: int | None = None

    @property
    def payload_len(self) -> int:
        return len(self.payload)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An audit event: Teleport field names, plus ``tenant``. ``fields`` holds everything,
    unknown fields included, exactly as they came (never dropped)."""

    fields: dict[str, Any] = field(hash=False)

    @property
    def tenant(self) -> str:
        return str(self.fields["tenant"])

    @property
    def uid(self) -> str:
        return str(self.fields["uid"])

    @property
    def type(self) -> str:
        return str(self.fields["event"])

    @property
    def sid(self) -> str | None:
        sid = self.fields.get("sid")
        return str(sid) if sid else None

    @property
    def time(self) -> str:
        return str(self.fields["time"])
