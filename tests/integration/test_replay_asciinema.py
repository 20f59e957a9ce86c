"""Our asciicast v2 against the real asciinema 2.x (Debian package ``asciinema``).

``asciinema cat`` needs a controlling terminal (it opens /dev/tty), so it runs in a new session
with a pty as its controlling terminal; its stdout is a pipe, so the bytes compared are exactly
the bytes it writes.
"""

from __future__ import annotations

import base64
import fcntl
import os
import pty
import shutil
import subprocess
import termios
from pathlib import Path

import orjson
import pytest

from replay.asciicast import CastHeader, write_cast
from schemas.models import Frame, Stream

OUT, ERR, INP = Stream.OUTPUT, Stream.STDERR, Stream.INPUT
HEADER = CastHeader(cols=80, rows=24, timestamp=1_763_700_000, term="xterm-256color")
SYSTEM_PYTHON = "/usr/bin/python3"  # the interpreter the Debian package installs into


def asciinema() -> str:
    path = shutil.which("asciinema")
    assert path, "the asciinema package is required (apt-get install asciinema)"
    return path


def _make_controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def asciinema_cat(path: Path, home: Path) -> bytes:
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [asciinema(), "cat", str(path)],
            stdin=slave,
            capture_output=True,
            start_new_session=True,
            preexec_fn=_make_controlling_tty,
            env={
                "PATH": os.environ["PATH"],
                "HOME": str(home),
                "LANG": "C.UTF-8",
                "PYTHONIOENCODING": "utf-8",
            },
            timeout=60,
        )
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def write(tmp_path: Path, frames: list[Frame], name: str = "s.cast") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(write_cast(frames, HEADER, version=2)))
    return path


VALID = [
    Frame(0, OUT, b"\x1b]0;alice@node-1: ~\x07\x1b[?2004h\x1b[01;32malice@node-1\x1b[00m:~$ "),
    Frame(900, INP, b"ls\r"),
    Frame(950, OUT, b"ls\r\n\x1b[?2004l\r"),
    Frame(975, ERR, b"ls: cannot access 'x': No such file\r\n"),
    Frame(980, OUT, b"\x1b[0m\x1b[01;34mdir\x1b[0m  caf\xc3"),  # é split across frames
    Frame(981, OUT, b"\xa9.txt  \xe2\x9c"),  # ✓ split across frames
    Frame(991, OUT, b"\x93 \xf0\x9f\x98\x80\r\n\x00\x07\x08\t\x7f"),
    Frame(1500, OUT, b"\x1b[2J\x1b[H\x1b[38;5;208mtop - 10:00\x1b(B\x1b[m\r\n"),
]


def test_asciinema_cat_of_our_v2_gives_back_exactly_the_raw_output(tmp_path: Path) -> None:
    raw = b"".join(f.data for f in VALID if f.stream in (OUT, ERR))
    raw.decode("utf-8")  # the property holds for valid UTF-8 output
    assert asciinema_cat(write(tmp_path, VALID), tmp_path) == raw


def test_asciinema_cat_shows_invalid_bytes_as_replacement_characters(tmp_path: Path) -> None:
    frames = [Frame(0, OUT, b"bin \xff\xfe x"), Frame(5, OUT, b"\xc3(\xe2\x82 end\xed\xa0\x80")]
    raw = b"".join(f.data for f in frames)
    expected = raw.decode("utf-8", "replace").encode("utf-8")
    assert asciinema_cat(write(tmp_path, frames), tmp_path) == expected
    assert expected != raw


ASCIINEMA_WRITER = r"""
import base64, json, sys
from asciinema.asciicast.v2 import writer
frames = json.load(sys.stdin)
with writer(sys.argv[1], width=80, height=24) as w:
    for ms, code, data in frames:
        data = base64.b64decode(data)
        (w.write_stdin if code == "i" else w.write_stdout)(ms / 1000, data)
"""


def test_event_text_matches_what_asciinemas_own_recorder_writes(tmp_path: Path) -> None:
    # asciinema's writer decodes o and i with one incremental "replace" decoder each; we must
    # produce the same text for the same bytes, frame by frame (including split and invalid
    # sequences). asciinema also writes events with empty text, which we leave out.
    frames = [f for f in VALID if f.stream in (OUT, INP)] + [
        Frame(2000, OUT, b"\xff\xc3"),
        Frame(2001, INP, b"\xe2"),
        Frame(2002, OUT, b"(\xf0\x9f"),
        Frame(2003, INP, b"\x9c\x93"),
        Frame(2004, OUT, b"\x98\x80 \x80\x80"),
    ]
    spec = [[f.offset_ms, f.stream.value, base64.b64encode(f.data).decode()] for f in frames]
    theirs_path = tmp_path / "theirs.cast"
    assert Path(SYSTEM_PYTHON).exists()
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-c", ASCIINEMA_WRITER, str(theirs_path)],
        input=orjson.dumps(spec),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    theirs = [orjson.loads(line) for line in theirs_path.read_bytes().splitlines()[1:]]
    ours = [orjson.loads(line) for line in write(tmp_path, frames).read_bytes().splitlines()[1:]]
    assert [e for e in theirs if e[2]] == ours
    assert any("\ufffd" in e[2] for e in ours)


@pytest.mark.parametrize("frames", [VALID, [Frame(0, OUT, b"")]])
def test_asciinema_accepts_our_v2_header(tmp_path: Path, frames: list[Frame]) -> None:
    # `asciinema cat` refuses anything that is not a v2 header with integer width/height.
    asciinema_cat(write(tmp_path, frames), tmp_path)
