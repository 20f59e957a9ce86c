"""sudo I/O log directories -> Recording (generated directories laid out as sudo writes them)."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from ingest.importers import sudo_io
from schemas.codec import validate_event
from schemas.models import Frame, Stream
from sessionvault.errors import ValidationError

OUT1 = b"\x1b[?2004h\x1b]0;root@web1: /root\x07root@web1:/root# "
IN1 = b"ls -la\r"
OUT2 = b"ls -la\r\ntotal 8\r\n\xff\xfe invalid utf-8 \xc3\x28\r\n"
IN2 = b"exit\r"
OUT3 = b"exit\r\n"

TIMING = (
    f"4 0.012345 {len(OUT1)}\n"
    f"3 1.500000 {len(IN1)}\n"
    f"4 0.000500 {len(OUT2)}\n"
    "5 0.250000 50 132\n"
    "7 0.100000 TSTP\n"
    f"3 2.001 {len(IN2)}\n"
    f"4 0.1 {len(OUT3)}\n"
)

LOG_JSON = {
    "timestamp": {"seconds": 1763712000, "nanoseconds": 250000000},
    "submituser": "alice",
    "command": "/bin/bash",
    "runuser": "root",
    "runcwd": "/root",
    "ttyname": "/dev/pts/3",
    "submithost": "web1.example.com",
    "submitcwd": "/home/alice",
    "runuid": 0,
    "columns": 120,
    "lines": 40,
    "runargv": ["bash", "-l"],
    "some_future_field": {"kept": True},
}


def make_iolog(root: Path, *, compress: bool = True, legacy_log: bool = False) -> Path:
    d = root / "00" / "00" / "01"
    d.mkdir(parents=True)
    if legacy_log:
        (d / "log").write_bytes(
            b"1763712000:alice:root::/dev/pts/3:40:120\n/home/alice\n/bin/bash\n"
        )
    else:
        (d / "log.json").write_bytes(orjson.dumps(LOG_JSON, option=orjson.OPT_INDENT_2))
    (d / "timing").write_text(TIMING)
    for name, data in (("ttyout", OUT1 + OUT2 + OUT3), ("ttyin", IN1 + IN2)):
        (d / name).write_bytes(gzip.compress(data) if compress else data)
    # sudo creates the unused stream files too (empty, compressed when compress_io is on).
    for name in ("stdin", "stdout", "stderr"):
        (d / name).write_bytes(gzip.compress(b"") if compress else b"")
    return d


@pytest.mark.parametrize("compress", [True, False])
def test_frames_bytes_and_exact_offsets(tmp_path: Path, compress: bool) -> None:
    rec = sudo_io.load(make_iolog(tmp_path, compress=compress), tenant="acme")
    # Delays are summed exactly in ns and floored to whole ms: 0.012345 + 1.5 -> 1512 ms.
    assert rec.frames == (
        Frame(12, Stream.OUTPUT, OUT1),
        Frame(1512, Stream.INPUT, IN1),
        Frame(1512, Stream.OUTPUT, OUT2),
        Frame(1762, Stream.RESIZE, b"132x50"),
        Frame(1862, Stream.MARKER, b"suspend:TSTP"),
        Frame(3863, Stream.INPUT, IN2),
        Frame(3963, Stream.OUTPUT, OUT3),
    )


def test_session_info_and_events_from_log_json(tmp_path: Path) -> None:
    rec = sudo_io.load(make_iolog(tmp_path), tenant="acme")
    assert rec.info.started_at == "2025-11-21T08:00:00.25Z"
    assert (rec.info.cols, rec.info.rows) == (120, 40)
    assert (rec.info.user, rec.info.login, rec.info.server_id) == (
        "alice",
        "root",
        "web1.example.com",
    )
    assert rec.info.command == "bash -l"
    start, end = rec.events
    for event in rec.events:
        validate_event(orjson.loads(orjson.dumps(event)))
        assert event["sid"] == rec.sid
    assert start["event"] == "session.start"
    assert start["sudo_iolog"]["some_future_field"] == {"kept": True}
    assert end["session_stop"] == "2025-11-21T08:00:04.213Z"


def test_legacy_log_file_is_understood(tmp_path: Path) -> None:
    rec = sudo_io.load(make_iolog(tmp_path, legacy_log=True), tenant="acme")
    assert rec.info.started_at == "2025-11-21T08:00:00Z"
    assert (rec.info.cols, rec.info.rows) == (120, 40)
    assert rec.info.command == "/bin/bash"


def test_reimport_gives_same_sid_and_other_tenant_another(tmp_path: Path) -> None:
    d = make_iolog(tmp_path)
    assert sudo_io.load(d, tenant="acme") == sudo_io.load(d, tenant="acme")
    assert sudo_io.load(d, tenant="acme").sid != sudo_io.load(d, tenant="beta").sid


def test_pre_1_8_two_field_timing_lines_are_ttyout() -> None:
    assert sudo_io.parse_timing_line("0.5 12") == (4, 500_000_000, ["12"])
    assert sudo_io.parse_timing_line("5 0,25 24 80") == (5, 250_000_000, ["24", "80"])


def test_stream_shorter_than_timing_promises_is_rejected(tmp_path: Path) -> None:
    d = make_iolog(tmp_path)
    (d / "ttyout").write_bytes(gzip.compress(OUT1))
    with pytest.raises(ValidationError, match="ttyout ends"):
        sudo_io.load(d, tenant="acme")


def test_unknown_event_type_and_missing_metadata_are_rejected(tmp_path: Path) -> None:
    d = make_iolog(tmp_path)
    (d / "timing").write_text("9 0.1 3\n")
    with pytest.raises(ValidationError, match="event type 9"):
        sudo_io.load(d, tenant="acme")
    (d / "log.json").unlink()
    with pytest.raises(ValidationError, match=r"neither log\.json nor log"):
        sudo_io.load(d, tenant="acme")


def test_a_ttyout_whose_gzip_crc_fails_is_refused_not_imported_damaged(tmp_path: Path) -> None:
    d = make_iolog(tmp_path)
    packed = bytearray(gzip.compress(OUT1 + OUT2 + OUT3))
    packed[-8] ^= 0xFF  # the CRC-32 in the gzip trailer: the bytes read back look fine
    (d / "ttyout").write_bytes(bytes(packed))
    with pytest.raises(ValidationError, match="damaged"):
        sudo_io.load(d, tenant="acme")
    packed = bytearray(gzip.compress(OUT1 + OUT2 + OUT3))
    packed[len(packed) // 2] ^= 0xFF  # a flipped bit inside the deflate stream
    (d / "ttyout").write_bytes(bytes(packed))
    with pytest.raises(ValidationError):
        sudo_io.load(d, tenant="acme")
