"""Recordings made by the real `asciinema` CLI and by the real `sudo` (log_output) import
through `sessionvault import` and replay byte-exact (persist worker, PostgreSQL, export)."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionvault.settings import Settings
from tests.integration.conftest import env_for
from tests.integration.import_support import cli, drain, export

# Valid UTF-8 (asciinema 2 stores text), multibyte characters, colour escapes, two writes.
PRINTF = (
    r"printf 'caf\303\251 \342\234\223 \033[1;32mgreen\033[0m\n'; sleep 0.3;"
    r" printf 'tab\there\nend\n'"
)
# What a terminal receives: the pty turns \n into \r\n (onlcr).
EXPECTED = "café ✓ \x1b[1;32mgreen\x1b[0m\r\ntab\there\r\nend\r\n".encode()


def test_cast_recorded_by_the_real_asciinema_cli_imports_byte_exact(
    settings: Settings, tmp_path: Path
) -> None:
    assert shutil.which("asciinema"), "Debian package asciinema is not installed"
    cast = tmp_path / "rec.cast"
    subprocess.run(
        ["asciinema", "rec", "-q", "-c", PRINTF, str(cast)],
        stdin=subprocess.DEVNULL,
        check=True,
        timeout=60,
        env={**os.environ, "ASCIINEMA_CONFIG_HOME": str(tmp_path / "cfg")},
    )
    sid = cli(env_for(settings), "import", "asciicast", str(cast)).stdout.decode().strip()
    drain(settings)
    session, raw = export(settings, sid, "raw")
    assert raw == EXPECTED
    # Two writes 0.3 s apart: the timing survived.
    assert session.duration_ms >= 250
    header = cast.read_text().splitlines()[0]
    assert f'"width": {session.cols}' in header
    assert f'"height": {session.rows}' in header


def _run_on_pty(argv: list[str], timeout_s: float = 30) -> tuple[int, bytes]:
    """Run argv with a new pty as its controlling terminal; return (status, bytes it showed)."""
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout_s)
            if not ready:
                break
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child side closed
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
    _, status = os.waitpid(pid, 0)
    return status, out


@pytest.fixture
def sudo_iolog(tmp_path: Path) -> Iterator[Path]:
    """A sudoers drop-in logging the output of commands run as `nobody` into tmp_path only.

    Validated with visudo BEFORE it is moved into /etc/sudoers.d (a broken drop-in would break
    sudo for the whole machine), restricted to the runas user nobody (`Defaults>nobody`), and
    removed afterwards whatever happens.
    """
    assert shutil.which("sudo"), "Debian package sudo is not installed"
    iolog = tmp_path / "iolog"
    iolog.mkdir()
    name = f"zz_sv_test_{uuid.uuid4().hex[:8]}"
    staged = tmp_path / name
    staged.write_text(f"Defaults>nobody log_output, iolog_dir={iolog}, iolog_file=session\n")
    staged.chmod(0o440)
    subprocess.run(["visudo", "-cqf", str(staged)], check=True)
    target = Path("/etc/sudoers.d") / name
    shutil.move(str(staged), target)
    try:
        yield iolog / "session"
    finally:
        target.unlink(missing_ok=True)


def test_sudo_io_log_made_by_the_real_sudo_imports_byte_exact(
    settings: Settings, sudo_iolog: Path
) -> None:
    status, shown = _run_on_pty(["sudo", "-u", "nobody", "sh", "-c", PRINTF])
    assert status == 0
    assert shown == EXPECTED  # the oracle: what the terminal really received
    assert (sudo_iolog / "timing").exists()

    sid = cli(env_for(settings), "import", "sudo", str(sudo_iolog)).stdout.decode().strip()
    drain(settings)
    session, raw = export(settings, sid, "raw")
    assert raw == shown
    assert session.duration_ms >= 250
    assert session.login == "nobody"  # the runas user sudo logged
