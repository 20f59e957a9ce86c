"""Debian's firefox-esr driven over WebDriver BiDi, the W3C protocol Firefox speaks natively
(Playwright drives only its own patched Firefox builds, which are not reachable here)."""

from __future__ import annotations

import base64
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from websockets.sync.client import ClientConnection, connect

FIREFOX = "/usr/bin/firefox-esr"


class Firefox:
    """One browsing context of a headless Firefox: navigate, evaluate, screenshot."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self.send("session.new", {"capabilities": {}})
        tree = self.send("browsingContext.getTree", {})
        self.context = tree["contexts"][0]["context"]
        self.send(
            "browsingContext.setViewport",
            {"context": self.context, "viewport": {"width": 1280, "height": 800}},
        )

    def send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        msg_id = next(self._ids)
        self._ws.send(orjson.dumps({"id": msg_id, "method": method, "params": params}).decode())
        while True:
            msg = orjson.loads(self._ws.recv(timeout=60))
            if msg.get("id") != msg_id:
                continue  # an event
            if msg.get("type") == "error":
                raise AssertionError(f"{method}: {msg.get('error')}: {msg.get('message')}")
            result: dict[str, Any] = msg["result"]
            return result

    def navigate(self, url: str) -> None:
        self.send(
            "browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}
        )

    def evaluate(self, expression: str) -> Any:
        answer = self.send(
            "script.evaluate",
            {"expression": expression, "target": {"context": self.context}, "awaitPromise": True},
        )
        if answer.get("type") == "exception":
            raise AssertionError(f"{expression}: {answer['exceptionDetails']['text']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(f"Boolean({expression})"):
            assert time.monotonic() < deadline, f"never true in firefox: {expression}"
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        shot = self.send("browsingContext.captureScreenshot", {"context": self.context})
        path.write_bytes(base64.b64decode(shot["data"]))


@contextmanager
def firefox() -> Iterator[Firefox]:
    """A headless firefox-esr with a fresh profile, its BiDi endpoint on a free port."""
    assert os.access(FIREFOX, os.X_OK), f"{FIREFOX} is needed (scripts/system-packages.sh)"
    profile = tempfile.mkdtemp(prefix="sv-firefox-")
    proc = subprocess.Popen(
        [FIREFOX, "--headless", "--no-remote", "--profile", profile,
         "--remote-debugging-port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        url = ""
        while not url:
            line = proc.stderr.readline().decode(errors="replace")
            assert line or proc.poll() is None, "firefox exited before its BiDi endpoint"
            assert time.monotonic() < deadline, "firefox never announced its BiDi endpoint"
            if line.startswith("WebDriver BiDi listening on "):
                url = line.split(" on ", 1)[1].strip()
        with connect(f"{url}/session", max_size=64 * 1024 * 1024) as ws:
            yield Firefox(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)
