"""What the web console reads, over HTTP against real PostgreSQL: the session list (filters,
keyset paging, scoping), windows of frames (byte-exact), seeks (the frames after a seek are
exactly those after the moment), timeline markers, share links (one session, time-limited,
no more rights than that) and the security headers."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from schemas.models import Frame, Stream
from sessionvault.settings import Settings
from storage import pg
from tests.integration.api_support import make_token, serve
from tests.integration.persist_helpers import fetch_all
from tests.integration.replay_support import chunked, write_session

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _frames(n: int, seed: int) -> list[Frame]:
    rnd = random.Random(seed)
    out = []
    t = 0
    for i in range(n):
        t += rnd.randint(0, 40)
        stream = Stream.INPUT if i % 7 == 3 else Stream.OUTPUT
        data = bytes(rnd.randint(0, 255) for _ in range(rnd.randint(1, 300)))
        out.append(Frame(t, stream, data))
    return out


def _store(settings: Settings, sessions: dict[str, tuple[list[Frame], dict[str, object]]]) -> None:
    async def main() -> None:
        conn = await pg.connect(settings.postgres_dsn.get())
        try:
            for sid, (frames, columns) in sessions.items():
                await write_session(conn, settings.tenant, sid, chunked(frames, 2048))
                for column, value in columns.items():
                    await conn.execute(
                        f"UPDATE sessions SET {column} = $2 WHERE sid = $1", sid, value
                    )
        finally:
            await conn.close()

    asyncio.run(main())


@pytest.fixture
def api(settings: Settings) -> Iterator[tuple[httpx.Client, Settings]]:
    with serve(settings) as base, httpx.Client(base_url=base, timeout=30) as http:
        yield http, settings


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _bytes(wire: list[list[object]]) -> list[tuple[int, str, bytes]]:
    return [(int(t), str(s), base64.b64decode(str(d))) for t, s, d in wire]  # type: ignore[call-overload]


def test_the_session_list_filters_pages_by_keyset_and_is_scoped(
    api: tuple[httpx.Client, Settings],
) -> None:
    http, settings = api
    sessions: dict[str, tuple[list[Frame], dict[str, object]]] = {}
    for i in range(9):
        cols: dict[str, object] = {"started_at": T0 + timedelta(minutes=i // 2)}  # ties
        if i % 3 == 0:
            cols.update(kind="kube", kubernetes_cluster="prod-eu", user_name="bob")
        if i == 4:
            cols["status"] = "active"
        if i == 5:
            cols["status"] = "abandoned"
        sessions[f"s-{i}"] = ([Frame(0, Stream.OUTPUT, b"x")], cols)
    _store(settings, sessions)
    token = make_token(settings, scopes=("read",))
    newest_first = sorted(sessions, key=lambda s: (sessions[s][1]["started_at"], s), reverse=True)

    seen, cursor = [], None
    while True:
        r = http.get("/v1/sessions", params={"limit": 4, "cursor": cursor}, headers=_auth(token))
        assert r.status_code == 200, r.text
        seen += [s["sid"] for s in r.json()["sessions"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first  # each once, in order, across pages that split ties

    def sids(token: str, **params: str) -> list[str]:
        r = http.get("/v1/sessions", params=params, headers=_auth(token))
        assert r.status_code == 200, r.text
        return [s["sid"] for s in r.json()["sessions"]]

    assert sids(token, kind="kubectl") == [s for s in newest_first if s in {"s-0", "s-3", "s-6"}]
    assert sids(token, user="bob", status="ended") == ["s-6", "s-3", "s-0"]
    assert sids(token, status="active") == ["s-4"]
    assert sids(token, status="abandoned") == ["s-5"]
    assert sids(token, since="2026-05-01T12:03:00Z") == ["s-8", "s-7", "s-6"]
    # A cluster-bound token sees only its cluster's Kubernetes sessions; another tenant none.
    assert sids(make_token(settings, scopes=("read",), clusters=["prod-eu"])) == [
        "s-6",
        "s-3",
        "s-0",
    ]
    assert sids(make_token(settings, scopes=("read",), clusters=["other"])) == []
    assert sids(make_token(settings, tenant="t-other", scopes=("read",))) == []
    # Malformed input is a clear 400.
    for params in ({"status": "gone"}, {"cursor": "!!"}, {"since": "yesterday"}):
        r = http.get("/v1/sessions", params=params, headers=_auth(token))
        assert r.status_code == 400, (params, r.text)
    # The page carries the console's security headers like every response.
    r = http.get("/v1/sessions", headers=_auth(token))
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_windows_of_frames_and_seeks_give_back_the_stored_bytes_exactly(
    api: tuple[httpx.Client, Settings],
) -> None:
    http, settings = api
    frames = _frames(400, seed=7)
    _store(settings, {"s-bytes": (frames, {})})
    auth = _auth(make_token(settings, scopes=("read",)))
    want = [(f.offset_ms, f.stream.value, f.data) for f in frames]

    got, nxt = [], {"seq": 0, "skip": 0}
    while True:
        r = http.get("/v1/sessions/s-bytes/frames", params={**nxt, "max_bytes": 5000}, headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        got += _bytes(body["frames"])
        nxt = body["next"]
        if body["end"]:
            break
        assert body["frames"], "a window that is not the end carries frames"
    assert got == want
    assert body["status"] == "ended"

    for at in (0, frames[57].offset_ms, frames[200].offset_ms + 1, frames[-1].offset_ms, 10**9):
        r = http.get("/v1/sessions/s-bytes/seek", params={"at_ms": at}, headers=auth)
        assert r.status_code == 200, r.text
        seek = r.json()
        shown = _bytes(seek["frames"])
        assert all(t <= at for t, _, _ in shown)
        assert [f for f in shown if f[1] == "i"] == []  # keystrokes are not drawn
        after = _bytes(
            http.get("/v1/sessions/s-bytes/frames",
                     params={**seek["next"], "max_bytes": 10**6}, headers=auth).json()["frames"]
        )  # fmt: skip
        assert after == [f for f in want if f[0] > at], at
        # Without keyframes the frames up to the moment are sent as they are (colours kept)
        # while they are small; past the limit one drawing of the screen replaces them.
        output_before = sum(len(d) for t, s, d in want if t <= at and s == "o")
        if output_before <= 512 * 1024:
            assert b"".join(d for _, _, d in shown) == b"".join(
                d for t, s, d in want if t <= at and s == "o"
            )


def test_markers_and_share_links_are_limited_to_their_session(
    api: tuple[httpx.Client, Settings],
) -> None:
    http, settings = api
    _store(
        settings,
        {"s-a": (_frames(20, seed=1), {}), "s-b": (_frames(20, seed=2), {})},
    )
    asyncio.run(
        fetch_all(
            settings.postgres_dsn.get(),
            "INSERT INTO session_markers (sid, tenant, at_ms, kind, label)"
            " VALUES ('s-a', $1, 5, 'command', '$ ls'), ('s-a', $1, 9, 'resize', '90x20')",
            settings.tenant,
        )
    )
    token = make_token(settings, scopes=("read",))
    r = http.get("/v1/sessions/s-a/markers", headers=_auth(token))
    assert r.status_code == 200, r.text
    assert [(m["t"], m["kind"], m["label"]) for m in r.json()["markers"]] == [
        (5, "command", "$ ls"),
        (9, "resize", "90x20"),
    ]

    r = http.post("/v1/shares", json={"sid": "s-a", "at_ms": 7, "ttl_s": 3600},
                  headers=_auth(token))  # fmt: skip
    assert r.status_code == 200, r.text
    link = r.json()
    share = link["url"].rsplit("/", 1)[1]
    assert share.startswith("svs_")
    assert http.get("/v1/shares/self", headers=_auth(share)).json()["at_ms"] == 7
    assert http.get("/v1/sessions/s-a/seek", headers=_auth(share)).status_code == 200
    assert http.get("/v1/sessions/s-a/markers", headers=_auth(share)).status_code == 200
    export = http.get("/v1/sessions/s-a/export", params={"format": "raw"}, headers=_auth(share))
    assert export.status_code == 200
    # Nothing else: another session, lists, search, making links.
    assert http.get("/v1/sessions/s-b", headers=_auth(share)).status_code == 404
    assert http.get("/v1/sessions/s-b/export", headers=_auth(share)).status_code == 404
    assert http.get("/v1/sessions", headers=_auth(share)).status_code == 403
    assert http.get("/v1/search", headers=_auth(share)).status_code == 403
    again = http.post("/v1/shares", json={"sid": "s-a"}, headers=_auth(share))
    assert again.status_code == 403
    # Links live at most share_max_ttl_s; a session the token cannot see cannot be shared.
    too_long = {"sid": "s-a", "ttl_s": settings.share_max_ttl_s + 1}
    assert http.post("/v1/shares", json=too_long, headers=_auth(token)).status_code == 400
    stranger = make_token(settings, tenant="t-else", scopes=("read",))
    assert http.post("/v1/shares", json={"sid": "s-a"}, headers=_auth(stranger)).status_code == 404
    # The token's text is stored only as a hash.
    rows = asyncio.run(fetch_all(settings.postgres_dsn.get(), "SELECT * FROM share_links"))
    assert share not in repr(rows)
