"""tlog JSON messages -> Recording: timing grammar, text/binary reassembly, ids and ordering."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ingest.importers import tlog
from schemas.codec import validate_event
from schemas.models import Frame, Stream
from sessionvault.errors import UnknownVersionError, ValidationError

# The example message of tlog's doc/log_format.md (a pasted "date" command and its output).
DOC_EXAMPLE: dict[str, Any] = {
    "ver": "2.1",
    "host": "server.example.com",
    "rec": "e843f15839e54e7d83bdc8c128978586-22c2-5d24f15",
    "user": "johndoe",
    "term": "xterm",
    "session": 324,
    "id": 1,
    "pos": 345349,
    "timing": "=80x24<5+1>6+3>30+6>20",
    "in_txt": "date\r",
    "in_bin": [],
    "out_txt": "date\r\nMon Nov 30 11:52:45 UTC 2015\r\n[johndoe@server ~]$ ",
    "out_bin": [],
}


def msg(**changes: Any) -> dict[str, Any]:
    return {**DOC_EXAMPLE, **changes}


def lines(*messages: dict[str, Any]) -> list[bytes]:
    return [orjson.dumps(m) for m in messages]


START = "2015-11-30T11:46:59Z"


def test_doc_example_rebuilds_input_and_output_with_timing() -> None:
    rec = tlog.decode_messages(lines(msg()), tenant="acme", started_at=START)
    p = 345349
    assert rec.frames == (
        Frame(p, Stream.RESIZE, b"80x24"),
        Frame(p, Stream.INPUT, b"date\r"),
        Frame(p + 1, Stream.OUTPUT, b"date\r\n"),
        Frame(p + 4, Stream.OUTPUT, b"Mon Nov 30 11:52:45 UTC 2015\r\n"),
        Frame(p + 10, Stream.OUTPUT, b"[johndoe@server ~]$ "),
    )
    assert (rec.info.cols, rec.info.rows, rec.info.user, rec.info.term) == (
        80,
        24,
        "johndoe",
        "xterm",
    )


def test_invalid_utf8_bytes_come_back_exactly_from_bin_arrays() -> None:
    # Output bytes: "a" 0xFF 0xFE "é" ; tlog stores 2 replacement chars + the 2 raw bytes.
    m = msg(
        id=1,
        pos=0,
        timing="=100x30>1]2/2>1",
        out_txt="a\ufffd\ufffdé",
        out_bin=[255, 254],
        in_txt="",
    )
    rec = tlog.decode_messages(lines(m), tenant="acme", started_at=START)
    assert b"".join(f.data for f in rec.frames if f.stream is Stream.OUTPUT) == (
        b"a\xff\xfe" + "é".encode()
    )


def test_messages_are_ordered_by_id_and_redelivered_duplicates_dropped() -> None:
    first = msg(id=1, pos=0, timing=">3", out_txt="one", in_txt="")
    second = msg(id=2, pos=100, timing=">3", out_txt="two", in_txt="")
    rec = tlog.decode_messages(lines(second, first, second), tenant="acme", started_at=START)
    assert [(f.offset_ms, f.data) for f in rec.frames] == [(0, b"one"), (100, b"two")]


def test_missing_message_is_an_error_not_a_silent_gap() -> None:
    with pytest.raises(ValidationError, match="missing"):
        tlog.decode_messages(
            lines(msg(id=1, pos=0), msg(id=3, pos=5)), tenant="acme", started_at=START
        )


def test_several_recordings_need_a_choice() -> None:
    data = lines(msg(id=1, pos=0), msg(id=1, pos=0, rec="other"))
    with pytest.raises(ValidationError, match="several recordings"):
        tlog.decode_messages(data, tenant="acme", started_at=START)
    rec = tlog.decode_messages(data, tenant="acme", rec="other", started_at=START)
    assert rec.events[0]["tlog"]["rec"] == "other"


def test_journal_export_gives_wall_clock_start() -> None:
    wrapped = {
        "MESSAGE": orjson.dumps(msg(id=1, pos=2000)).decode(),
        "__REALTIME_TIMESTAMP": "1448884019000000",  # 2015-11-30T11:46:59Z
        "_COMM": "tlog-rec-sessio",
    }
    rec = tlog.decode_messages([orjson.dumps(wrapped)], tenant="acme")
    assert rec.info.started_at == "2015-11-30T11:46:57Z"
    for event in rec.events:
        validate_event(orjson.loads(orjson.dumps(event)))


def test_plain_messages_without_start_time_are_refused() -> None:
    with pytest.raises(ValidationError, match="started_at"):
        tlog.decode_messages(lines(msg()), tenant="acme")


def test_sid_is_derived_from_host_and_rec() -> None:
    a = tlog.decode_messages(lines(msg()), tenant="acme", started_at=START)
    b = tlog.decode_messages(lines(msg()), tenant="acme", started_at=START)
    c = tlog.decode_messages(lines(msg(rec="x")), tenant="acme", started_at=START)
    assert a == b
    assert a.sid != c.sid


@pytest.mark.parametrize("timing", ["<5x", "]3", "=80/24", "?1", ">1/2"])
def test_malformed_timing_is_rejected(timing: str) -> None:
    with pytest.raises(ValidationError):
        tlog.parse_timing(timing)


def test_timing_asking_for_more_than_the_message_holds_is_rejected() -> None:
    with pytest.raises(ValidationError, match="more text"):
        tlog.decode_messages(lines(msg(timing=">500")), tenant="acme", started_at=START)
    with pytest.raises(ValidationError, match="more bytes"):
        tlog.decode_messages(lines(msg(timing="]0/3")), tenant="acme", started_at=START)


def test_unknown_major_version_is_refused() -> None:
    with pytest.raises(UnknownVersionError):
        tlog.decode_messages(lines(msg(ver="3.0")), tenant="acme", started_at=START)


def _journal_entry(message: bytes | None, realtime_us: int, *, as_bytes: bool = False) -> bytes:
    """One line as ``journalctl -o json`` prints a tlog-rec-session entry (systemd's JSON
    export format: every value a string; a field that is not printable UTF-8 is an array of
    byte values; a field over 4 KiB is null unless --all)."""
    entry: dict[str, Any] = {
        "__CURSOR": f"s=9d6b;i={realtime_us:x};b=4a1c;m=1f;t={realtime_us:x};x=1",
        "__REALTIME_TIMESTAMP": str(realtime_us),
        "__MONOTONIC_TIMESTAMP": "123456789",
        "_BOOT_ID": "4a1c0b3e7f0d4c6e9d3f2a1b0c9d8e7f",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "tlog-rec-session",
        "_COMM": "tlog-rec-sessio",
        "_UID": "1000",
        "TLOG_REC": DOC_EXAMPLE["rec"],
        "TLOG_USER": "johndoe",
        "TLOG_SESSION": "324",
        "TLOG_ID": "1",
        "MESSAGE": None if message is None else (list(message) if as_bytes else message.decode()),
    }
    return orjson.dumps(entry)


def test_a_whole_journal_export_imports_the_tlog_entries_and_skips_the_rest() -> None:
    first = orjson.dumps(msg(id=1, pos=2000, timing="=80x24>6", out_txt="hello\n"))
    # A message with a byte that is not UTF-8 (in out_bin) is still ASCII JSON; journald
    # exports it as bytes when told so (here: as an array), and it must read the same.
    second = orjson.dumps(
        msg(id=2, pos=2500, timing="]1/1", out_txt="\ufffd", out_bin=[255], in_txt="")
    )
    other = orjson.dumps(
        {"__REALTIME_TIMESTAMP": "1448884019500000", "SYSLOG_IDENTIFIER": "sshd",
         "MESSAGE": "Accepted publickey for johndoe"}
    )  # fmt: skip
    binary_other = orjson.dumps({"SYSLOG_IDENTIFIER": "kernel", "MESSAGE": [0, 159, 146, 150]})
    data = [
        other,
        _journal_entry(first, 1448884019000000),
        binary_other,
        _journal_entry(second, 1448884019500000, as_bytes=True),
    ]
    rec = tlog.decode_messages(data, tenant="acme")
    assert [(f.offset_ms, f.stream, f.data) for f in rec.frames] == [
        (2000, Stream.RESIZE, b"80x24"),
        (2000, Stream.OUTPUT, b"hello\n"),
        (2500, Stream.OUTPUT, b"\xff"),
    ]
    assert rec.info.started_at == "2015-11-30T11:46:57Z"


def test_a_journal_export_without_all_names_the_fix() -> None:
    data = [_journal_entry(None, 1448884019000000)]
    with pytest.raises(ValidationError, match="--all"):
        tlog.decode_messages(data, tenant="acme")
