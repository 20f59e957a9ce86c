"""replay.asciicast: v2/v3 writing and reading, the UTF-8 mapping, timings and exit events."""

from __future__ import annotations

import orjson
import pytest

from replay.asciicast import CastHeader, read_cast, write_cast
from replay.kube import exit_code_from_status, status_for_exit_code
from schemas.models import Frame, Stream
from sessionvault.errors import ValidationError

OUT, INP, E, R, M, X = (
    Stream.OUTPUT,
    Stream.INPUT,
    Stream.STDERR,
    Stream.RESIZE,
    Stream.MARKER,
    Stream.ERROR,
)
HEADER = CastHeader(
    cols=120,
    rows=40,
    timestamp=1_763_700_000,
    term="xterm-256color",
    command="bash",
    title="s-1 alice@node-1",
)


def lines(data: list[bytes]) -> list[object]:
    return [orjson.loads(line) for line in b"".join(data).splitlines()]


SESSION = [
    Frame(0, OUT, b"\x1b[1;32malice@node\x1b[0m:~$ "),
    Frame(1234, INP, b"ls\r"),
    Frame(1250, OUT, b"ls\r\nfile \xe2\x9c\x93\r\n"),
    Frame(2001, R, b"100x30"),
    Frame(3000, M, b"checkpoint"),
    Frame(4567, OUT, b"bye\r\n"),
]


def test_v2_header_carries_size_timestamp_and_term() -> None:
    header, *_ = lines(list(write_cast([], HEADER, version=2)))
    assert header == {
        "version": 2,
        "width": 120,
        "height": 40,
        "timestamp": 1_763_700_000,
        "command": "bash",
        "title": "s-1 alice@node-1",
        "env": {"TERM": "xterm-256color"},
    }


def test_v2_events_use_seconds_since_start_with_exact_milliseconds() -> None:
    text = b"".join(write_cast(SESSION, HEADER, version=2)).decode()
    events = text.splitlines()[1:]
    assert events[0].startswith('[0.000000, "o", ')
    assert events[1] == '[1.234000, "i", "ls\\r"]'
    assert events[3] == '[2.001000, "r", "100x30"]'
    assert events[4] == '[3.000000, "m", "checkpoint"]'


def test_v3_events_use_intervals_since_previous_event_and_term_header() -> None:
    out = lines(list(write_cast(SESSION, HEADER, version=3)))
    assert out[0] == {
        "version": 3,
        "term": {"cols": 120, "rows": 40, "type": "xterm-256color"},
        "timestamp": 1_763_700_000,
        "command": "bash",
        "title": "s-1 alice@node-1",
    }
    assert [e[0] for e in out[1:]] == [0.0, 1.234, 0.016, 0.751, 0.999, 1.567]  # type: ignore[index]


@pytest.mark.parametrize("version", [2, 3])
def test_write_then_read_round_trips_frames_and_timings(version: int) -> None:
    cast = b"".join(write_cast(SESSION, HEADER, version=version))
    header, frames = read_cast(cast.splitlines(keepends=True))
    assert (header.cols, header.rows, header.term, header.version) == (
        120,
        40,
        "xterm-256color",
        version,
    )
    assert list(frames) == SESSION


def test_v3_long_sessions_do_not_drift_when_summing_intervals() -> None:
    many = [Frame(i * 7 + (i % 3), OUT, b"x") for i in range(20_000)]
    cast = b"".join(write_cast(many, HEADER, version=3))
    _, frames = read_cast(cast.splitlines())
    assert [f.offset_ms for f in frames] == [f.offset_ms for f in many]


def test_multibyte_character_split_across_frames_is_joined_not_corrupted() -> None:
    check = "✓".encode()  # e2 9c 93
    fs = [
        Frame(0, OUT, b"ok " + check[:1]),
        Frame(10, OUT, check[1:2]),
        Frame(20, OUT, check[2:] + b"!"),
    ]
    events = lines(list(write_cast(fs, HEADER, version=2)))[1:]
    # The first frame's lone lead byte waits; the middle frame decodes to nothing (no event).
    assert events == [[0.0, "o", "ok "], [0.02, "o", "✓!"]]


def test_invalid_utf8_becomes_replacement_characters_by_pythons_replace_rule() -> None:
    raw = b"a\xffb\xc3(c\xe2\x82d\x80"
    events = lines(list(write_cast([Frame(0, OUT, raw)], HEADER, version=2)))[1:]
    text = "".join(e[2] for e in events)  # type: ignore[index]
    assert text == raw.decode("utf-8", "replace") == "a\ufffdb\ufffd(c\ufffdd\ufffd"
    assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def test_incomplete_sequence_at_end_of_session_is_flushed_as_replacement() -> None:
    fs = [Frame(0, OUT, b"abc\xe2\x9c"), Frame(50, INP, b"q")]
    events = lines(list(write_cast(fs, HEADER, version=2)))[1:]
    assert events == [[0.0, "o", "abc"], [0.05, "i", "q"], [0.05, "o", "\ufffd"]]


def test_stderr_is_output_with_its_own_decoder() -> None:
    # A character split in stdout must not be completed by bytes of stderr.
    fs = [Frame(0, OUT, b"\xc3"), Frame(1, E, b"err\n"), Frame(2, OUT, b"\xa9")]
    events = lines(list(write_cast(fs, HEADER, version=2)))[1:]
    assert events == [[0.001, "o", "err\n"], [0.002, "o", "é"]]


def test_v3_writes_exit_event_from_error_channel_at_the_end() -> None:
    fs = [Frame(0, OUT, b"boom\n"), Frame(900, X, status_for_exit_code(3)), Frame(1000, E, b"x\n")]
    events = lines(list(write_cast(fs, HEADER, version=3)))[1:]
    assert events == [[0.0, "o", "boom\n"], [1.0, "o", "x\n"], [0.0, "x", "3"]]


def test_explicit_exit_code_wins_and_v2_has_no_exit_event() -> None:
    fs = [Frame(0, OUT, b"hi"), Frame(5, X, status_for_exit_code(0))]
    v3 = lines(list(write_cast(fs, HEADER, version=3, exit_code=7)))
    assert v3[-1] == [0.005, "x", "7"]
    v2 = lines(list(write_cast(fs, HEADER, version=2, exit_code=7)))
    assert all(e[1] != "x" for e in v2[1:])  # type: ignore[index]


def test_reading_v3_exit_event_yields_status_frame_with_that_code() -> None:
    cast = [
        b'{"version": 3, "term": {"cols": 80, "rows": 24}}',
        b"# a comment",
        b'[0.5, "o", "hi"]',
        b'[0.25, "x", "42"]',
        b'[0.1, "zz", "unknown code"]',
    ]
    header, frames = read_cast(cast)
    got = list(frames)
    assert header.cols == 80
    assert got[0] == Frame(500, OUT, b"hi")
    assert (got[1].offset_ms, got[1].stream) == (750, X)
    assert exit_code_from_status(got[1].data) == 42
    assert len(got) == 2


@pytest.mark.parametrize(
    ("lines_", "message"),
    [
        ([], "empty"),
        ([b"not json"], "not JSON"),
        ([b'{"version": 1, "width": 80, "height": 24}'], "version 1 file has no"),
        ([b'{"version": 4, "width": 80, "height": 24}'], "version 4"),
        ([b'{"version": 2}'], "columns and rows"),
        ([b'{"version": 2, "width": 80, "height": 24}', b'["x", "o", "a"]'], "line 2"),
    ],
)
def test_read_cast_names_the_fault(lines_: list[bytes], message: str) -> None:
    def parse() -> None:
        _, frames = read_cast(lines_)
        list(frames)

    with pytest.raises(ValidationError, match=message) as info:
        parse()
    assert info.value.reason == "bad_asciicast"


def test_unsupported_write_version_is_rejected() -> None:
    with pytest.raises(ValueError, match="version 1"):
        list(write_cast([], HEADER, version=1))
