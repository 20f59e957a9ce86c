"""asciicast v2/v3 files -> Recording (parsing is replay.asciicast's reader)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ingest.importers import asciicast, load_recording
from schemas.codec import validate_event
from schemas.models import Frame, Stream
from sessionvault.errors import ValidationError

V2 = [
    orjson.dumps(
        {
            "version": 2,
            "width": 100,
            "height": 30,
            "timestamp": 1700000000,
            "env": {"TERM": "xterm-256color"},
        }
    )
    + b"\n",
    b'[0.5, "o", "hello \\u00e9\\r\\n"]\n',
    b'[1.25, "i", "ls\\r"]\n',
    b'[2.0, "r", "120x40"]\n',
]
V3 = [
    orjson.dumps({"version": 3, "term": {"cols": 80, "rows": 24, "type": "xterm"}}) + b"\n",
    b'[0.5, "o", "a"]\n',
    b'[0.25, "o", "b"]\n',
    b'[0.1, "x", "3"]\n',
]


def test_v2_frames_info_and_events() -> None:
    rec = asciicast.decode_cast(V2, tenant="acme")
    assert rec.frames == (
        Frame(500, Stream.OUTPUT, "hello é\r\n".encode()),
        Frame(1250, Stream.INPUT, b"ls\r"),
        Frame(2000, Stream.RESIZE, b"120x40"),
    )
    assert (rec.info.cols, rec.info.rows, rec.info.term) == (100, 30, "xterm-256color")
    assert rec.info.started_at == "2023-11-14T22:13:20Z"
    for event in rec.events:
        validate_event(orjson.loads(orjson.dumps(event)))
    assert rec.events[1]["session_stop"] == "2023-11-14T22:13:22Z"


def test_v3_relative_times_and_exit_code() -> None:
    rec = asciicast.decode_cast(V3, tenant="acme", started_at="2026-01-01T00:00:00Z")
    assert [(f.offset_ms, f.stream, f.data) for f in rec.frames[:2]] == [
        (500, Stream.OUTPUT, b"a"),
        (750, Stream.OUTPUT, b"b"),
    ]
    assert rec.exit_code == 3
    assert rec.events[1]["exit_code"] == 3


def test_sid_follows_file_content_and_tenant() -> None:
    a = asciicast.decode_cast(V2, tenant="acme")
    assert a == asciicast.decode_cast(V2, tenant="acme")
    assert a.sid != asciicast.decode_cast(V2, tenant="beta").sid
    assert a.sid != asciicast.decode_cast([*V2, b'[3.0, "o", "x"]\n'], tenant="acme").sid


def test_file_without_timestamp_needs_started_at() -> None:
    with pytest.raises(ValidationError, match="started_at"):
        asciicast.decode_cast(V3, tenant="acme")


def test_load_recording_dispatches_by_format_and_rejects_unknown(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    path.write_bytes(b"".join(V2))
    assert load_recording("asciicast", path, tenant="acme") == asciicast.decode_cast(
        V2, tenant="acme"
    )
    with pytest.raises(ValidationError, match="not one of"):
        load_recording("ttyrec", path, tenant="acme")
