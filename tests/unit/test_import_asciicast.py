"""asciicast v2/v3 files -> Recording (parsing is replay.asciicast's reader)."""

from __future__ import annotations

import os
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
    assert [(f.offset_ms, f.stream, f.data) for f in tuple(rec.frames)[:2]] == [
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
    streamed = load_recording("asciicast", path, tenant="acme")
    in_memory = asciicast.decode_cast(V2, tenant="acme")
    assert tuple(streamed.frames) == in_memory.frames
    assert tuple(streamed.frames) == in_memory.frames  # read again from the file
    assert (streamed.sid, streamed.info, streamed.events, streamed.size()) == (
        in_memory.sid,
        in_memory.info,
        in_memory.events,
        in_memory.size(),
    )
    with pytest.raises(ValidationError, match="not one of"):
        load_recording("ttyrec", path, tenant="acme")


@pytest.mark.parametrize(
    "line",
    [b'[1e300, "o", "x"]', b'[99999999999999999999999999, "o", "x"]', b'[1e20, "o", "x"]'],
)
def test_any_input_gives_a_result_or_one_validation_error(tmp_path: Path, line: bytes) -> None:
    from ingest.import_cmd import load_input

    cast = tmp_path / "huge.cast"
    cast.write_bytes(b'{"version": 2, "width": 80, "height": 24, "timestamp": 1700000000}\n' + line)
    with pytest.raises(ValidationError) as caught:
        load_input("asciicast", cast, tenant="acme")
    assert str(caught.value).startswith(f"{cast} is not a readable asciicast input")
    assert "\n" not in str(caught.value)


V1 = {
    "version": 1,
    "width": 90,
    "height": 20,
    "duration": 1.5,
    "command": "/bin/bash",
    "title": "demo",
    "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"},
    "stdout": [[0.25, "$ ls\r\n"], [0.5, "a  b\r\n"], [0.75, "\u00e9"]],
}


@pytest.mark.parametrize("option", [0, orjson.OPT_INDENT_2])
def test_asciinema_1_files_import_with_relative_delays_one_line_or_pretty(
    tmp_path: Path, option: int
) -> None:
    path = tmp_path / "v1.json"
    path.write_bytes(orjson.dumps(V1, option=option))
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    rec = load_recording("asciicast", path, tenant="acme")
    assert [(f.offset_ms, f.data) for f in rec.frames] == [
        (250, b"$ ls\r\n"),
        (750, b"a  b\r\n"),
        (1500, "é".encode()),
    ]
    assert (rec.info.cols, rec.info.rows, rec.info.term) == (90, 20, "xterm-256color")
    assert rec.info.started_at == "2023-11-14T22:13:20Z"  # the file's mtime
    assert rec.events[1]["session_stop"] == "2023-11-14T22:13:21.5Z"
    given = load_recording("asciicast", path, tenant="acme", started_at="2026-01-01T00:00:00Z")
    assert given.info.started_at == "2026-01-01T00:00:00Z"


def test_a_cast_that_changes_between_scan_and_import_fails_the_import(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    path.write_bytes(b"".join(V2))
    rec = load_recording("asciicast", path, tenant="acme")
    path.write_bytes(b"".join([*V2, b'[3.0, "o", "late"]\n']))
    with pytest.raises(ValidationError, match="changed while"):
        list(rec.frames)
