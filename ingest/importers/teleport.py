"""Teleport session recordings (ProtoStreamV1) -> :class:`Recording`.

File layout: one or more parts, each a 24-byte header (version, part size, padding size; each
an 8-byte big-endian unsigned), a gzip body of ``part size`` bytes, then ``padding size``
bytes to skip. The decompressed body is a run of events, each a 4-byte big-endian length and
a protobuf ``events.OneOf`` message.

The protobuf wire format is decoded by hand (varints, length-delimited fields; no generated
code). Field numbers come from Teleport's ``api/proto/teleport/legacy/types/events/events.proto``:
``OneOf`` fields SessionStart 5, SessionJoin 6, SessionPrint 7, Resize 9, SessionEnd 10,
SessionCommand 11, SessionNetwork 13, SessionData 14, SessionLeave 15; embedded messages
(Metadata, UserMetadata, ...) are flattened into the event with their JSON names, as Teleport's
own JSON encoding does. Fields this decoder has no name for are kept under
``teleport_unknown_fields`` (field path -> values, bytes as base64), never dropped.

Mapping: ``print`` events become output frames (their bytes exactly, at ``ms``); ``resize``
becomes a resize frame (``COLSxROWS``) and an event; every other event becomes a searchable
audit event (session.command with program, path, argv, pid, return_code). The session id is
the recording's own ``sid`` (Teleport's session UUID), so importing a recording that was also
streamed live names the same session; event uids are Teleport's own where present.
"""

from __future__ import annotations

import base64
import gzip
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

from ingest.importers.base import Recording, event_uid, rfc3339_from_ns, stamp_event
from schemas.models import Frame, SessionInfo, Stream
from sessionvault.errors import UnknownVersionError, ValidationError

__all__ = [
    "ONEOF_FIELDS",
    "decode_recording",
    "iter_events",
    "iter_parts",
    "load",
]

PART_HEADER = struct.Struct(">QQQ")
PROTO_STREAM_V1 = 1
_LEN = struct.Struct(">I")

# A schema maps field number -> (JSON name, kind). Kind is a scalar kind name, or a nested
# schema dict for a gogoproto-embedded message whose fields are flattened into the parent.
Schema = dict[int, tuple[str, Union[str, "Schema"]]]

_METADATA: Schema = {
    1: ("ei", "int"),
    2: ("event", "str"),
    3: ("uid", "str"),
    4: ("code", "str"),
    5: ("time", "ts"),
    6: ("cluster_name", "str"),
}
_USER: Schema = {
    1: ("user", "str"),
    2: ("login", "str"),
    3: ("impersonator", "str"),
    4: ("aws_role_arn", "str"),
    5: ("access_requests", "strs"),
    6: ("azure_identity", "str"),
    7: ("gcp_service_account", "str"),
    9: ("required_private_key_policy", "str"),
    10: ("user_kind", "int"),
    11: ("bot_name", "str"),
    12: ("bot_instance_id", "str"),
    13: ("user_origin", "int"),
    14: ("user_roles", "strs"),
    16: ("user_cluster_name", "str"),
}
_SESSION: Schema = {1: ("sid", "str"), 2: ("with_mfa", "str"), 3: ("private_key_policy", "str")}
_SERVER: Schema = {
    1: ("namespace", "str"),
    2: ("server_id", "str"),
    3: ("server_hostname", "str"),
    4: ("server_addr", "str"),
    5: ("server_labels", "map"),
    6: ("forwarded_by", "str"),
    7: ("server_sub_kind", "str"),
    8: ("server_version", "str"),
}
_CONNECTION: Schema = {1: ("addr.local", "str"), 2: ("addr.remote", "str"), 3: ("proto", "str")}
_KUBE_CLUSTER: Schema = {
    1: ("kubernetes_cluster", "str"),
    2: ("kubernetes_users", "strs"),
    3: ("kubernetes_groups", "strs"),
    4: ("kubernetes_labels", "map"),
}
_KUBE_POD: Schema = {
    1: ("kubernetes_pod_name", "str"),
    2: ("kubernetes_pod_namespace", "str"),
    3: ("kubernetes_container_name", "str"),
    4: ("kubernetes_container_image", "str"),
    5: ("kubernetes_node_name", "str"),
}
_BPF: Schema = {
    1: ("pid", "int"),
    2: ("cgroup_id", "int"),
    3: ("program", "str"),
    4: ("audit_session_id", "int"),
}

_SESSION_START: Schema = {
    1: ("", _METADATA),
    2: ("", _USER),
    3: ("", _SESSION),
    4: ("", _SERVER),
    5: ("", _CONNECTION),
    6: ("size", "str"),
    7: ("", _KUBE_CLUSTER),
    8: ("", _KUBE_POD),
    9: ("initial_command", "strs"),
    10: ("session_recording", "str"),
    12: ("invited", "strs"),
    13: ("reason", "str"),
}
_SESSION_JOIN: Schema = {
    1: ("", _METADATA),
    2: ("", _USER),
    3: ("", _SESSION),
    4: ("", _SERVER),
    5: ("", _CONNECTION),
    6: ("", _KUBE_CLUSTER),
}
_SESSION_PRINT: Schema = {
    1: ("", _METADATA),
    2: ("ci", "int"),
    3: ("data", "bytes"),
    4: ("bytes", "int"),
    5: ("ms", "int"),
    6: ("offset", "int"),
}
_RESIZE: Schema = {
    1: ("", _METADATA),
    2: ("", _USER),
    3: ("", _SESSION),
    4: ("", _CONNECTION),
    5: ("", _SERVER),
    6: ("size", "str"),
    7: ("", _KUBE_CLUSTER),
    8: ("", _KUBE_POD),
}
_SESSION_END: Schema = {
    1: ("", _METADATA),
    2: ("", _USER),
    3: ("", _SESSION),
    4: ("", _CONNECTION),
    5: ("", _SERVER),
    6: ("enhanced_recording", "bool"),
    7: ("interactive", "bool"),
    8: ("participants", "strs"),
    9: ("session_start", "ts"),
    10: ("session_stop", "ts"),
    11: ("", _KUBE_CLUSTER),
    12: ("", _KUBE_POD),
    13: ("initial_command", "strs"),
    14: ("session_recording", "str"),
}
_SESSION_COMMAND: Schema = {
    1: ("", _METADATA),
    2: ("", _USER),
    3: ("", _SESSION),
    4: ("", _SERVER),
    5: ("", _BPF),
    6: ("ppid", "int"),
    7: ("path", "str"),
    8: ("argv", "strs"),
    9: ("return_code", "int"),
}
_SESSION_NETWORK: Schema = {
    1: ("", _METADATA),
    2: ("", _USER),
    3: ("", _SESSION),
    4: ("", _SERVER),
    5: ("", _BPF),
    6: ("src_addr", "str"),
    7: ("dst_addr", "str"),
    8: ("dst_port", "int"),
    9: ("version", "int"),
    10: ("operation", "int"),
    11: ("action", "int"),
}
_SESSION_DATA: Schema = {
    1: ("", _METADATA),
    2: ("", _USER),
    3: ("", _SESSION),
    4: ("", _SERVER),
    5: ("", _CONNECTION),
    6: ("tx", "int"),
    7: ("rx", "int"),
}
_SESSION_LEAVE: Schema = {
    1: ("", _METADATA),
    2: ("", _USER),
    3: ("", _SESSION),
    4: ("", _SERVER),
    5: ("", _CONNECTION),
}
# Every audit event message has Metadata as field 1: enough to name and time any other type.
_OTHER: Schema = {1: ("", _METADATA)}

ONEOF_FIELDS: dict[int, tuple[str, Schema]] = {
    5: ("SessionStart", _SESSION_START),
    6: ("SessionJoin", _SESSION_JOIN),
    7: ("SessionPrint", _SESSION_PRINT),
    9: ("Resize", _RESIZE),
    10: ("SessionEnd", _SESSION_END),
    11: ("SessionCommand", _SESSION_COMMAND),
    13: ("SessionNetwork", _SESSION_NETWORK),
    14: ("SessionData", _SESSION_DATA),
    15: ("SessionLeave", _SESSION_LEAVE),
}


def _bad(message: str) -> ValidationError:
    return ValidationError("bad_teleport_recording", message)


# Teleport's JSON always writes these (no omitempty); proto3 leaves zero values off the wire.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "SessionPrint": {"ci": 0, "bytes": 0, "ms": 0, "offset": 0},
    "SessionEnd": {"enhanced_recording": False, "interactive": False, "participants": []},
    "SessionCommand": {
        "pid": 0,
        "cgroup_id": 0,
        "program": "",
        "ppid": 0,
        "path": "",
        "argv": [],
        "return_code": 0,
    },
    "SessionNetwork": {"pid": 0, "program": "", "dst_port": 0, "operation": 0, "action": 0},
    "SessionData": {"tx": 0, "rx": 0},
}


# -- protobuf wire format --------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _bad("protobuf varint runs past the end of the message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _bad("protobuf varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one message; value is an int or the raw bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise _bad(f"protobuf field {number} runs past the end of the message")
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise _bad(f"protobuf wire type {wire} (field {number}) is not supported")
        if number == 0 or pos > len(buf):
            raise _bad("malformed protobuf message")
        yield number, wire, value


def _signed(v: int) -> int:
    # int32/int64 are encoded as 64-bit two's complement varints.
    return v - (1 << 64) if v >= 1 << 63 else v


def _timestamp(raw: bytes) -> int:
    seconds = nanos = 0
    for number, _wire, value in _fields(raw):
        if number == 1 and isinstance(value, int):
            seconds = _signed(value)
        elif number == 2 and isinstance(value, int):
            nanos = _signed(value)
    return seconds * 1_000_000_000 + nanos


def _map_entry(raw: bytes) -> tuple[str, str]:
    key = val = ""
    for number, _wire, value in _fields(raw):
        if isinstance(value, bytes):
            if number == 1:
                key = value.decode("utf-8", "replace")
            elif number == 2:
                val = value.decode("utf-8", "replace")
    return key, val


def _unknown_value(value: int | bytes) -> int | str:
    return base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value


def _decode(
    buf: bytes, schema: Schema, out: dict[str, Any], unknown: dict[str, list[Any]], path: str
) -> None:
    for number, wire, value in _fields(buf):
        spec = schema.get(number)
        if spec is None:
            unknown.setdefault(f"{path}{number}", []).append(_unknown_value(value))
            continue
        name, kind = spec
        if isinstance(kind, dict):
            if not isinstance(value, bytes):
                raise _bad(f"field {path}{number} must be a message")
            _decode(value, kind, out, unknown, f"{path}{number}.")
            continue
        if kind in ("int", "bool"):
            if not isinstance(value, int):
                raise _bad(f"field {path}{number} ({name}) must be a varint, wire type {wire}")
            out[name] = bool(value) if kind == "bool" else _signed(value)
            continue
        if not isinstance(value, bytes):
            raise _bad(f"field {path}{number} ({name}) must be length-delimited")
        if kind == "bytes":
            out[name] = value
        elif kind == "str":
            # Teleport's own strings are UTF-8 by proto3 rule; "replace" only guards bad input.
            out[name] = value.decode("utf-8", "replace")
        elif kind == "strs":
            out.setdefault(name, []).append(value.decode("utf-8", "replace"))
        elif kind == "ts":
            out[name] = _timestamp(value)
        elif kind == "map":
            k, v = _map_entry(value)
            out.setdefault(name, {})[k] = v


# -- container -------------------------------------------------------------------------------


def iter_parts(data: bytes) -> Iterator[bytes]:
    """The decompressed body of each ProtoStreamV1 part, in file order."""
    if len(data) > 262 and data[257:262] == b"ustar":
        raise _bad("this is a tar archive (Teleport's pre-4.4 recording format), not supported")
    pos = 0
    while pos < len(data):
        if pos + PART_HEADER.size > len(data):
            raise _bad(f"truncated part header at byte {pos}")
        version, size, padding = PART_HEADER.unpack_from(data, pos)
        if version != PROTO_STREAM_V1:
            raise UnknownVersionError(
                f"ProtoStream version {version} at byte {pos} is not known (1)"
            )
        start = pos + PART_HEADER.size
        if start + size + padding > len(data):
            raise _bad(f"part at byte {pos} claims {size}+{padding} bytes past the end of file")
        try:
            yield gzip.decompress(data[start : start + size])
        except (OSError, EOFError, zlib.error) as exc:
            raise _bad(f"part at byte {pos}: gzip body does not decompress: {exc}") from exc
        pos = start + size + padding


def iter_events(data: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
    """(OneOf type name, decoded fields) of every event in a recording, in stream order.

    Event types this decoder does not know are named ``OneOf<N>`` and keep their Metadata.
    Times (``time``, ``session_start``, ``session_stop``) are Unix nanoseconds here.
    """
    for body in iter_parts(data):
        pos = 0
        while pos < len(body):
            if pos + _LEN.size > len(body):
                raise _bad("truncated event length prefix")
            (length,) = _LEN.unpack_from(body, pos)
            pos += _LEN.size
            message = body[pos : pos + length]
            if len(message) != length:
                raise _bad("truncated event")
            pos += length
            for number, _wire, value in _fields(message):
                if not isinstance(value, bytes):
                    raise _bad(f"OneOf field {number} must be a message")
                name, schema = ONEOF_FIELDS.get(number, (f"OneOf{number}", _OTHER))
                fields: dict[str, Any] = {}
                unknown: dict[str, list[Any]] = {}
                _decode(value, schema, fields, unknown, "")
                if unknown:
                    fields["teleport_unknown_fields"] = unknown
                fields.setdefault("ei", 0)  # proto3 does not encode a zero Index
                for key, default in _DEFAULTS.get(name, {}).items():
                    fields.setdefault(key, list(default) if isinstance(default, list) else default)
                yield name, fields


# -- mapping ---------------------------------------------------------------------------------


def _size(text: object) -> tuple[int, int] | None:
    if not isinstance(text, str) or ":" not in text:
        return None
    cols, _, rows = text.partition(":")
    try:
        c, r = int(cols), int(rows)
    except ValueError:
        return None
    return (c, r) if 1 <= c <= 65535 and 1 <= r <= 65535 else None


def _ms_between(later_ns: object, earlier_ns: int) -> int:
    if not isinstance(later_ns, int):
        return 0
    return max(0, (later_ns - earlier_ns) // 1_000_000)


def decode_recording(data: bytes, *, tenant: str) -> Recording:
    """Decode a whole ProtoStreamV1 recording (the file's bytes) for ``tenant``.

    Raises :class:`ValidationError` (reason ``bad_teleport_recording``) naming the fault, and
    :class:`UnknownVersionError` for a ProtoStream version other than 1.
    """
    decoded = list(iter_events(data))
    start = next((f for name, f in decoded if name == "SessionStart"), None)
    if start is None:
        raise _bad("recording has no session.start event")
    sid = start.get("sid")
    if not isinstance(sid, str) or not sid:
        raise _bad("session.start carries no session id")
    start_ns = start.get("time")
    if not isinstance(start_ns, int):
        raise _bad("session.start carries no time")
    cols, rows = _size(start.get("size")) or (80, 24)
    kube_cluster = str(start.get("kubernetes_cluster", ""))
    info = SessionInfo(
        started_at=rfc3339_from_ns(start_ns),
        cols=cols,
        rows=rows,
        kind="kube" if kube_cluster else "ssh",
        user=str(start.get("user", "")),
        login=str(start.get("login", "")),
        server_id=str(start.get("server_id", "")),
        cluster_name=str(start.get("cluster_name", "")),
        kubernetes_cluster=kube_cluster,
        command=" ".join(start.get("initial_command", [])),
    )
    frames: list[Frame] = []
    events: list[dict[str, Any]] = []
    last_ms = 0
    for name, fields in decoded:
        if name == "SessionPrint":
            # Keep frames in time order even if a writer's clock stepped back.
            last_ms = max(last_ms, int(fields.get("ms", 0)))
            frames.append(Frame(last_ms, Stream.OUTPUT, bytes(fields.get("data", b""))))
            continue
        if name == "Resize":
            size = _size(fields.get("size"))
            if size is not None:
                last_ms = max(last_ms, _ms_between(fields.get("time"), start_ns))
                frames.append(Frame(last_ms, Stream.RESIZE, f"{size[0]}x{size[1]}".encode()))
        events.append(_to_event(name, fields, sid=sid, start_ns=start_ns, tenant=tenant))
    return Recording(
        sid=sid, info=info, frames=tuple(frames), events=tuple(events), source="teleport"
    )


def _to_event(
    name: str, fields: dict[str, Any], *, sid: str, start_ns: int, tenant: str
) -> dict[str, Any]:
    out = dict(fields)
    for key in ("time", "session_start", "session_stop"):
        if isinstance(out.get(key), int):
            out[key] = rfc3339_from_ns(out[key])
    out.setdefault("time", rfc3339_from_ns(start_ns))
    out.setdefault("event", name)
    out["sid"] = sid
    if not out.get("uid"):
        out["uid"] = event_uid(sid, "teleport", name, out["ei"])
    return stamp_event(out, tenant=tenant)


def load(path: str | Path, *, tenant: str) -> Recording:
    """Read and decode a recording file (the I/O edge of this module)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValidationError("unreadable", f"cannot read {path}: {exc}") from exc
    return decode_recording(data, tenant=tenant)
