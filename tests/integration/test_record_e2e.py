"""Acceptance: `sessionvault record` of real programs -> Kafka -> persist worker -> PostgreSQL
-> `sessionvault export`, compared with the bytes the terminal really received.

The oracle: the test runs `sessionvault record` on a pty of its own and reads everything the
recorder wrote to it. The recorder passes the child's output through untouched (and puts the
test's pty in raw mode, so nothing is echoed by it), so those bytes ARE the session's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.persist import run_persist_worker
from schemas import decode_chunk, verify_chain
from sessionvault.settings import Settings
from storage import pg
from tests.integration.conftest import env_for
from tests.integration.test_recorder_spool import consume_all

pytestmark = pytest.mark.integration

SCRIPT = r"""
ls --color=always /
printf 'bad utf8: \377\376\303\050 nul:\000: esc:\033[1;32mgreen\033[0m end\n'
printf 'ready-for-vi\n'
vi -u NONE -c 'set nocompatible' /tmp/sv-e2e-never-written.txt
printf 'after-vi\n'
top -b -n 1 | head -5
exit 3
"""


@pytest.fixture
def persist_worker(settings: Settings) -> Iterator[None]:
    """The real persist worker, on its own event loop thread, for the test's topics."""
    with running_persist_worker(settings):
        yield


@contextlib.contextmanager
def running_persist_worker(settings: Settings) -> Iterator[None]:
    """The real persist worker with ``settings``, on its own event loop thread."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(run_persist_worker(settings, stop=stop))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="persist-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
    assert not errors, f"persist worker failed: {errors[0]!r}"


class PtyDriver:
    """Runs a command on a fresh pty and keeps every byte it writes there."""

    def __init__(self, argv: list[str], env: dict[str, str], cols: int, rows: int) -> None:
        self.buf = bytearray()
        pid, fd = pty.fork()
        if pid == 0:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.execvpe(argv[0], argv, env)
        self.pid, self.fd = pid, fd
        self.status: int | None = None

    def read_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not self._read_once(0.05):
                return

    def _read_once(self, timeout: float) -> bool:
        r, _, _ = select.select([self.fd], [], [], timeout)
        if r:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return False
            if not data:
                return False
            self.buf += data
        return True

    def expect(self, needle: bytes, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while needle not in self.buf:
            assert time.monotonic() < end, f"{needle!r} not seen; got {bytes(self.buf[-500:])!r}"
            if not self._read_once(0.1):
                raise AssertionError(f"pty closed before {needle!r}")

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def resize(self, cols: int, rows: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.kill(self.pid, signal.SIGWINCH)

    def wait(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            alive = self._read_once(0.1)
            done, st = os.waitpid(self.pid, os.WNOHANG)
            if done:
                while self._read_once(0.1):
                    pass
                self.status = os.waitstatus_to_exitcode(st)
                return self.status
            if not alive:
                time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("recorder did not exit")


async def _session_row(dsn: str, sid: str) -> dict[str, Any] | None:
    conn = await pg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT status, exit_code, cols, rows, last_seq, last_hash, ended_at, tenant"
            " FROM sessions WHERE sid=$1",
            sid,
        )
        return dict(row) if row is not None else None
    finally:
        await conn.close()


def wait_status(dsn: str, sid: str, status: str, timeout_s: float = 60) -> dict[str, Any]:
    """The sessions row of ``sid`` once its status is ``status``."""
    end = time.monotonic() + timeout_s
    row = None
    while time.monotonic() < end:
        row = asyncio.run(_session_row(dsn, sid))
        if row is not None and row["status"] == status:
            return row
        time.sleep(0.3)
    raise AssertionError(f"session {sid} not {status} in PostgreSQL after {timeout_s}s: {row}")


def test_record_real_programs_export_is_byte_exact_with_ms_timings(
    settings: Settings, persist_worker: None, tmp_path: Path
) -> None:
    # The venv's entry point, also when the venv's bin/ is not on PATH (make test, CI).
    sv = str(Path(sys.executable).parent / "sessionvault")
    assert os.access(sv, os.X_OK), f"sessionvault entry point not installed at {sv}"
    asciinema = shutil.which("asciinema")
    assert asciinema, "Debian package asciinema is required (see .ci/run)"
    env = env_for(settings)
    env.update(TERM="xterm-256color", LC_ALL="C.UTF-8", HOME=str(tmp_path))
    sid = "e2e-" + os.urandom(4).hex()

    drv = PtyDriver(
        [sv, "record", "-q", "--sid", sid, "--", "sh", "-c", SCRIPT], env, cols=100, rows=30
    )
    drv.expect(b"ready-for-vi")
    drv.read_for(1.5)  # vi draws its full screen
    drv.resize(120, 40)
    drv.read_for(1.0)  # vi redraws for the new size
    drv.send(b":q!\r")
    drv.expect(b"after-vi")
    status = drv.wait()
    assert status == 3
    seen = bytes(drv.buf)
    assert b"\x1b[" in seen  # colors and cursor moves really went through
    assert b"\xff\xfe\xc3\x28" in seen
    assert b"\x00" in seen

    row = wait_status(settings.postgres_dsn.get(), sid, "closed")
    assert row["exit_code"] == 3
    assert (row["cols"], row["rows"]) == (100, 30)

    raw = tmp_path / "s.raw"
    subprocess.run([sv, "export", sid, "--format", "raw", "-o", str(raw)], env=env, check=True)
    assert raw.read_bytes() == seen

    cast = tmp_path / "s.cast"
    subprocess.run(
        [sv, "export", sid, "--format", "asciicast-v2", "-o", str(cast)], env=env, check=True
    )
    shown = asciinema_cat(asciinema, cast, env)
    # asciicast is text: asciinema itself records invalid UTF-8 as U+FFFD. Everything else
    # (colors, NUL, the vi screen) must come back byte for byte.
    assert shown == seen.decode("utf-8", "replace").encode()

    # Timings: every exported event starts at the offset of the recorded frame holding its
    # first byte (within 1 ms), and the resize is there at its recorded time.
    chunks = sorted(
        (
            decode_chunk(r.value)
            for r in consume_all(settings, settings.topic_chunks)
            if r.key == sid.encode()
        ),
        key=lambda c: c.seq,
    )
    ok, msg = verify_chain(chunks)
    assert ok, msg
    out_offsets: list[int] = []  # offset of each output byte, in order
    resizes: list[tuple[int, bytes]] = []
    for c in chunks:
        for f in c.frames:
            if f.stream == "o":
                out_offsets += [f.offset_ms] * len(f.data)
            elif f.stream == "r":
                resizes.append((f.offset_ms, f.data))
    assert len(out_offsets) == len(seen)
    assert [d for _, d in resizes] == [b"120x40"]

    lines = cast.read_bytes().splitlines()
    header = orjson.loads(lines[0])
    assert (header["version"], header["width"], header["height"]) == (2, 100, 30)
    pos = 0
    cast_resizes = []
    checked = 0
    for line in lines[1:]:
        t, code, data = orjson.loads(line)
        if code == "o":
            n = len(data.encode())
            if "\ufffd" not in data:
                assert abs(t * 1000 - out_offsets[pos]) <= 1, (t, out_offsets[pos])
                checked += 1
            pos += n if "\ufffd" not in data else 0
            if "\ufffd" in data:
                # Replacement characters change byte counts; resynchronise on the raw bytes.
                pos = _resync(seen, pos, data)
        elif code == "r":
            cast_resizes.append((t, data))
    assert checked >= 3  # ls, vi screens, top: all compared (events with U+FFFD resync)
    assert len(cast_resizes) == 1
    assert cast_resizes[0][1] == "120x40"
    assert abs(cast_resizes[0][0] * 1000 - resizes[0][0]) <= 1


def _resync(seen: bytes, pos: int, data: str) -> int:
    """Byte position after an event whose text holds U+FFFD (decoded with 'replace')."""
    text = data
    end = pos
    while seen[pos:end].decode("utf-8", "replace") != text and end <= len(seen):
        end += 1
    assert seen[pos:end].decode("utf-8", "replace") == text
    return end


def asciinema_cat(asciinema: str, cast: Path, env: dict[str, str]) -> bytes:
    """stdout of `asciinema cat FILE`. It opens /dev/tty (for its keys), so it gets a pty as
    controlling terminal while its stdout stays a pipe (no tty newline translation)."""
    master, slave = os.openpty()

    def take_tty() -> None:
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    try:
        proc = subprocess.run(
            [asciinema, "cat", str(cast)],
            env=env,
            stdin=slave,
            capture_output=False,
            stdout=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=take_tty,
            pass_fds=(slave,),
            timeout=60,
            check=True,
        )
    finally:
        os.close(master)
        os.close(slave)
    return proc.stdout


def test_a_recorder_killed_with_sigkill_leaves_an_abandoned_session_that_a_late_chunk_revives(
    settings: Settings, tmp_path: Path
) -> None:
    from ingest.kafka import make_producer
    from schemas import Chunk, Frame, Stream, chain_hash, encode_chunk

    sv = str(Path(sys.executable).parent / "sessionvault")
    env = env_for(settings)
    env.update(TERM="xterm", LC_ALL="C.UTF-8", HOME=str(tmp_path))
    sid = "killed-" + os.urandom(4).hex()
    dsn = settings.postgres_dsn.get()
    quick = dataclasses.replace(settings, session_abandon_after_ms=1500)
    with running_persist_worker(quick):
        drv = PtyDriver(
            [sv, "record", "-q", "--sid", sid, "--", "sh", "-c", "echo started; exec sleep 61"],
            env,
            cols=80,
            rows=24,
        )
        try:
            drv.expect(b"started")
            drv.read_for(1.0)  # the chunk with "started" is sent (linger 50 ms)
        finally:
            os.kill(drv.pid, signal.SIGKILL)
            os.waitpid(drv.pid, 0)
        row = wait_status(dsn, sid, "abandoned")
        assert row["last_seq"] >= 1
        assert row["ended_at"] is not None
        verify = subprocess.run([sv, "verify", sid], env=env, capture_output=True, timeout=60)
        assert verify.returncode == 0, verify.stderr
        assert f"ended without a final chunk after seq {row['last_seq']}" in verify.stdout.decode()
        listed = subprocess.run([sv, "sessions"], env=env, capture_output=True, timeout=60)
        assert any(
            sid in line and "abandoned" in line for line in listed.stdout.decode().splitlines()
        )
        # The recorder's spool drains late: the next chunk revives and closes the session.
        frames = (Frame(99_000, Stream.OUTPUT, b"late\r\n"),)
        seq = row["last_seq"] + 1
        late = Chunk(
            row["tenant"], sid, seq, frames, row["last_hash"],
            chain_hash(row["last_hash"], sid, seq, frames), final=True, exit_code=0,
        )  # fmt: skip
        producer = make_producer(settings)
        try:
            producer.send(settings.topic_chunks, key=sid.encode(), value=encode_chunk(late))
            producer.flush(timeout=30)
        finally:
            producer.close(timeout=5)
        closed = wait_status(dsn, sid, "closed")
        assert closed["last_seq"] == seq
    subprocess.run(["pkill", "-f", "exec sleep 61|^sleep 61"], check=False)
