"""The web console in a real browser (Debian's chromium, driven by Playwright) against real
servers: a session recorded by ``sessionvault record`` (vi, with a command typed in insert
mode), stored by the persist worker, rendered by the segmenter (with keyframes), served by the
app ``sessionvault serve`` runs.

Screens are compared as text with what ``sessionvault play --start-at`` draws in tmux at the
same moment. Screenshots of every page land in docs/console/.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from playwright.sync_api import Browser

from ingest.view_audit import VIEW_EVENT
from replay.evidence import verify_bundle
from sessionvault.settings import Settings
from storage.keyring import load_keys
from tests.integration.api_support import make_token, serve
from tests.integration.conftest import env_for
from tests.integration.console_support import (
    chromium,
    login,
    player_pos,
    player_ready,
    player_screen,
    run_async,
    same_screen,
    screen_diff,
    shot,
    tmux_screen_at,
)
from tests.integration.import_support import drain
from tests.integration.persist_helpers import fetch_all, run_segmenter_until_caught_up
from tests.integration.test_kube_exec_session import EXEC_EVENT, FakeClock
from tests.integration.test_kube_exec_session import record as record_exec
from tests.integration.test_record_e2e import PtyDriver, running_persist_worker, wait_status
from tests.integration.test_siem_detect import (
    _record_curl_session,
    run_detect_until_drained,
    stored_alerts,
)

pytestmark = pytest.mark.integration

TYPED = "kubectl delete ns staging --force"
COLS, ROWS = 100, 30
SCRIPT = r"""
seq -f 'before-vi-%g' 1 300
printf 'ready-for-vi\n'
vi -u NONE -c 'set nocompatible' "$HOME/notes.txt"
seq -f 'after-vi-%g' 1 50
printf 'all-done\n'
"""


def _record_vi(settings: Settings, home: Path) -> str:
    assert shutil.which("vi"), "vi is needed (scripts/system-packages.sh)"
    env = env_for(settings)
    env.update(TERM="xterm-256color", LC_ALL="C.UTF-8", HOME=str(home))
    sid = "vi-" + os.urandom(4).hex()
    sv = str(Path(sys.executable).parent / "sessionvault")
    with running_persist_worker(settings):
        drv = PtyDriver(
            [sv, "record", "-q", "--sid", sid, "--", "sh", "-c", SCRIPT], env, cols=COLS, rows=ROWS
        )
        drv.expect(b"ready-for-vi")
        drv.read_for(1.0)
        drv.send(b"i")
        drv.read_for(0.3)
        for ch in TYPED.encode():
            drv.send(bytes([ch]))
            drv.read_for(0.02)
        drv.read_for(1.5)
        drv.send(b"\x1b:q!\r")
        drv.expect(b"all-done")
        assert drv.wait() == 0
        wait_status(settings.postgres_dsn.get(), sid, "closed")
    return sid


def test_search_seek_share_and_tenancy_in_the_browser(settings: Settings, tmp_path: Path) -> None:
    # Small keyframe interval: this short session gets several, so seeks go through them.
    settings = dataclasses.replace(settings, keyframe_every_bytes=256)
    sid = _record_vi(settings, tmp_path)
    asyncio.run(run_segmenter_until_caught_up(settings))
    dsn = settings.postgres_dsn.get()
    keyframes = asyncio.run(
        fetch_all(dsn, "SELECT at_ms FROM session_keyframes WHERE sid = $1", sid)
    )
    assert len(keyframes) >= 2, keyframes
    env = env_for(settings)
    env.update(LC_ALL="C.UTF-8", TERM="xterm-256color")
    token = make_token(settings, scopes=("read",))
    stranger = make_token(settings, tenant="t-stranger", scopes=("read",))
    kube_only = make_token(settings, scopes=("read",), clusters=["prod-eu"])

    with serve(settings) as base, chromium() as browser:
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        # A wrong token is refused with a clear line; the right one lists the session.
        page.goto(f"{base}/ui/#/login")
        page.fill("#token", "svt_nope_nope")
        page.click("button[type=submit]")
        page.wait_for_selector("p.error:has-text('token')")
        errors.clear()  # the 401 above is logged by the browser as a failed request
        shot(page, "login")
        login(page, base, token)
        page.wait_for_selector(f"a[href='#/play/{sid}']")
        shot(page, "sessions")

        # Search the command typed in vi; the hit opens the player on the screen it stood on.
        page.goto(f"{base}/ui/#/search")
        page.fill("input[name=q]", f"{TYPED} kind:output")
        page.click("form.filters button[type=submit]")
        page.wait_for_selector("li.hit-output")
        assert TYPED in page.inner_text("li.hit-output pre")
        shot(page, "search")
        page.click("li.hit-output a.open")
        player_ready(page)
        assert page.get_attribute("#terminal", "data-highlight") == "found"
        selected = page.evaluate("() => window.svPlayer.term.getSelection()")
        assert selected.lower() == TYPED.lower()
        at = player_pos(page)
        screen = player_screen(page)
        assert any(TYPED in row for row in screen), screen
        assert sum(row.startswith("~") for row in screen) > 10, screen  # vi's screen, not a shell
        # The timeline marks the search hit, and Enter (":q!" sent in one write) with the row
        # the cursor stood on.
        page.wait_for_selector(".marker-hit")
        command_marks = page.locator(".marker-command").evaluate_all("e => e.map(m => m.title)")
        assert any(TYPED in title for title in command_marks), command_marks
        shot(page, "player")
        expected = tmux_screen_at(env, sid, at, COLS, ROWS)
        assert same_screen(screen, expected), f"at {at} ms:\n{screen_diff(expected, screen)}"

        # Seek by clicking the timeline (a fifth of the way: the seq output before vi).
        box = page.locator("#timeline").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)
        page.wait_for_function(f"() => Math.round(window.svPlayer.pos) !== {at}")
        clicked = player_pos(page)
        screen = player_screen(page)
        expected = tmux_screen_at(env, sid, clicked, COLS, ROWS)
        assert same_screen(screen, expected), f"at {clicked}:\n{screen_diff(expected, screen)}"

        # By keyboard: '.' writes the next frame; the right arrow is +5 s (at most the end).
        page.keyboard.press(".")
        page.wait_for_function(f"() => Math.round(window.svPlayer.pos) > {clicked}")
        stepped = player_pos(page)
        screen = player_screen(page)
        expected = tmux_screen_at(env, sid, stepped, COLS, ROWS)
        assert same_screen(screen, expected), f"at {stepped}:\n{screen_diff(expected, screen)}"
        duration = int(page.evaluate("() => window.svPlayer.duration"))
        page.keyboard.press("ArrowLeft")
        back = max(0, stepped - 5000)
        page.wait_for_function(f"() => Math.round(window.svPlayer.pos) === {back}")
        page.keyboard.press("ArrowRight")
        jumped = min(5000, duration)
        page.wait_for_function(f"() => Math.round(window.svPlayer.pos) === {jumped}")
        screen = player_screen(page)
        expected = tmux_screen_at(env, sid, jumped, COLS, ROWS)
        assert same_screen(screen, expected), f"at {jumped}:\n{screen_diff(expected, screen)}"
        stepped = jumped
        page.keyboard.press(">")
        assert page.inner_text("#speed") == "2×"

        # The evidence bundle button: a signed zip that verifies offline.
        with page.expect_download(timeout=60_000) as download:
            page.click("#bundle")
        bundle = tmp_path / "from-console.zip"
        download.value.save_as(bundle)
        report = verify_bundle(bundle, load_keys(settings).public_keys())
        assert report.ok, report.problems
        assert report.sid == sid

        # Share: a link that needs no token opens the session at the moment it was made.
        page.click("#share")
        page.wait_for_selector("#share-url:has-text('/ui/#/share/svs_')")
        url = page.inner_text("#share-url").split(" ")[0]
        anonymous = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        anonymous.goto(url)
        player_ready(anonymous)
        assert player_pos(anonymous) == stepped
        assert same_screen(player_screen(anonymous), screen)
        shot(anonymous, "share")
        # The share link reads only its session: not the list, not search.
        share_token = url.rsplit("/", 1)[1]
        with httpx.Client(base_url=base, timeout=30) as http:
            auth = {"Authorization": f"Bearer {share_token}"}
            assert http.get("/v1/sessions", headers=auth).status_code == 403
            assert http.get("/v1/search", params={"text": "x"}, headers=auth).status_code == 403
            # Expired: refused with a clear page.
            run_async(fetch_all(dsn, "UPDATE share_links SET expires_at = now() - interval '1 s'"))
            assert http.get(f"/v1/sessions/{sid}", headers=auth).status_code == 401
        expired = browser.new_context().new_page()
        expired.goto(url)
        expired.wait_for_selector("h1:has-text('cannot be opened')")
        shot(expired, "share-expired")

        # Another tenant's token, and a token bound to a Kubernetes cluster, see nothing.
        for other in (stranger, kube_only):
            blind = browser.new_context().new_page()
            login(blind, base, other)
            blind.wait_for_selector("p.hint:has-text('No sessions match')")
            blind.goto(f"{base}/ui/#/play/{sid}")
            blind.wait_for_selector("p.error:has-text('not found')")
            blind.goto(f"{base}/ui/#/search?q=kubectl")
            blind.wait_for_selector("p.hint:has-text('No hits')")
        assert not errors, errors
        headers = httpx.get(f"{base}/ui/", timeout=30).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["referrer-policy"] == "no-referrer"

    # Every use of the share link was recorded (opening it: access_via share).
    drain(settings, [settings.topic_events])
    views = asyncio.run(
        fetch_all(dsn, "SELECT user_name, body FROM events WHERE event = $1", VIEW_EVENT)
    )
    vias = [orjson.loads(str(v["body"]))["access_via"] for v in views]
    assert "share" in vias, vias
    assert all(share_token not in str(v["body"]) for v in views)


def test_the_kubernetes_view_opens_an_exec_session_in_the_player(settings: Settings) -> None:
    sid = record_exec(settings, FakeClock())
    token = make_token(settings, scopes=("read", "webhook"))
    body = orjson.dumps(
        {"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
         "items": [orjson.loads(EXEC_EVENT.read_bytes())]}
    )  # fmt: skip
    with serve(settings) as base:
        resp = httpx.post(
            f"{base}/v1/kube/audit/minikube",
            content=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        drain(settings)
        with chromium() as browser:
            _open_exec_from_the_kube_view(browser, base, token, sid)


def _open_exec_from_the_kube_view(browser: Browser, base: str, token: str, sid: str) -> None:
    page = browser.new_context(viewport={"width": 1280, "height": 700}).new_page()
    login(page, base, token)
    page.goto(f"{base}/ui/#/kube?since=2018-10-26T00:00:00Z")
    page.wait_for_selector("tr.kube-request")
    assert "create pods/exec" in page.inner_text("tr.kube-request")
    shot(page, "kubernetes")
    page.click("a.exec")
    player_ready(page)
    assert page.url.endswith(f"#/play/{sid}")
    page.keyboard.press("ArrowRight")  # +5 s, at most the end: the whole exec session
    page.wait_for_function("() => window.svPlayer.pos === window.svPlayer.duration")
    screen = "\n".join(player_screen(page))
    assert "root@nginx:/#" in screen
    assert "No such file or directory" in screen
    # Its two resizes are marked on the timeline.
    page.wait_for_selector(".marker-resize")
    titles = page.locator(".marker-resize").evaluate_all("e => e.map(m => m.title)")
    assert [t.split(" ", 1)[1] for t in titles] == ["120x40", "80x24"], titles


def test_live_view_follows_a_session_being_recorded(settings: Settings, tmp_path: Path) -> None:
    env = env_for(settings)
    env.update(TERM="xterm-256color", LC_ALL="C.UTF-8", HOME=str(tmp_path))
    sid = "live-" + os.urandom(4).hex()
    sv = str(Path(sys.executable).parent / "sessionvault")
    token = make_token(settings, scopes=("read",))
    with running_persist_worker(settings), serve(settings) as base:
        drv = PtyDriver([sv, "record", "-q", "--sid", sid, "--", "cat"], env, cols=80, rows=24)
        drv.send(b"first-line\r")
        drv.expect(b"first-line")
        wait_status(settings.postgres_dsn.get(), sid, "active")
        with chromium() as browser:
            page = browser.new_context(viewport={"width": 1100, "height": 700}).new_page()
            login(page, base, token)
            row = page.locator(f"tr:has(a[href='#/play/{sid}'])")
            assert row.locator(".live-badge").inner_text() == "LIVE"
            row.locator("a").click()
            player_ready(page)
            page.click("#live")
            page.wait_for_function("() => window.svPlayer.live")
            page.wait_for_function(
                "() => window.svPlayer.screenText().includes('first-line')", timeout=20_000
            )
            # Typed now, after the player opened: it appears while the session goes on.
            for n in range(3):
                drv.send(f"typed-while-watching-{n}\r".encode())
                page.wait_for_function(
                    f"() => window.svPlayer.screenText().includes('typed-while-watching-{n}')",
                    timeout=20_000,
                )
            shot(page, "live")
            drv.send(b"\x04")  # EOF: cat exits, the recording ends
            assert drv.wait() == 0
            page.wait_for_function(
                "() => !window.svPlayer.live && window.svPlayer.session.status === 'ended'",
                timeout=30_000,
            )


def test_an_alert_opens_the_player_at_its_moment(settings: Settings) -> None:
    typed = _record_curl_session(settings)
    assert run_detect_until_drained(settings).stats.output_alerts == 1
    drain(settings, [settings.topic_events])
    (alert,) = stored_alerts(settings)
    token = make_token(settings, scopes=("read",))
    with serve(settings) as base, chromium() as browser:
        page = browser.new_context(viewport={"width": 1280, "height": 700}).new_page()
        login(page, base, token)
        page.goto(f"{base}/ui/#/alerts?since=3650d")
        page.wait_for_selector("tr.alert")
        row = page.inner_text("tr.alert")
        assert alert["title"] in row
        assert alert["level"] in row
        shot(page, "alerts")
        page.click("tr.alert a.open")
        player_ready(page)
        assert page.url.split("#", 1)[1].startswith(f"/play/{typed.sid}")
        assert player_pos(page) == alert["offset_ms"]
        # The timeline marks the alert.
        page.wait_for_selector(".marker-alert")
