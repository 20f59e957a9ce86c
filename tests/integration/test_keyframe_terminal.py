"""Keyframes against a real terminal: the output of a real vi session (alternate screen,
scroll region, cursor addressing, terminal queries) is cut at many points; tmux shown the
keyframe's drawing and the rest shows exactly what tmux shown the whole output shows (text,
cursor, which screen)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from replay.keyframe import Keyframe, draw
from replay.screen import TimedScreen
from tests.integration.test_record_e2e import PtyDriver

COLS, ROWS = 100, 30


def _vi_output(home: Path) -> list[bytes]:
    """Every read of a real vi session's terminal, in order (one frame per read)."""
    env = dict(os.environ, TERM="xterm-256color", LC_ALL="C.UTF-8", HOME=str(home))
    script = f"seq 1 40; vi -u NONE -c 'set nocompatible' {home}/notes.txt; seq 1 3"
    drv = PtyDriver(["sh", "-c", script], env, cols=COLS, rows=ROWS)
    frames: list[bytes] = []

    def read(seconds: float) -> None:
        start = len(drv.buf)
        drv.read_for(seconds)
        if len(drv.buf) > start:
            frames.append(bytes(drv.buf[start:]))

    read(1.0)
    for keys in (b"i", b"first line", b"\r", b"second", b"\x1bgg", b"O", b"top", b"\x1b:q!\r"):
        drv.send(keys)
        read(0.3)
    drv.wait()
    read(0.2)
    return frames


def _tmux_shows(data: bytes, tmp: Path) -> tuple[list[str], str]:
    """(rows, "cursor_x,cursor_y,alternate_on") of a tmux pane that was written ``data``."""
    path = tmp / uuid.uuid4().hex
    path.write_bytes(data)
    sock = f"sv-kf-{uuid.uuid4().hex[:8]}"
    # No echo: what tmux answers to vi's queries must not land on the screen.
    subprocess.run(
        ["tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-x", str(COLS),
         "-y", str(ROWS), f"stty -echo; cat {path}; touch {path}.done; sleep 60"],
        check=True, timeout=30,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not Path(f"{path}.done").exists():
            assert time.monotonic() < deadline, "tmux never showed the bytes"
            time.sleep(0.05)
        time.sleep(0.1)
        pane = subprocess.run(
            ["tmux", "-L", sock, "capture-pane", "-p", "-t", "0"],
            capture_output=True,
            check=True,
            timeout=10,
        ).stdout.decode()
        cursor = subprocess.run(
            ["tmux", "-L", sock, "display", "-p", "-t", "0",
             "#{cursor_x},#{cursor_y},#{alternate_on}"],
            capture_output=True, check=True, timeout=10,
        ).stdout.decode().strip()  # fmt: skip
        return [line.rstrip() for line in pane.split("\n")], cursor
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], timeout=10, check=False)


def test_a_keyframe_and_the_rest_show_what_the_whole_output_shows_in_tmux(tmp_path: Path) -> None:
    for program in ("tmux", "vi"):
        assert shutil.which(program), f"{program} is needed (scripts/system-packages.sh)"
    frames = _vi_output(tmp_path)
    assert len(frames) >= 8, frames
    whole = _tmux_shows(b"".join(frames), tmp_path)
    assert any(
        "first line" in row for row in whole[0] + _tmux_shows(b"".join(frames[:-2]), tmp_path)[0]
    )
    mismatches = []
    for cut in range(1, len(frames)):
        screen = TimedScreen(COLS, ROWS)
        for i, data in enumerate(frames[:cut]):
            screen.feed_at(data, i)
        kf = Keyframe.of(screen, 0, cut)
        for end in sorted({min(cut + 1, len(frames)), len(frames)}):
            want = whole if end == len(frames) else _tmux_shows(b"".join(frames[:end]), tmp_path)
            got = _tmux_shows(draw(kf) + b"".join(frames[cut:end]), tmp_path)
            if got != want:
                mismatches.append((cut, end, want, got))
    assert not mismatches, mismatches[0]


pytestmark = pytest.mark.integration
