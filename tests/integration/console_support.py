"""The web console's browser tests: Debian's chromium driven by Playwright, the screen of the
console's player read as text, and the screen that ``sessionvault play --start-at`` draws in a
real tmux at the same moment."""

from __future__ import annotations

import asyncio
import difflib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
SV = str(Path(sys.executable).parent / "sessionvault")
#: Screenshots of every page, taken by the test run (docs/console.md shows them).
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
T = TypeVar("T")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's chromium (the package ``chromium``; never a downloaded browser)."""
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is needed (scripts/system-packages.sh)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def login(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/ui/#/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_selector("table.sessions")


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def player_ready(page: Page) -> None:
    page.wait_for_selector("#terminal[data-ready='1']", timeout=20_000)


def player_screen(page: Page) -> list[str]:
    """The player's screen, one string per row, trailing blanks dropped."""
    text: str = page.evaluate("() => window.svPlayer.screenText()")
    return [line.rstrip() for line in text.split("\n")]


def player_pos(page: Page) -> int:
    return int(page.evaluate("() => Math.round(window.svPlayer.pos)"))


def seek_settled(page: Page) -> None:
    """Wait until no seek is in flight (the player's seek generation is drawn)."""
    page.wait_for_function("() => window.svPlayer && window.svPlayer.lastSeekMs > 0")


def tmux_screen_at(env: dict[str, str], sid: str, at_ms: int, cols: int, rows: int) -> list[str]:
    """What ``sessionvault play --start-at`` shows in a real tmux at ``at_ms``: played at a
    speed so low that no frame after the moment arrives while the pane is read."""
    assert shutil.which("tmux"), "tmux is needed (scripts/system-packages.sh)"
    sock = f"sv-console-{uuid.uuid4().hex[:8]}"
    # Echo off for the whole pane: a recording's terminal queries (cursor position, device
    # attributes) make tmux write its answers into the pane's input, and with echo on they
    # showed on the reference screen or not, by a race with play's own terminal handling.
    cmd = f"stty -echo; {SV} play --speed 0.00001 --start-at {at_ms / 1000:.3f} {sid}; sleep 600"
    subprocess.run(
        ["tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-x", str(cols),
         "-y", str(rows), cmd],
        env=env, check=True, timeout=30,
    )  # fmt: skip
    try:
        seen: list[list[str]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["tmux", "-L", sock, "capture-pane", "-p", "-t", "0"],
                capture_output=True, check=True, timeout=10,
            ).stdout.decode()  # fmt: skip
            seen.append([line.rstrip() for line in out.split("\n")][:rows])
            # The same three times over a second (a loaded machine can stall the player
            # between two writes for a moment): drawn.
            if len(seen) >= 3 and any(seen[-1]) and seen[-1] == seen[-2] == seen[-3]:
                return seen[-1]
            time.sleep(0.5)
        raise AssertionError(f"tmux screen never settled: {seen[-1] if seen else None}")
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], timeout=10, check=False)


def _trim(lines: list[str]) -> list[str]:
    out = list(lines)
    while out and not out[-1]:
        out.pop()
    return out


def same_screen(a: list[str], b: list[str]) -> bool:
    """Screens equal as text (trailing blank rows dropped)."""
    return _trim(a) == _trim(b)


def screen_diff(want: list[str], got: list[str]) -> str:
    """A unified diff of two screens, for assertion messages."""
    return "\n".join(
        difflib.unified_diff(_trim(want), _trim(got), "play --start-at in tmux", "console",
                             lineterm="")
    )  # fmt: skip


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` from inside Playwright's sync API (which keeps a loop running on this
    thread): on a thread of its own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
