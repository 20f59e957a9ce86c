"""Teleport ProtoStreamV1 recordings and JSON audit exports -> Recording / events."""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from ingest.importers import teleport, teleport_json
from schemas.codec import validate_event
from schemas.models import Stream
from sessionvault.errors import UnknownVersionError, ValidationError

FIXTURES = Path("/work/shared/fixtures/teleport")
TAR = FIXTURES / "session.tar"


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _part(events: list[bytes], version: int = 1, padding: int = 0) -> bytes:
    body = gzip.compress(b"".join(struct.pack(">I", len(e)) + e for e in events))
    return struct.pack(">QQQ", version, len(body), padding) + body + b"\0" * padding


def test_fixture_event_counts_match_the_recording() -> None:
    counts = Counter(name for name, _ in teleport.iter_events(TAR.read_bytes()))
    assert counts == {
        "SessionStart": 1,
        "SessionPrint": 192,
        "Resize": 1,
        "SessionCommand": 16,
        "SessionNetwork": 1,
        "SessionLeave": 1,
        "SessionEnd": 1,
    }


def test_fixture_print_bytes_match_their_declared_counts_and_offsets() -> None:
    prints = [f for name, f in teleport.iter_events(TAR.read_bytes()) if name == "SessionPrint"]
    rec = teleport.load(TAR, tenant="acme")
    output = b"".join(f.data for f in rec.frames if f.stream is Stream.OUTPUT)
    assert len(output) == sum(p["bytes"] for p in prints)
    assert output == b"".join(p["data"] for p in prints)
    # Each print's offset is the running byte count of the stream before it.
    running = 0
    for p in prints:
        assert p["offset"] == running
        running += p["bytes"]
    assert b"root@ip-10-0-0-44" in output


def test_fixture_session_info_size_duration_and_order() -> None:
    rec = teleport.load(TAR, tenant="acme")
    assert rec.sid == "47455d07-6e36-43d7-b478-20fc3326125b"
    assert (rec.info.cols, rec.info.rows) == (80, 25)
    assert rec.info.user == "benarent"
    assert rec.info.login == "root"
    assert rec.info.cluster_name == "teleport-8.asteroid.earth"
    assert rec.info.started_at == "2021-11-11T00:27:54.476Z"
    resizes = [f for f in rec.frames if f.stream is Stream.RESIZE]
    assert [f.data for f in resizes] == [b"168x42"]
    offsets = [f.offset_ms for f in rec.frames]
    assert offsets == sorted(offsets)
    end = next(e for e in rec.events if e["event"] == "session.end")
    session_ms = (_ts(end["session_stop"]) - _ts(end["session_start"])).total_seconds() * 1000
    assert 0 < rec.duration_ms <= session_ms
    assert session_ms - rec.duration_ms < 1000  # last output shortly before the end


def test_fixture_events_are_valid_and_commands_searchable() -> None:
    rec = teleport.load(TAR, tenant="acme")
    assert Counter(e["event"] for e in rec.events) == {
        "session.start": 1,
        "resize": 1,
        "session.command": 16,
        "session.network": 1,
        "session.leave": 1,
        "session.end": 1,
    }
    for event in rec.events:
        validate_event(orjson.loads(orjson.dumps(event)))
        assert event["tenant"] == "acme"
        assert event["sid"] == rec.sid
    assert len({e["uid"] for e in rec.events}) == len(rec.events)
    commands = [e for e in rec.events if e["event"] == "session.command"]
    assert all(e["code"] == "T4000I" for e in commands)
    assert {"program", "path", "argv", "pid", "return_code"} <= commands[0].keys()
    assert any(e["program"] == "curl" for e in commands)
    start = next(e for e in rec.events if e["event"] == "session.start")
    assert start["size"] == "80:25"
    assert start["server_hostname"] == "ip-10-0-0-44"


def test_reimport_of_the_same_file_is_identical() -> None:
    assert teleport.load(TAR, tenant="acme") == teleport.load(TAR, tenant="acme")


def test_multi_part_stream_with_padding_and_unknown_fields() -> None:
    meta = _ld(2, b"session.start") + _ld(5, _varint(1 << 3) + _varint(1_700_000_000))
    start = _ld(5, _ld(1, meta) + _ld(3, _ld(1, b"sid-1")) + _ld(6, b"100:30") + _ld(99, b"x"))
    print_ = _ld(
        7, _ld(3, b"\xff\x00hi") + _varint(4 << 3) + _varint(4) + _varint(5 << 3) + _varint(7)
    )
    data = _part([start], padding=5) + _part([print_])
    rec = teleport.decode_recording(data, tenant="t")
    assert (rec.info.cols, rec.info.rows) == (100, 30)
    assert [(f.offset_ms, f.data) for f in rec.frames] == [(7, b"\xff\x00hi")]
    assert rec.events[0]["teleport_unknown_fields"] == {"99": ["eA=="]}


def test_unknown_stream_version_and_truncation_are_rejected() -> None:
    data = TAR.read_bytes()
    with pytest.raises(UnknownVersionError):
        teleport.decode_recording(struct.pack(">Q", 2) + data[8:], tenant="t")
    with pytest.raises(ValidationError):
        teleport.decode_recording(data[:-100], tenant="t")


def test_teleport_json_export_keeps_every_field() -> None:
    lines = (FIXTURES / "events.jsonl").read_bytes().splitlines()
    events = list(teleport_json.iter_events(lines, tenant="acme"))
    originals = [orjson.loads(line) for line in lines]
    assert len(events) == 2
    for event, original in zip(events, originals, strict=True):
        assert {k: v for k, v in event.items() if k not in ("tenant", "sv_version")} == original
    kube = events[1]
    assert kube["event"] == "kube.request"
    assert kube["resource_api_group"] == "core/v1"


def test_teleport_json_array_form_and_derived_uid_are_deterministic() -> None:
    doc = [{"event": "user.login", "code": "T1000I", "time": "2026-01-02T03:04:05Z", "x": 1}]
    lines = orjson.dumps(doc, option=orjson.OPT_INDENT_2).splitlines()
    first = list(teleport_json.iter_events(lines, tenant="acme"))
    again = list(teleport_json.iter_events(lines, tenant="acme"))
    other = list(teleport_json.iter_events(lines, tenant="beta"))
    assert first == again
    assert first[0]["x"] == 1
    assert first[0]["uid"] != other[0]["uid"]


def test_teleport_json_bad_event_is_named() -> None:
    with pytest.raises(ValidationError, match="event 1"):
        list(
            teleport_json.iter_events(
                [b'{"event":"a","uid":"1","time":"2026-01-01T00:00:00Z"}', b'{"event":"b"}'],
                tenant="acme",
            )
        )
