"""The web console's player in headless Chromium (Debian's, driven by Playwright) on a large
generated session: time to the first screen, seeks, JS heap, live-view delay.

The session (1 GiB of terminal output; 64 MiB with ``--quick``) is written once through the
persist worker's storage path and rendered by the real segmenter (which keeps its keyframes),
and kept between runs. Then, against ``sessionvault serve``'s app on loopback:

* first screen: from navigation to the player's first screen drawn (``performance.now()`` when
  the first seek is on the screen; page load, bundle, session, keyframe and frames included);
* seek: 50 clicks at random points of the timeline, each from the click to the screen drawn
  (the player's own measure: the seek request, writing the keyframe and frames, and the next
  animation frame);
* JS heap (``performance.memory.usedJSHeapSize`` after a forced GC) after playing at speed 100
  (the whole session, or as far as 60 s of wall time gets, 300 s in a full run) and after the
  50 seeks;
* live delay: 40 lines written by a live recorder (the SDK, through the real broker and persist
  worker), each from the write to its appearance on the watching page's screen.

Targets (issue 12): first screen < 300 ms, seek p99 < 100 ms, heap < 100 MB, live p99 < 1 s.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from api.app import create_app
from bench._common import MIB, Figure, bench_main, load_average
from bench.replay import stored_session, write_session
from bench.servers import BenchStack, bench_stack
from ingest.persist import run_persist_worker
from ingest.sdk import SessionRecorder
from ingest.segmenter import Segmenter
from schemas.models import SessionInfo
from sessionvault.settings import Settings
from storage import pg
from storage.chunkstore import enqueue_segments
from storage.tokens import create_token

NAME = "console"
# One tenant per size: writing a session replaces its tenant's sessions (bench.replay).
TENANTS = {False: "bench-console", True: "bench-console-quick"}  # by --quick
CHROMIUM = "/usr/bin/chromium"
SEEKS = 50
PLAY_S = {True: 60.0, False: 300.0}  # by --quick
LIVE_LINES = 40
LIST_ROWS = {True: 200_000, False: 2_000_000}  # sessions in the list-paging tenant
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--enable-precise-memory-info",
    "--js-flags=--expose-gc",
]


@contextmanager
def _serve(settings: Settings) -> Iterator[str]:
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def _persist_worker(settings: Settings) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=lambda: loop.run_until_complete(run_persist_worker(settings, stop=stop)),
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)


async def _render(bs: BenchStack, tenant: str, sid: str) -> tuple[int, float]:
    """Queue the session for the segmenter and run one until it is rendered; (keyframes, s)."""
    conn = await pg.connect(bs.dsn)
    try:
        async with conn.transaction():
            await enqueue_segments(conn, {sid: tenant})
    finally:
        await conn.close()
    t0 = time.perf_counter()
    seg = Segmenter(bs.settings)
    try:
        # This session only: the bench database may hold other benchmarks' queued sessions.
        while not (await seg.process_session(sid)).caught_up:
            pass
    finally:
        await seg.close()
    conn = await pg.connect(bs.dsn)
    try:
        n = await conn.fetchval("SELECT count(*) FROM session_keyframes WHERE sid = $1", sid)
    finally:
        await conn.close()
    return int(n), time.perf_counter() - t0


async def _rendered(dsn: str, sid: str) -> bool:
    """Whether the segmenter has rendered the whole session (a killed run may have stopped
    half-way: its keyframes would end there)."""
    conn = await pg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT s.last_seq, t.text_seq, q.sid AS queued FROM sessions s"
            " LEFT JOIN session_text t ON t.sid = s.sid"
            " LEFT JOIN segment_queue q ON q.sid = s.sid WHERE s.sid = $1",
            sid,
        )
    finally:
        await conn.close()
    return bool(row) and row["queued"] is None and row["text_seq"] == row["last_seq"]


async def _token(dsn: str, tenant: str) -> str:
    conn = await pg.connect(dsn)
    try:
        token, _ = await create_token(conn, tenant, scopes=("read",))
    finally:
        await conn.close()
    return token


def _heap_mb(page: Any) -> float:
    page.evaluate("() => window.gc && window.gc()")
    return float(page.evaluate("() => performance.memory.usedJSHeapSize")) / 1e6


def _p(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _player(browser: Any, base: str, token: str, sid: str) -> tuple[Any, float]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(f"sessionStorage.setItem('sv.token', {token!r})")
    page = context.new_page()
    page.goto(f"{base}/ui/#/play/{sid}")
    page.wait_for_selector("#terminal[data-ready='1']", timeout=60_000)
    return page, float(page.evaluate("() => window.svFirstScreenMs"))


def _measure_player(base: str, token: str, sid: str, play_s: float) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            firsts = []
            for _ in range(3):  # the first load also warms PostgreSQL's cache
                page, first = _player(browser, base, token, sid)
                firsts.append(first)
                page.context.close()
            out["first_ms"] = firsts
            print(f"  first screen: {', '.join(f'{v:.0f}' for v in firsts)} ms", flush=True)
            page, _ = _player(browser, base, token, sid)
            out["heap_start_mb"] = _heap_mb(page)
            box = page.locator("#timeline").bounding_box()
            rnd = random.Random(12)
            seeks = []
            for _ in range(SEEKS):
                before = page.evaluate("() => window.svPlayer.lastSeekMs")
                x = box["x"] + rnd.random() * box["width"]
                page.evaluate("() => { window.svPlayer.lastSeekMs = 0 }")
                page.mouse.click(x, box["y"] + box["height"] / 2)
                page.wait_for_function("() => window.svPlayer.lastSeekMs > 0", timeout=60_000)
                seeks.append(float(page.evaluate("() => window.svPlayer.lastSeekMs")))
                del before
            out["seek_ms"] = seeks
            print(f"  {len(seeks)} seeks: max {max(seeks):.0f} ms", flush=True)
            out["heap_seeks_mb"] = _heap_mb(page)
            # Play from the start at speed 100 (idle time capped at 2 s, the default).
            page.evaluate("() => window.svPlayer.seek(0)")
            page.wait_for_function("() => window.svPlayer.pos === 0")
            page.evaluate("() => { window.svPlayer.setSpeed(100); window.svPlayer.play(); }")
            t0 = time.perf_counter()
            peak = 0.0
            while time.perf_counter() - t0 < play_s:
                time.sleep(2)
                peak = max(peak, float(page.evaluate("() => performance.memory.usedJSHeapSize")))
                pos = float(page.evaluate("() => window.svPlayer.pos"))
                print(f"  playing at 100x: {pos / 1000:.0f} s of session time,"
                      f" heap {peak / 1e6:.0f} MB", flush=True)  # fmt: skip
                if not page.evaluate("() => window.svPlayer.playing"):
                    break
            out["played_ms"] = float(page.evaluate("() => window.svPlayer.pos"))
            out["duration_ms"] = float(page.evaluate("() => window.svPlayer.duration"))
            out["play_wall_s"] = time.perf_counter() - t0
            out["heap_play_mb"] = _heap_mb(page)
            out["heap_play_peak_mb"] = peak / 1e6
        finally:
            browser.close()
    return out


async def _wait_stored(dsn: str, sid: str, timeout_s: float = 120) -> None:
    conn = await pg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while not await conn.fetchval("SELECT 1 FROM sessions WHERE sid = $1", sid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"live session {sid} not stored after {timeout_s}s")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def _measure_live(bs: BenchStack, base: str, token: str) -> list[float]:
    from playwright.sync_api import sync_playwright

    settings = bs.settings
    info = SessionInfo("2026-01-05T10:00:00.000Z", 120, 40, user="bench", login="root")
    delays: list[float] = []
    with _persist_worker(settings):
        rec = SessionRecorder(settings, info)
        try:
            rec.output(b"live bench\r\n")
            # The worker's first group join takes a few seconds: not part of the delay.
            asyncio.run(_wait_stored(bs.dsn, rec.sid))
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
                try:
                    page, _ = _player(browser, base, token, rec.sid)
                    page.click("#live")
                    page.wait_for_function("() => window.svPlayer.live")
                    for n in range(LIVE_LINES):
                        mark = f"live-mark-{n:03d}"
                        t0 = time.perf_counter()
                        rec.output(f"{mark}\r\n".encode())
                        page.wait_for_function(
                            f"() => window.svPlayer.screenText().includes('{mark}')",
                            polling=5,
                            timeout=30_000,
                        )
                        delays.append((time.perf_counter() - t0) * 1000)
                        if n % 10 == 9:
                            print(f"  live: {n + 1} lines, last {delays[-1]:.0f} ms", flush=True)
                        time.sleep(0.2)
                finally:
                    browser.close()
        finally:
            rec.close()
    return delays


LIST_TENANT = "bench-console-list"


async def _list_sessions_timing(base: str, dsn: str, rows: int) -> dict[str, float]:
    """Session-list pages over ``rows`` sessions of one tenant (inserted once, kept): the first
    page, and a page reached by keyset cursor at the far end, each best of 5 (ms, server and
    HTTP included)."""
    import httpx

    conn = await pg.connect(dsn)
    try:
        have = await conn.fetchval("SELECT count(*) FROM sessions WHERE tenant = $1", LIST_TENANT)
        if have != rows:
            print(f"  inserting {rows:,} sessions for the list pages ...", flush=True)
            await conn.execute("DELETE FROM sessions WHERE tenant = $1", LIST_TENANT)
            await conn.execute(
                "INSERT INTO sessions (sid, tenant, kind, user_name, login, server_id,"
                " started_at, cols, rows, last_hash, status)"
                " SELECT 'list-' || g, $1, CASE WHEN g % 5 = 0 THEN 'kube' ELSE 'ssh' END,"
                " 'user-' || (g % 1000), 'root', 'node-' || (g % 300),"
                " timestamptz '2026-01-01' + g * interval '20 s', 80, 24, '', 'closed'"
                " FROM generate_series(1, $2) g",
                LIST_TENANT,
                rows,
            )
            await conn.execute("ANALYZE sessions")
        token, _ = await create_token(conn, LIST_TENANT, scopes=("read",))
        last = await conn.fetchrow(
            "SELECT started_at, sid FROM sessions WHERE tenant = $1"
            " ORDER BY started_at, sid LIMIT 1 OFFSET 50",
            LIST_TENANT,
        )
    finally:
        await conn.close()
    import base64

    deep = base64.urlsafe_b64encode(
        f"{int(last['started_at'].timestamp() * 1_000_000)}:{last['sid']}".encode()
    ).decode()
    out = {}
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as http:
        for name, params in (
            ("first", {"limit": "50"}),
            ("deep", {"limit": "50", "cursor": deep}),
            ("first, filtered", {"limit": "50", "user": "user-7", "kind": "ssh"}),
        ):
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                r = await http.get("/v1/sessions", params=params)
                r.raise_for_status()
                best = min(best, time.perf_counter() - t0)
            out[name] = best * 1000
    return out


def run(quick: bool) -> list[Figure]:
    total = 64 * MIB if quick else 1024 * MIB
    sid = f"bench-console-{total // MIB}mib-v1"
    tenant = TENANTS[quick]
    with bench_stack(tenant, broker=True, clean=False) as bs:
        have = asyncio.run(stored_session(bs.dsn, sid, tenant))
        if have is None:
            t = time.perf_counter()
            raw, chunks = asyncio.run(write_session(bs, sid, total, tenant))
            print(f"  wrote {sid}: {raw / MIB:.0f} MiB, {chunks} chunks, "
                  f"{time.perf_counter() - t:.0f}s", flush=True)  # fmt: skip
        else:
            raw, chunks = have
        if not asyncio.run(_rendered(bs.dsn, sid)):
            keyframes, render_s = asyncio.run(_render(bs, tenant, sid))
            print(f"  segmenter: {keyframes} keyframes in {render_s:.0f}s", flush=True)
        token = asyncio.run(_token(bs.dsn, tenant))
        with _serve(bs.settings) as base:
            m = _measure_player(base, token, sid, PLAY_S[quick])
            live = _measure_live(bs, base, token)
            pages = asyncio.run(_list_sessions_timing(base, bs.dsn, LIST_ROWS[quick]))
    first = min(m["first_ms"])
    seek_p50, seek_p99 = _p(m["seek_ms"], 50), _p(m["seek_ms"], 99)
    heap = max(m["heap_play_mb"], m["heap_seeks_mb"])
    live_p50, live_p99 = _p(live, 50), _p(live, 99)
    played = m["played_ms"] / max(1.0, m["duration_ms"])
    note = f"load {load_average()}"
    return [
        Figure(NAME, "session size", raw / MIB, "MiB", note=f"{chunks} chunks"),
        Figure(NAME, "first screen (best of 3 loads)", first, "ms", "< 300", first < 300,
               note=f"loads: {', '.join(f'{v:.0f}' for v in m['first_ms'])} ms"),
        Figure(NAME, f"seek p50 ({SEEKS} random clicks)", seek_p50, "ms"),
        Figure(NAME, f"seek p99 ({SEEKS} random clicks)", seek_p99, "ms", "< 100",
               seek_p99 < 100, note=f"max {max(m['seek_ms']):.0f} ms; {note}"),
        Figure(NAME, "JS heap after seeks", m["heap_seeks_mb"], "MB", "< 100",
               m["heap_seeks_mb"] < 100),
        Figure(NAME, "JS heap after playing at speed 100", m["heap_play_mb"], "MB", "< 100",
               heap < 100,
               note=f"played {played:.0%} of the session in {m['play_wall_s']:.0f}s;"
               f" peak before GC {m['heap_play_peak_mb']:.0f} MB"),
        Figure(NAME, "session list, first page", pages["first"], "ms",
               note=f"{LIST_ROWS[quick]:,} sessions in the tenant; 50 per page"),
        Figure(NAME, "session list, page at the far end", pages["deep"], "ms",
               note="keyset cursor 50 sessions from the oldest"),
        Figure(NAME, "session list, user + kind filter", pages["first, filtered"], "ms"),
        Figure(NAME, "live view delay p50", live_p50, "ms"),
        Figure(NAME, "live view delay p99", live_p99, "ms", "< 1000", live_p99 < 1000,
               note=f"{LIVE_LINES} lines, SDK -> broker -> persist -> long poll -> screen"),
    ]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(bench_main(run, "web console benchmark"))
