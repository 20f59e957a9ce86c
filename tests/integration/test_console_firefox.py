"""The web console works in Firefox too (Debian's firefox-esr over WebDriver BiDi): a token
signs in and lists the sessions; a share link opens the player on the right screen."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from schemas.models import Frame, Stream
from sessionvault.settings import Settings
from storage import pg
from storage.tokens import create_share, create_token
from tests.integration.api_support import serve
from tests.integration.console_support import SHOTS
from tests.integration.firefox_support import firefox
from tests.integration.replay_support import write_session

pytestmark = pytest.mark.integration

FRAMES = [
    Frame(
        0, Stream.OUTPUT, b"$ echo \xe2\x9c\x93 firefox\r\n\x1b[32m\xe2\x9c\x93 firefox\x1b[0m\r\n"
    ),
    Frame(500, Stream.OUTPUT, b"$ echo later\r\nlater\r\n"),
]


async def _setup(settings: Settings) -> tuple[str, str]:
    conn = await pg.connect(settings.postgres_dsn.get())
    try:
        await write_session(conn, settings.tenant, "s-ff", ([f] for f in FRAMES))
        token, owner = await create_token(conn, settings.tenant, scopes=("read",))
        share, _ = await create_share(
            conn, owner, "s-ff", expires_at=datetime.now(UTC) + timedelta(hours=1), at_ms=100
        )
        return token, share
    finally:
        await conn.close()


def test_the_console_signs_in_and_plays_a_shared_session_in_firefox(settings: Settings) -> None:
    token, share = asyncio.run(_setup(settings))
    with serve(settings) as base, firefox() as ff:
        ff.navigate(f"{base}/ui/#/login")
        ff.evaluate(f"sessionStorage.setItem('sv.token', {token!r})")
        ff.navigate(f"{base}/ui/#/sessions")
        ff.wait_for("document.querySelector(\"a[href='#/play/s-ff']\")")
        assert "firefox" not in ff.evaluate("document.body.innerText")  # a list, no screen
        ff.navigate(f"{base}/ui/#/share/{share}")
        ff.wait_for("document.querySelector(\"#terminal[data-ready='1']\")")
        assert ff.evaluate("window.svPlayer.pos") == 100  # the link's moment
        screen = ff.evaluate("window.svPlayer.screenText()").split("\n")
        assert screen[:2] == ["$ echo \u2713 firefox", "\u2713 firefox"], screen[:3]
        assert "later" not in "\n".join(screen)  # written after the moment
        ff.screenshot(SHOTS / "firefox-share.png")
        assert "Mozilla" in ff.evaluate("navigator.userAgent")
