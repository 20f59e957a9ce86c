"""Trusted clusters on real servers: a root and two leaves, each a complete installation (own
database, topics, tenant, persist worker, API), joined with join tokens, tunnels dialled out
by the leaves' `worker tunnel` processes (one through a TCP proxy the test cuts).

The root answers from its leaves without storing any of their records; each leaf decides who
of the root sees what and audits every federated read."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from api.federation import pki
from api.federation.files import LeafFiles
from deploy.servers import pg_bin
from deploy.stack import LocalStack
from sessionvault.cli.federation import join_root
from sessionvault.errors import ValidationError
from sessionvault.settings import Settings
from tests.integration.api_support import serve
from tests.integration.conftest import drop_installation, env_for, new_installation
from tests.integration.federation_support import (
    CuttableProxy,
    Leaf,
    cli,
    seed,
    token,
    tunnels,
    wait_connected,
)
from tests.integration.import_support import SESSIONVAULT, drain
from tests.integration.persist_helpers import fetch_all

MARK = "fedmark"
KUBE_A = ["2026-11-20T10:00:01.000Z", "2026-11-20T10:00:04.000Z"]
KUBE_B = ["2026-11-20T10:00:02.000Z", "2026-11-20T10:00:03.000Z"]
ROWS = "n => document.querySelectorAll('table.sessions tbody tr').length === n"
WINDOW = {"since": "2026-11-19T00:00:00Z", "until": "2026-11-22T00:00:00Z"}


@dataclass
class Federation:
    root: Settings
    base: str
    alice: str  # a root token of user alice (mapped on both leaves)
    mallory: str  # a root token of user mallory (mapped nowhere)
    a: Leaf
    b: Leaf
    proxy: CuttableProxy  # between leaf a and the root


@pytest.fixture(scope="module")
def fed(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    base_dir = tmp_path_factory.mktemp("federation")
    made: list[Settings] = []

    def install(name: str, **extra: Any) -> Settings:
        d = base_dir / name
        d.mkdir()
        s = new_installation(stack, d, federation_name=name, **extra)
        made.append(s)
        return s

    root = install("root", federation_listen="127.0.0.1:0", federation_timeout_ms=3000)
    a = Leaf("leaf-a", install("leaf-a"), log=base_dir / "leaf-a.log")
    b = Leaf("leaf-b", install("leaf-b"), log=base_dir / "leaf-b.log")
    # Interleaved start times, so the merged order alternates between the leaves.
    seed(a, [f"2026-11-20T09:0{m}:00.000Z" for m in (0, 2, 4)], MARK, KUBE_A)
    seed(b, [f"2026-11-20T09:0{m}:00.000Z" for m in (1, 3)], MARK, KUBE_B)
    try:
        with serve(root) as url:
            tunnel_port = _tunnel_port(root, url)
            proxy = CuttableProxy(tunnel_port)
            try:
                for leaf, via in ((a, f"127.0.0.1:{proxy.port}"), (b, None)):
                    tok = cli(root, "federation", "token", "--leaf", leaf.name).stdout.strip()
                    args = ["federation", "join", "--root", url, "--token", tok]
                    cli(leaf.settings, *args, *(["--tunnel", via] if via else []))
                    cli(
                        leaf.settings,
                        "federation",
                        "map",
                        "--root",
                        "root",
                        "--user",
                        "alice",
                        "--tenant",
                        leaf.settings.tenant,
                    )
                alice = token(root, user="alice", roles=("auditor",))
                mallory = token(root, user="mallory")
                with tunnels([a, b]):
                    try:
                        wait_connected(url, alice, {"leaf-a", "leaf-b"})
                    except AssertionError as exc:
                        raise AssertionError(f"{exc}\n{a.log_tail()}\n{b.log_tail()}") from exc
                    yield Federation(root, url, alice, mallory, a, b, proxy)
            finally:
                proxy.close()
    finally:
        for s in made:
            drop_installation(stack, s)


def _tunnel_port(root: Settings, url: str) -> int:
    """The root's tunnel port (the listener was started on port 0)."""
    tok = token(root, user="admin")
    r = httpx.get(
        f"{url}/v1/federation/leaves", headers={"Authorization": f"Bearer {tok}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    return int(r.json()["tunnel_port"])


def get(fed: Federation, path: str, params: Any = None, tok: str | None = None) -> httpx.Response:
    return httpx.get(
        f"{fed.base}{path}",
        params=params,
        headers={"Authorization": f"Bearer {tok or fed.alice}"},
        timeout=60,
    )


def leaf_hits(leaf: Leaf, params: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    """Every hit of ``leaf``'s own search (its own API, its own token), as merge keys."""
    tok = token(leaf.settings, user="local")
    out = []
    with serve(leaf.settings) as base:
        cursor = None
        while True:
            r = httpx.get(
                f"{base}/v1/search",
                params=[*params, *([("cursor", cursor)] if cursor else [])],
                headers={"Authorization": f"Bearer {tok}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            body = r.json()
            out += [(h["time_us"], h["id"], leaf.name) for h in body["hits"]]
            cursor = body["next_cursor"]
            if cursor is None:
                return out


def federated_pages(
    fed: Federation, params: list[tuple[str, str]], cursor: str | None = None
) -> Iterator[dict[str, Any]]:
    while True:
        r = get(fed, "/v1/federation/search", [*params, *([("cursor", cursor)] if cursor else [])])
        assert r.status_code == 200, r.text
        page = r.json()
        yield page
        cursor = page["next_cursor"]
        if cursor is None:
            return


def keys(page: dict[str, Any]) -> list[tuple[int, str, str]]:
    return [(h["time_us"], h["id"], h["leaf"]) for h in page["hits"]]


def test_root_search_returns_both_leaves_hits_merged_in_order_page_by_page(fed: Federation) -> None:
    params = [("text", MARK), ("limit", "3")]
    want = sorted(
        leaf_hits(fed.a, [("text", MARK)]) + leaf_hits(fed.b, [("text", MARK)]), reverse=True
    )
    assert {k[2] for k in want} == {"leaf-a", "leaf-b"}
    pages = list(federated_pages(fed, params))
    got = [k for page in pages for k in keys(page)]
    assert got == want
    assert len(pages) >= 3
    assert all(len(p["hits"]) <= 3 for p in pages)
    for page in pages:
        assert page["partial"] is False
        assert {e["name"]: e["status"] for e in page["leaves"]} == {"leaf-a": "ok", "leaf-b": "ok"}
    hit = pages[0]["hits"][0]
    assert hit["replay"].startswith(f"sessionvault play --leaf {hit['leaf']} ")
    assert hit["replay_api"].startswith(f"/v1/federation/leaves/{hit['leaf']}/v1/sessions/")
    # The replay link the hit carries works through the root.
    r = get(fed, hit["replay_api"])
    assert r.status_code == 200, r.text[:200]
    assert r.content.startswith(b'{"version":2')


def test_root_session_list_merges_leaves_newest_first(fed: Federation) -> None:
    r = get(fed, "/v1/federation/sessions", {"limit": "2"})
    assert r.status_code == 200, r.text
    seen = []
    body = r.json()
    while True:
        seen += [(s["started_at"], s["leaf"], s["sid"]) for s in body["sessions"]]
        if body["next_cursor"] is None:
            break
        r = get(fed, "/v1/federation/sessions", {"limit": "2", "cursor": body["next_cursor"]})
        body = r.json()
    assert [leaf for _, leaf, _ in seen] == ["leaf-a", "leaf-b", "leaf-a", "leaf-b", "leaf-a"]
    assert {sid for *_, sid in seen} == set(fed.a.sids) | set(fed.b.sids)


def test_who_ran_kubectl_delete_in_prod_is_answered_across_leaves_in_time_order(
    fed: Federation,
) -> None:
    r = get(fed, "/v1/federation/kube/timeline", {**WINDOW, "cluster": "prod"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["partial"] is False
    requests = [e for e in body["entries"] if e["kind"] == "request"]
    assert [(e["leaf"], e["verb"], e["name"]) for e in requests] == [
        ("leaf-a", "delete", "web-0"),
        ("leaf-b", "delete", "web-0"),
        ("leaf-b", "delete", "web-1"),
        ("leaf-a", "delete", "web-1"),
    ]
    r = get(fed, "/v1/federation/search", [("verb", "delete"), ("kubernetes_cluster", "prod")])
    hits = r.json()["hits"]
    assert [(h["leaf"], h["fields"]["resource_name"]) for h in hits] == [
        ("leaf-a", "web-1"),
        ("leaf-b", "web-1"),
        ("leaf-b", "web-0"),
        ("leaf-a", "web-0"),
    ]


def test_replay_through_the_root_is_byte_exact_and_the_root_stores_no_leaf_record(
    fed: Federation, tmp_path: Path
) -> None:
    from tests.integration.import_support import export

    sid = fed.b.sids[1]
    r = get(fed, f"/v1/federation/leaves/leaf-b/v1/sessions/{sid}/export", {"format": "raw"})
    assert r.status_code == 200, r.text
    _, local = export(fed.b.settings, sid, "raw")
    assert r.content == local
    assert b"\xff\xfe raw bytes" in r.content
    assert f"{MARK} leaf-b 1".encode() in r.content
    # The CLI, against the root, as against a single installation.
    env = {
        **env_for(fed.root),
        "SESSIONVAULT_API_URL": fed.base,
        "SESSIONVAULT_API_TOKEN": fed.alice,
    }
    out = tmp_path / "via-root.raw"
    proc = subprocess.run(
        [SESSIONVAULT, "export", "--leaf", "leaf-b", sid, "--format", "raw", "-o", str(out)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == local
    # Nothing of either leaf in the root's database: no row, no byte of their output, no
    # name of their sessions or servers. The one thing kept is the root's own log of what its
    # users asked (their search words, the session they asked for), checked apart.
    dump = subprocess.run(
        [pg_bin("pg_dump"), "--data-only", fed.root.postgres_dsn.get()],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    for leaf in (fed.a, fed.b):
        for n in range(len(leaf.sids)):
            assert f"{MARK} {leaf.name} {n}".encode() not in dump
            assert f"{leaf.name}-node-{n}".encode() not in dump
    assert b"raw bytes" not in dump
    without_questions = subprocess.run(
        [
            pg_bin("pg_dump"),
            "--data-only",
            "--exclude-table-data=federation_queries",
            fed.root.postgres_dsn.get(),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    for sid_ in fed.a.sids + fed.b.sids:
        assert sid_.encode() not in without_questions
    counts = asyncio.run(
        fetch_all(
            fed.root.postgres_dsn.get(),
            "SELECT (SELECT count(*) FROM sessions) AS s, (SELECT count(*) FROM chunks) AS c,"
            " (SELECT count(*) FROM events) AS e, (SELECT count(*) FROM text_segments) AS t",
        )
    )[0]
    assert counts == {"s": 0, "c": 0, "e": 0, "t": 0}
    # What the root does keep: its own users' questions.
    asked = asyncio.run(
        fetch_all(fed.root.postgres_dsn.get(), "SELECT user_name, route FROM federation_queries")
    )
    assert {"user_name": "alice", "route": f"/v1/sessions/{sid}/export"} in asked


def test_the_cli_asks_the_root_with_leaf_as_it_asks_one_installation(fed: Federation) -> None:
    env = {
        **env_for(fed.root),
        "SESSIONVAULT_API_URL": fed.base,
        "SESSIONVAULT_API_TOKEN": fed.alice,
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [SESSIONVAULT, *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    found = run("search", "--leaf", "*", "--text", f"{MARK} leaf-b 1", "--all-pages")
    lines = [line.split("\t") for line in found.stdout.splitlines()]
    assert {cols[1] for cols in lines} == {"leaf-b"}
    assert all(cols[-1].startswith("sessionvault play --leaf leaf-b ") for cols in lines)
    assert "leaf-a ok (0), leaf-b ok (2)" in found.stderr
    played = run("play", "--leaf", "leaf-b", fed.b.sids[0], "--speed", "50")
    assert f"{MARK} leaf-b 0" in played.stdout
    listed = run("sessions", "--leaf", "leaf-a").stdout.splitlines()
    assert [line.split("\t")[2] for line in listed] == list(reversed(fed.a.sids))
    # Without the root's API settings, one clear line.
    bare = subprocess.run(
        [SESSIONVAULT, "sessions", "--leaf", "leaf-a"],
        env=env_for(fed.root),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bare.returncode != 0
    assert "SESSIONVAULT_API_URL" in bare.stderr
    assert len(bare.stderr.strip().splitlines()) == 1


def test_a_leaf_killed_mid_query_is_named_and_the_same_cursor_continues_after_it_returns(
    fed: Federation,
) -> None:
    params = [("text", MARK), ("limit", "3")]
    want = [k for page in federated_pages(fed, params) for k in keys(page)]
    first = get(fed, "/v1/federation/search", params).json()
    cursor = first["next_cursor"]
    fed.b.kill_tunnel()
    try:
        wait_connected(fed.base, fed.alice, {"leaf-b"}, up=False)
        r = get(fed, "/v1/federation/search", [*params, ("cursor", cursor)])
        assert r.status_code == 200, r.text
        partial = r.json()
        assert partial["partial"] is True
        status = {e["name"]: e for e in partial["leaves"]}
        assert status["leaf-b"]["status"] == "down"
        assert "leaf-b" in status["leaf-b"]["message"]
        assert status["leaf-a"]["status"] == "ok"
        assert {h["leaf"] for h in partial["hits"]} <= {"leaf-a"}
    finally:
        fed.b.start_tunnel()
    wait_connected(fed.base, fed.alice, {"leaf-b"})
    rest = [k for page in federated_pages(fed, params, cursor) for k in keys(page)]
    assert keys(first) + rest == want


def test_a_leaf_too_slow_to_answer_is_named_as_such_and_not_waited_for(fed: Federation) -> None:
    assert fed.b.proc is not None
    os.kill(fed.b.proc.pid, signal.SIGSTOP)  # the tunnel stays open; nothing answers on it
    try:
        t0 = time.monotonic()
        body = get(fed, "/v1/federation/search", [("text", MARK)]).json()
        waited = time.monotonic() - t0
        status = {e["name"]: e for e in body["leaves"]}
        assert body["partial"] is True
        assert status["leaf-b"]["status"] == "timeout"
        assert "did not answer within 3s" in status["leaf-b"]["message"]
        assert status["leaf-a"]["status"] == "ok"
        assert {h["leaf"] for h in body["hits"]} == {"leaf-a"}
        assert waited < 30  # the root's deadline (3 s here), not the leaf's silence
    finally:
        os.kill(fed.b.proc.pid, signal.SIGCONT)
    body = get(fed, "/v1/federation/search", [("text", MARK)]).json()
    assert body["partial"] is False


def test_a_cut_tunnel_is_named_then_redialled_when_the_network_returns(fed: Federation) -> None:
    fed.proxy.cut()
    try:
        wait_connected(fed.base, fed.alice, {"leaf-a"}, up=False)
        body = get(fed, "/v1/federation/sessions", {"limit": "50"}).json()
        assert body["partial"] is True
        assert {e["name"]: e["status"] for e in body["leaves"]}["leaf-a"] == "down"
        assert {s["leaf"] for s in body["sessions"]} == {"leaf-b"}
        r = get(fed, f"/v1/federation/leaves/leaf-a/v1/sessions/{fed.a.sids[0]}")
        assert r.status_code == 503
        assert "leaf-a" in r.json()["detail"]
    finally:
        fed.proxy.restore()
    wait_connected(fed.base, fed.alice, {"leaf-a"}, timeout_s=60)
    body = get(fed, "/v1/federation/sessions", {"limit": "50"}).json()
    assert body["partial"] is False
    assert len(body["sessions"]) == 5


def test_a_root_user_without_a_mapping_sees_nothing_of_a_leaf(fed: Federation) -> None:
    r = get(fed, "/v1/federation/search", [("text", MARK)], tok=fed.mallory)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["hits"] == []
    assert body["partial"] is False
    assert body["next_cursor"] is None
    assert {e["status"] for e in body["leaves"]} == {"no_access"}
    r = get(
        fed,
        f"/v1/federation/leaves/leaf-a/v1/sessions/{fed.a.sids[0]}/export",
        {"format": "raw"},
        tok=fed.mallory,
    )
    assert r.status_code == 403
    assert "maps no tenant" in r.json()["detail"]
    # A route a tunnel never serves, even to a mapped user.
    r = get(fed, "/v1/federation/leaves/leaf-a/v1/shares")
    assert r.status_code == 404


def test_every_federated_read_is_in_the_leafs_own_audit_log(fed: Federation) -> None:
    get(fed, "/v1/federation/search", [("text", "audit-probe")])
    get(fed, "/v1/federation/search", [("text", "audit-probe")], tok=fed.mallory)
    get(fed, f"/v1/federation/leaves/leaf-a/v1/sessions/{fed.a.sids[2]}/export", {"format": "text"})
    drain(fed.a.settings, [fed.a.settings.topic_events])
    rows = asyncio.run(
        fetch_all(
            fed.a.settings.postgres_dsn.get(),
            "SELECT body FROM events WHERE body->>'event' = 'federation.read'",
        )
    )
    import orjson

    events = [orjson.loads(r["body"]) if isinstance(r["body"], str) else r["body"] for r in rows]
    probes = [e for e in events if ["text", "audit-probe"] in e["params"]]
    assert {(e["root_user"], e["allowed"]) for e in probes} == {("alice", True), ("mallory", False)}
    alice = next(e for e in probes if e["root_user"] == "alice")
    assert alice["root_cluster"] == "root"
    assert alice["root_roles"] == ["auditor"]
    assert alice["tenant"] == fed.a.settings.tenant
    assert alice["route"] == "/v1/search"
    export = [e for e in events if e["route"] == f"/v1/sessions/{fed.a.sids[2]}/export"]
    assert export
    assert export[-1]["sid"] == fed.a.sids[2]


def test_join_tokens_expire_and_are_single_use(fed: Federation, tmp_path: Path) -> None:
    home = tmp_path / "joiner"
    home.mkdir()
    joiner = Settings(home=home)
    tok = cli(fed.root, "federation", "token", "--leaf", "leaf-c", "--ttl", "1s").stdout.strip()
    time.sleep(1.5)
    with pytest.raises(ValidationError, match="join token expired"):
        join_root(joiner, fed.base, tok, None)
    tok = cli(fed.root, "federation", "token", "--leaf", "leaf-c").stdout.strip()
    join_root(joiner, fed.base, tok, None)
    with pytest.raises(ValidationError, match="already used"):
        join_root(joiner, fed.base, tok, None)
    # A root that is not the one the token pins (here: a wrong pin) is not trusted.
    tok = cli(fed.root, "federation", "token", "--leaf", "leaf-d").stdout.strip()
    with pytest.raises(ValidationError, match="does not match the token's pin"):
        join_root(joiner, fed.base, tok.rsplit(".", 1)[0] + "." + "0" * 64, None)
    with pytest.raises(ValidationError, match="unknown"):
        join_root(joiner, fed.base, "svj_nosuchtoken." + "0" * 64, None)


async def _dial(leaf_files: LeafFiles, port: int) -> str:
    """Open a tunnel with these files; what happened ("open", or why it failed)."""
    ctx = pki.client_context(leaf_files.cert, leaf_files.key, leaf_files.root_ca)
    try:
        async with connect(f"wss://127.0.0.1:{port}/v1/tunnel", ssl=ctx, open_timeout=10) as ws:
            try:
                await asyncio.wait_for(ws.recv(), 3)
            except TimeoutError:
                return "open"
            except ConnectionClosed as exc:
                return f"closed: {exc.rcvd.reason if exc.rcvd else exc}"
            return "open"
    except (ssl.SSLError, OSError, InvalidHandshake, ConnectionClosed) as exc:
        return f"refused: {type(exc).__name__}: {exc}"


def test_a_certificate_from_another_root_is_refused_and_rotation_revokes_the_old_one(
    fed: Federation, tmp_path: Path
) -> None:
    files = LeafFiles.of(fed.b.settings)
    port = int(files.state()["tunnel"].rsplit(":", 1)[1])
    # Another root's CA signs a certificate for the same leaf name.
    now = dt.datetime.now(dt.UTC)
    other_key, other_ca = pki.make_ca_pair("other-root", now=now)
    key = pki.new_key()
    cert = pki.sign_leaf_csr(
        other_key, other_ca, pki.make_csr("leaf-b", key), "leaf-b", now=now, ttl_s=3600
    )
    rogue = LeafFiles(tmp_path / "rogue")
    rogue.save(state=files.state(), key=key, cert=cert, root_ca=files.root_ca.read_bytes())
    outcome = asyncio.run(_dial(rogue, port))
    assert outcome.startswith("refused") or outcome.startswith("closed"), outcome
    # Rotation: a new certificate; once the tunnel worker is back on it, the old one is dead.
    old = LeafFiles(tmp_path / "old")
    old.save(
        state=files.state(),
        key=files.key.read_bytes(),
        cert=files.cert.read_bytes(),
        root_ca=files.root_ca.read_bytes(),
    )
    old_serial = pki.cert_info(files.cert.read_bytes()).serial
    out = cli(fed.b.settings, "federation", "rotate").stdout
    new_serial = pki.cert_info(files.cert.read_bytes()).serial
    assert new_serial != old_serial
    assert new_serial in out
    wait_connected(fed.base, fed.alice, {"leaf-b"})
    deadline = time.monotonic() + 30
    while (outcome := asyncio.run(_dial(old, port))) == "open" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "revoked" in outcome, outcome
    wait_connected(fed.base, fed.alice, {"leaf-b"})
    r = get(fed, "/v1/federation/sessions", {"leaf": "leaf-b"})
    assert r.status_code == 200
    assert r.json()["partial"] is False


def test_the_web_console_on_the_root_lists_searches_and_replays_its_leaves(
    fed: Federation,
) -> None:
    from tests.integration.console_support import chromium, login, player_ready, player_screen, shot

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        login(page, fed.base, fed.alice)
        # On a root the nav offers the leaves; "all leaf clusters" lists both, newest first.
        page.wait_for_selector("#leaf-scope")
        page.select_option("#leaf-scope", "*")
        page.wait_for_selector("#leaves")
        page.wait_for_function(
            "() => document.querySelectorAll('table.sessions tbody tr').length === 5"
        )
        leaves = page.locator("table.sessions tbody td.leaf").all_inner_texts()
        assert leaves == ["leaf-a", "leaf-b", "leaf-a", "leaf-b", "leaf-a"]
        assert "leaf-a ok (3)" in page.inner_text("#leaves")
        shot(page, "federation-sessions")
        # A search hit opens the leaf's session through the root, at the hit.
        page.goto(f"{fed.base}/ui/#/search?q={MARK}%20leaf-b%201")
        page.wait_for_selector("li.hit a.open")
        assert "leaf leaf-b" in page.inner_text("li.hit .meta")
        shot(page, "federation-search")
        page.click("li.hit a.open")
        player_ready(page)
        assert page.inner_text("#leaf") == "leaf leaf-b"
        assert any(f"{MARK} leaf-b 1" in line for line in player_screen(page))
        assert page.locator("#share").count() == 0  # share links are the leaf's to make
        shot(page, "federation-player")
        # One leaf only: the other's sessions are not listed.
        page.goto(f"{fed.base}/ui/#/sessions")
        page.select_option("#leaf-scope", "leaf-b")
        page.wait_for_function(
            "() => document.querySelectorAll('table.sessions tbody tr').length === 2"
        )
        assert set(page.locator("table.sessions tbody td.leaf").all_inner_texts()) == {"leaf-b"}
        # A user the leaves map to nothing sees nothing, and is told which leaves said so.
        page.evaluate(f"() => sessionStorage.setItem('sv.token', '{fed.mallory}')")
        page.reload()
        page.wait_for_selector("#leaves")
        assert "no access" in page.inner_text("#leaves")
        assert page.locator("table.sessions tbody tr").count() == 0
