"""replay.export: every format, streamed, with exit codes; kubectl stdout/stderr kept apart."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import orjson
import pytest

from replay.asciicast import read_cast
from replay.export import FORMATS, export, export_async, export_frames, read_from_ms
from replay.frames import seek_frame
from replay.kube import exit_code_from_status, status_for_exit_code
from schemas.models import Frame, Stream

OUT, INP, E, R, X = Stream.OUTPUT, Stream.INPUT, Stream.STDERR, Stream.RESIZE, Stream.ERROR


@dataclass(frozen=True)
class Meta:
    sid: str = "s-1"
    tenant: str = "acme"
    kind: str = "kube-exec"
    user_name: str = "alice"
    login: str = "root"
    server_id: str = ""
    cluster_name: str = "prod"
    kubernetes_cluster: str = "k-prod"
    command: str = "sh -c make"
    term: str = "xterm"
    started_at: datetime = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)
    cols: int = 80
    rows: int = 24
    exit_code: int | None = None


FRAMES = [
    Frame(0, OUT, b"\x1b[32mbuilding\x1b[0m\r\n"),
    Frame(10, INP, b"secret-typed-input"),
    Frame(20, E, b"warning: \xff odd byte\n"),
    Frame(25, R, b"100x30"),
    Frame(40, OUT, b"done \xe2\x9c"),
    Frame(41, OUT, b"\x93\r\n"),
    Frame(50, X, status_for_exit_code(2)),
]


def run(frames: Iterable[Frame], fmt: str, meta: Meta | None = None) -> bytes:
    out = io.BytesIO()
    export(frames, meta or Meta(), fmt, out)
    return out.getvalue()


def test_raw_is_the_byte_exact_concatenation_of_stdout_and_stderr() -> None:
    expected = b"".join(f.data for f in FRAMES if f.stream in (OUT, E))
    assert run(FRAMES, "raw") == expected


def test_text_is_what_a_reader_saw() -> None:
    assert run(FRAMES, "text").decode() == "building\nwarning: \ufffd odd byte\ndone ✓\n"


def test_json_lines_keep_every_stream_distinct_and_decode_back_to_the_frames() -> None:
    lines = [orjson.loads(line) for line in run(FRAMES, "json").splitlines()]
    header, body, end = lines[0], lines[1:-1], lines[-1]
    assert header["type"] == "header"
    assert (header["sid"], header["tenant"], header["cols"], header["rows"]) == (
        "s-1",
        "acme",
        80,
        24,
    )
    assert header["started_at"] == "2026-11-21T10:00:00+00:00"
    back = [Frame(d["t_ms"], Stream(d["stream"]), base64.b64decode(d["data_b64"])) for d in body]
    assert back == FRAMES
    assert end == {
        "type": "end",
        "frames": len(FRAMES),
        "bytes": sum(len(f.data) for f in FRAMES),
        "exit_code": 2,
    }


def test_session_exit_code_wins_over_the_error_channel() -> None:
    meta = Meta(exit_code=9)
    end = orjson.loads(run(FRAMES, "json", meta).splitlines()[-1])
    assert end["exit_code"] == 9
    last = orjson.loads(run(FRAMES, "asciicast-v3", meta).splitlines()[-1])
    assert last == [0.009, "x", "9"]  # at the error frame (50 ms), after output at 41 ms


def test_asciicast_exports_read_back_with_stderr_as_output() -> None:
    for fmt, version in (("asciicast-v2", 2), ("asciicast-v3", 3)):
        header, frames = read_cast(run(FRAMES, fmt).splitlines())
        got = list(frames)
        assert (header.version, header.cols, header.rows, header.timestamp) == (
            version,
            80,
            24,
            int(Meta.started_at.timestamp()),
        )
        output = b"".join(f.data for f in got if f.stream is OUT)
        assert output == b"".join(f.data for f in FRAMES if f.stream in (OUT, E)).replace(
            b"\xff", "\ufffd".encode()
        )
        codes = [exit_code_from_status(f.data) for f in got if f.stream is X]
        assert codes == ([2] if version == 3 else [])


def test_export_streams_one_frame_at_a_time() -> None:
    seen: list[int] = []

    def source() -> Iterable[Frame]:
        for i in range(5):
            seen.append(i)
            yield Frame(i, OUT, b"%d" % i)

    class Sink(io.BytesIO):
        def write(self, b: object) -> int:
            # When frame i's bytes are written, the source has produced frame i and no further.
            assert isinstance(b, bytes)
            if b.isdigit():
                assert seen[-1] == int(b)
            return super().write(b)

    sink = Sink()
    export(source(), Meta(), "raw", sink)
    assert sink.getvalue() == b"01234"


@pytest.mark.parametrize("fmt", FORMATS)
def test_async_export_writes_the_same_bytes_as_sync_export(fmt: str) -> None:
    async def aframes() -> AsyncIterator[Frame]:
        for f in FRAMES:
            yield f

    out = io.BytesIO()
    stats = asyncio.run(export_async(aframes(), Meta(), fmt, out))
    assert out.getvalue() == run(FRAMES, fmt)
    assert (stats.frames, stats.exit_code, stats.bytes_out) == (len(FRAMES), 2, len(out.getvalue()))


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        run(FRAMES, "mp4")


def test_no_exit_code_when_neither_row_nor_channel_reports_one() -> None:
    frames = [f for f in FRAMES if f.stream is not X]
    assert orjson.loads(run(frames, "json").splitlines()[-1])["exit_code"] is None
    assert b'"x"' not in run(frames, "asciicast-v3", replace(Meta(), exit_code=None))


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (b'{"metadata":{},"status":"Success"}', 0),
        (status_for_exit_code(137), 137),
        (b'{"status":"Failure","reason":"InternalError","message":"no such container"}', None),
        (b"not json", None),
    ],
)
def test_exit_code_from_kubectl_status(status: bytes, code: int | None) -> None:
    assert exit_code_from_status(status) == code


async def _aiter(frames: Iterable[Frame]) -> AsyncIterator[Frame]:
    for f in frames:
        yield f


def run_from(fmt: str, start_ms: int, frames: Iterable[Frame] = FRAMES) -> bytes:
    """Export as the API and CLI do: read from read_from_ms, then export_async at start_ms."""
    wanted = read_from_ms(fmt, start_ms)
    stored = [f for f in frames if f.offset_ms >= wanted]
    out = io.BytesIO()
    asyncio.run(export_async(_aiter(stored), Meta(), fmt, out, start_ms))
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["asciicast-v2", "asciicast-v3"])
def test_asciicast_from_a_moment_rebuilds_the_screen_and_rebases_times_like_play(fmt: str) -> None:
    header, frames = read_cast(run_from(fmt, 30).splitlines())
    got = list(frames)
    # Everything written before 30 ms is there at time 0 (the screen as it was), later frames
    # keep their spacing from the moment: exactly play's start_at pipeline.
    seeked = [seek_frame(f, 30) for f in FRAMES]
    assert [f.offset_ms for f in seeked] == [0, 0, 0, 0, 10, 11, 20]
    assert got == list(read_cast(run(seeked, fmt).splitlines())[1])
    assert b"".join(f.data for f in got if f.stream is OUT).startswith(b"\x1b[32mbuilding")
    assert max(f.offset_ms for f in got if f.stream is OUT) == 11
    # Time 0 of the cast is the moment, not the session's start.
    assert header.timestamp == int(Meta.started_at.timestamp())  # 30 ms: the same second
    late = read_cast(run_from(fmt, 5_000, [Frame(6_000, OUT, b"x")]).splitlines())[0]
    assert late.timestamp == int(Meta.started_at.timestamp()) + 5


@pytest.mark.parametrize("fmt", ["raw", "text", "ndjson"])
def test_raw_text_and_ndjson_from_a_moment_cut_there_and_keep_session_times(fmt: str) -> None:
    cut = [f for f in FRAMES if f.offset_ms >= 30]
    assert run_from(fmt, 30) == run(cut, fmt).replace(b'"start_ms":0', b'"start_ms":30')
    if fmt == "ndjson":
        lines = [orjson.loads(line) for line in run_from(fmt, 30).splitlines()]
        assert lines[0]["start_ms"] == 30  # the header names the cut
        assert [d["t_ms"] for d in lines[1:-1]] == [40, 41, 50]  # session times, not rebased


def test_export_frames_cuts_even_when_given_every_frame() -> None:
    async def collect(fmt: str) -> list[Frame]:
        return [f async for f in export_frames(_aiter(FRAMES), fmt, 30)]

    assert asyncio.run(collect("raw")) == [f for f in FRAMES if f.offset_ms >= 30]
    assert asyncio.run(collect("asciicast-v2")) == [seek_frame(f, 30) for f in FRAMES]


def test_json_is_an_alias_of_ndjson() -> None:
    assert "ndjson" in FORMATS
    assert "json" not in FORMATS
    assert run(FRAMES, "json") == run(FRAMES, "ndjson")
