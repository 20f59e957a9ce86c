"""`sessionvault import teleport` of a real Teleport recording: stored, replayed byte-exact,
re-import changes nothing. The oracle decodes the recording with its own minimal protobuf
reader (independent of ingest.importers.teleport)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import orjson

from sessionvault.settings import Settings
from tests.integration.conftest import env_for
from tests.integration.import_support import cli, drain, dump_tables, export, fetch

FIXTURE = Path("/work/shared/fixtures/teleport/session.tar")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, pos = _varint(buf, pos)
            out.append((num, v))
        elif wire == 2:
            n, pos = _varint(buf, pos)
            out.append((num, buf[pos : pos + n]))
            pos += n
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise AssertionError(f"wire type {wire}")
    return out


def teleport_prints() -> list[tuple[int, bytes]]:
    """(ms, data) of every SessionPrint (OneOf field 7: Data 3, Bytes 4, DelayMilliseconds 5)."""
    raw = FIXTURE.read_bytes()
    _version, size, _pad = struct.unpack(">QQQ", raw[:24])
    body = gzip.decompress(raw[24 : 24 + size])
    prints = []
    pos = 0
    while pos < len(body):
        (n,) = struct.unpack(">I", body[pos : pos + 4])
        msg = body[pos + 4 : pos + 4 + n]
        pos += 4 + n
        for num, value in _fields(msg):
            if num == 7:
                assert isinstance(value, bytes)
                f = dict(_fields(value))
                data = f.get(3, b"")
                assert isinstance(data, bytes)
                assert f.get(4, 0) == len(data)  # the recorded byte count matches the data
                ms = f.get(5, 0)
                assert isinstance(ms, int)
                prints.append((ms, data))
    return prints


def test_teleport_recording_imports_and_replays_its_print_bytes_in_order(
    settings: Settings,
) -> None:
    prints = teleport_prints()
    assert len(prints) == 192
    env = env_for(settings)

    out = cli(env, "import", "teleport", str(FIXTURE))
    sid = out.stdout.decode().strip()
    drain(settings)

    session, raw = export(settings, sid, "raw")
    assert raw == b"".join(d for _, d in prints)
    # Duration: the offset of the last print; size: what session.start recorded.
    assert session.duration_ms == max(ms for ms, _ in prints)
    start = fetch(
        settings,
        "SELECT body FROM events WHERE tenant = $1 AND sid = $2 AND event = 'session.start'",
        settings.tenant,
        sid,
    )
    cols, rows = orjson.loads(str(start[0]["body"]))["size"].split(":")
    assert (session.cols, session.rows) == (int(cols), int(rows))
    end = fetch(
        settings,
        "SELECT time FROM events WHERE tenant = $1 AND sid = $2 AND event = 'session.end'",
        settings.tenant,
        sid,
    )
    assert session.ended_at == end[0]["time"]
    assert session.status == "closed"
    assert session.tenant == settings.tenant

    # The json export keeps each print as an output frame at its own offset, and the resize.
    _, js = export(settings, sid, "json")
    lines = [orjson.loads(x) for x in js.splitlines()]
    frames = [x for x in lines if "stream" in x]
    # The recording's resize comes before its first print (at 1 ms, while the first prints say
    # 0 ms): offsets never go backwards in a session, so those prints replay at 1 ms.
    resize_ms = next(f["t_ms"] for f in frames if f["stream"] == "r")
    floor = resize_ms
    expected = []
    for ms, data in prints:
        floor = max(floor, ms)
        expected.append((floor, data))
    assert [(f["t_ms"], f["stream"]) for f in frames if f["stream"] == "o"] == [
        (ms, "o") for ms, _ in _merged(expected)
    ]
    resize = fetch(
        settings,
        "SELECT body FROM events WHERE tenant = $1 AND sid = $2 AND event = 'resize'",
        settings.tenant,
        sid,
    )
    size = orjson.loads(str(resize[0]["body"]))["size"].replace(":", "x")
    assert next(f for f in frames if f["stream"] == "r")["data_b64"] == _b64(size.encode())

    # session.command events are stored and searchable by the session id.
    commands = fetch(
        settings,
        "SELECT count(*) AS n FROM events WHERE tenant = $1 AND sid = $2"
        " AND event = 'session.command'",
        settings.tenant,
        sid,
    )
    assert commands[0]["n"] == 16


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _merged(prints: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    # Writes in the same millisecond are one frame once stored (they replay identically).
    out: list[tuple[int, bytes]] = []
    for ms, data in prints:
        if out and out[-1][0] == ms:
            out[-1] = (ms, out[-1][1] + data)
        else:
            out.append((ms, data))
    return out


def test_reimporting_the_same_teleport_recording_changes_nothing(settings: Settings) -> None:
    env = env_for(settings)
    first = cli(env, "import", "teleport", str(FIXTURE)).stdout.decode().strip()
    drain(settings)
    before = dump_tables(settings)
    assert before["chunks"]
    second = cli(env, "import", "teleport", str(FIXTURE)).stdout.decode().strip()
    assert second == first
    drain(settings)
    after = dump_tables(settings)
    for table in ("sessions", "events", "text_segments"):
        # dump_tables leaves out updated_at / ingested_at; every data column must be unchanged.
        assert after[table] == before[table], table
    assert after["chunks"] == before["chunks"]
    assert len(after["events"]) == len(before["events"])
