"""``sessionvault play | export | sessions | verify`` as a user runs them (subprocesses, real
PostgreSQL)."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from replay.asciicast import read_cast
from replay.kube import status_for_exit_code
from schemas.models import Frame, Stream
from sessionvault.settings import Settings
from storage import pg
from tests.integration.replay_support import write_session

SV = str(Path(sys.executable).parent / "sessionvault")
OUT, ERR, INP, X = Stream.OUTPUT, Stream.STDERR, Stream.INPUT, Stream.ERROR

FRAMES = [
    Frame(0, OUT, b"\x1b[01;32malice@node-1\x1b[00m:~$ "),
    Frame(400, INP, b"cat /bin/true | head -c 8\r"),
    Frame(450, OUT, b"\x7fELF\x02\x01\x01\x00\xff\xfe\r\n"),  # binary: invalid UTF-8
    Frame(1200, ERR, b"warning: caf\xc3\xa9\r\n"),
    Frame(2500, OUT, b"bye\r\n"),
    Frame(2600, X, status_for_exit_code(3)),
]
RAW = b"".join(f.data for f in FRAMES if f.stream in (OUT, ERR))


def store(settings: Settings, sid: str, frames: list[Frame], **kw: object) -> None:
    async def main() -> None:
        conn = await pg.connect(settings.postgres_dsn.get())
        try:
            await write_session(conn, settings.tenant, sid, ([f] for f in frames), **kw)  # type: ignore[arg-type]
        finally:
            await conn.close()

    asyncio.run(main())


def sv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [SV, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60
    )


def test_export_raw_to_stdout_is_byte_exact(settings: Settings, sv_env: dict[str, str]) -> None:
    store(settings, "s-cli", FRAMES)
    proc = sv(sv_env, "export", "s-cli", "--format", "raw")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == RAW


def test_export_json_and_v3_to_files_keep_streams_and_exit_code(
    settings: Settings, sv_env: dict[str, str], tmp_path: Path
) -> None:
    store(settings, "s-cli", FRAMES)
    jpath, cpath = tmp_path / "s.jsonl", tmp_path / "s.cast"
    assert sv(sv_env, "export", "s-cli", "--format", "json", "-o", str(jpath)).returncode == 0
    proc = sv(sv_env, "export", "s-cli", "--format", "asciicast-v3", "-o", str(cpath))
    assert proc.returncode == 0, proc.stderr
    assert b"exported 6 frames" in proc.stderr
    lines = [orjson.loads(line) for line in jpath.read_bytes().splitlines()]
    back = [
        Frame(d["t_ms"], Stream(d["stream"]), base64.b64decode(d["data_b64"])) for d in lines[1:-1]
    ]
    assert back == FRAMES
    assert lines[-1]["exit_code"] == 3
    header, frames = read_cast(cpath.read_bytes().splitlines())
    assert header.version == 3
    assert [f.stream for f in frames][-1] is X


def test_export_start_at_keeps_only_later_frames(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    store(settings, "s-cli", FRAMES)
    proc = sv(sv_env, "export", "s-cli", "--format", "raw", "--start-at", "1.2")
    assert proc.stdout == b"warning: caf\xc3\xa9\r\nbye\r\n"


def test_another_tenant_cannot_export_play_or_verify(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    store(settings, "s-cli", FRAMES)
    for args in (("export", "s-cli"), ("play", "s-cli"), ("verify", "s-cli")):
        proc = sv(sv_env, *args, "--tenant", "someone-else")
        assert proc.returncode == 1
        assert proc.stderr.strip() == b"sessionvault: error: session 's-cli' not found"
        assert proc.stdout == b""


def test_sessions_lists_the_tenants_sessions(settings: Settings, sv_env: dict[str, str]) -> None:
    store(settings, "s-cli", FRAMES)
    store(settings, "s-two", FRAMES[:2])
    proc = sv(sv_env, "sessions")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].split() == [
        "SID",
        "USER",
        "LOGIN",
        "SERVER",
        "START",
        "(UTC)",
        "DURATION",
        "BYTES",
        "STATUS",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"s-cli", "s-two"}
    assert rows["s-cli"][1:4] == ["alice", "root", "node-1"]
    assert rows["s-cli"][6:] == ["0:02", str(sum(len(f.data) for f in FRAMES)), "closed"]
    assert sv(sv_env, "sessions", "--tenant", "someone-else").stdout.decode().count("\n") == 1


def test_verify_reports_ok_then_broken_after_tampering(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    store(settings, "s-cli", FRAMES)
    ok = sv(sv_env, "verify", "s-cli")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.decode().strip() == "session s-cli: ok, 6 chunks verified"

    async def tamper() -> None:
        conn = await pg.connect(settings.postgres_dsn.get())
        try:
            await conn.execute(
                "UPDATE chunks SET codec = 0, payload = 'BYE\r\n'::bytea, raw_len = 5"
                " WHERE sid = 's-cli' AND seq = 4"
            )
        finally:
            await conn.close()

    asyncio.run(tamper())
    broken = sv(sv_env, "verify", "s-cli")
    assert broken.returncode == 1
    assert b"hash chain BROKEN" in broken.stderr
    assert b"seq 4: content does not match its hash" in broken.stderr


def test_play_from_the_database_writes_the_output_bytes(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    store(settings, "s-cli", FRAMES)
    proc = sv(sv_env, "play", "s-cli", "--speed", "50", "--start-at", "0:01")
    assert proc.returncode == 0, proc.stderr
    # Seeking keeps what came before (written at once), so the screen is complete.
    assert proc.stdout == RAW


def test_play_a_cast_file_exported_earlier(
    settings: Settings, sv_env: dict[str, str], tmp_path: Path
) -> None:
    frames = [f for f in FRAMES if f.data.replace(b"\xff\xfe", b"") == f.data]
    store(settings, "s-utf8", frames)
    path = tmp_path / "s.cast"
    assert sv(sv_env, "export", "s-utf8", "-o", str(path)).returncode == 0
    proc = sv(sv_env, "play", str(path), "--idle-limit", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"".join(f.data for f in frames if f.stream in (OUT, ERR))


@pytest.mark.parametrize("bad", ["soon", "-1", "1:99"])
def test_play_rejects_a_malformed_start_at(sv_env: dict[str, str], bad: str) -> None:
    proc = sv(sv_env, "play", "s-cli", "--start-at", bad)
    assert proc.returncode == 1
    assert proc.stderr.startswith(b"sessionvault: error: --start-at:")


def test_export_to_a_reader_that_stops_early_ends_quietly(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    big = [Frame(i, OUT, b"%08d" % i * 1024) for i in range(400)]  # about 3 MB
    store(settings, "s-big", big)
    proc = subprocess.Popen(
        [SV, "export", "s-big", "--format", "raw"],
        env=sv_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.read(100) == big[0].data[:100]
    proc.stdout.close()  # like `| head -c 100`
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert b"Traceback" not in err


def test_play_on_a_terminal_quits_on_q_and_restores_the_terminal(tmp_path: Path) -> None:
    import fcntl
    import os
    import pty
    import select
    import termios
    import time

    path = tmp_path / "long.cast"
    path.write_bytes(
        b'{"version": 2, "width": 80, "height": 24}\n'
        b'[0.1, "o", "first-frame\\r\\n"]\n'
        b'[600.0, "o", "ten minutes later\\r\\n"]\n'
    )
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)

    def controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [SV, "play", str(path)],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=controlling_tty,
    )
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"first-frame" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                seen += os.read(master, 1024)
        assert b"first-frame" in seen
        os.write(master, b"q")
        assert proc.wait(timeout=20) == 0
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


def test_a_unique_sid_prefix_names_a_session_and_an_ambiguous_one_lists_the_candidates(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    a1, a2 = "7e57c0de-1111-4000-8000-000000000001", "7e57c0de-2222-4000-8000-000000000002"
    store(settings, a1, FRAMES)
    store(settings, a2, FRAMES[:2])
    other = "7e57c0de-3333-4000-8000-000000000003"

    async def other_tenant() -> None:
        conn = await pg.connect(settings.postgres_dsn.get())
        try:
            await write_session(conn, "someone-else", other, ([f] for f in FRAMES))
        finally:
            await conn.close()

    asyncio.run(other_tenant())
    full = sv(sv_env, "export", a1, "--format", "raw")
    for prefix in ("7e57c0de-1", "7e57c0de-11"):
        proc = sv(sv_env, "export", prefix, "--format", "raw")
        assert (proc.returncode, proc.stdout) == (0, full.stdout), proc.stderr
    verified = sv(sv_env, "verify", "7e57c0de-2")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.decode().startswith(f"session {a2}: ok")  # named in full
    ambiguous = sv(sv_env, "export", "7e57c0de")
    assert ambiguous.returncode == 1
    err = ambiguous.stderr.decode()
    assert err.count("\n") == 1, err
    assert "ambiguous" in err
    assert a1 in err
    assert a2 in err
    assert other not in err  # another tenant's session is never a candidate
    # Another tenant's session by its prefix, a too-short prefix, LIKE metacharacters: not found.
    for name in ("7e57c0de-3", "7e5", "7e57c0de-%", "7e57c0de-_111"):
        proc = sv(sv_env, "export", name)
        assert proc.returncode == 1
        assert proc.stderr.decode().strip() == f"sessionvault: error: session {name!r} not found"
