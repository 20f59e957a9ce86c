"""Every route of the OpenAPI document x every kind of token, against the real API server and
real data: one read rule (:meth:`storage.tokens.Principal.may_see`) decides what each token
sees, on every route alike.

The data: tenant A has an SSH session, kubectl exec sessions in clusters ``prod`` and ``dev``
and kube.request events in both; tenant B has the same shapes. The tokens: a tenant token (all
scopes), one bound to cluster ``prod``, a read-only one, a webhook-only one, a revoked one, an
expired one, one of tenant B, a share link to tenant A's SSH session, and none at all.

A route added to the API without a row here fails the test: the matrix must cover it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from ingest.sdk import AuditEmitter, SessionRecorder
from replay.evidence import verify_bundle
from schemas.models import SessionInfo
from sessionvault.settings import Settings
from storage import pg
from storage.keyring import KeyFile, key_file_path, parse_public_keys
from storage.tokens import create_share, create_token, revoke_token
from tests.integration.api_support import serve
from tests.integration.import_support import drain

STARTED = "2026-11-20T09:00:00.000Z"
WINDOW = {"since": "2026-11-19T00:00:00Z", "until": "2026-11-22T00:00:00Z"}
TOKEN_KINDS = (
    "tenant", "cluster", "readonly", "webhook", "revoked", "expired", "other", "share", "none"
)  # fmt: skip


@dataclass(frozen=True)
class World:
    a: str
    b: str
    sids: dict[str, str]  # ssh, prod, dev (tenant A); b_ssh (tenant B)
    tokens: dict[str, str | None]
    keys: KeyFile


def _session(settings: Settings, line: bytes, **info: Any) -> str:
    rec = SessionRecorder(settings, SessionInfo(STARTED, 80, 24, user="alice", **info))
    rec.output(line)
    assert rec.close(flush_timeout_s=30)
    return rec.sid


def _events(settings: Settings, tag: str) -> None:
    em = AuditEmitter(settings)
    for i, cluster in enumerate(["prod", "dev"]):
        em.emit(
            {
                "event": "kube.request",
                "code": "T3009I",
                "uid": f"{tag}-kr-{cluster}",
                "time": f"2026-11-20T10:00:0{i}.000Z",
                "user": "alice",
                "kubernetes_cluster": cluster,
                "verb": "GET",
                "request_path": f"/api/v1/namespaces/{tag}/pods",
                "resource_kind": "pods",
                "resource_namespace": tag,
            }
        )
    em.emit(
        {
            "event": "session.command",
            "uid": f"{tag}-ssh-cmd",
            "time": "2026-11-20T10:00:05.000Z",
            "user": "alice",
            "server_id": "web-1",
            "path": "/usr/bin/id",
        }
    )
    assert em.close(timeout_s=30)


async def _tokens(dsn: str, a: str, b: str, shared_sid: str) -> dict[str, str | None]:
    conn = await pg.connect(dsn)
    try:
        out: dict[str, str | None] = {"none": None}
        out["tenant"], owner = await create_token(conn, a, scopes=("read", "webhook", "import"))
        out["share"], _ = await create_share(
            conn, owner, shared_sid, expires_at=datetime.now(UTC) + timedelta(hours=1)
        )
        out["cluster"], _ = await create_token(
            conn, a, scopes=("read", "webhook"), clusters=("prod",)
        )
        out["readonly"], _ = await create_token(conn, a, scopes=("read",))
        out["webhook"], _ = await create_token(conn, a, scopes=("webhook",))
        out["revoked"], revoked = await create_token(conn, a, scopes=("read", "webhook"))
        assert await revoke_token(conn, a, revoked.token_id)
        out["expired"], _ = await create_token(
            conn,
            a,
            scopes=("read", "webhook"),
            # Days, not a minute, in the past: PostgreSQL judges expiry by its own clock, and
            # under injected dates (make test-dates) the server's clock can lag this process's
            # by as long as the suite ran before the server started (it failed once by that).
            expires_at=datetime.now(UTC) - timedelta(days=2),
        )
        out["other"], _ = await create_token(conn, b, scopes=("read", "webhook"))
        return out
    finally:
        await conn.close()


@pytest.fixture
def world(settings: Settings) -> World:
    a = settings
    b = dataclasses.replace(settings, tenant=f"{settings.tenant}-b")
    sids = {
        "ssh": _session(a, b"ssh-a-secret-words\r\n", server_id="web-1"),
        "prod": _session(a, b"kube-prod-words\r\n", kind="kube", kubernetes_cluster="prod"),
        "dev": _session(a, b"kube-dev-words\r\n", kind="kube", kubernetes_cluster="dev"),
        "b_ssh": _session(b, b"ssh-b-words\r\n", server_id="web-9"),
    }
    _events(a, "a")
    _events(b, "b")
    drain(settings)
    tokens = asyncio.run(_tokens(settings.postgres_dsn.get(), a.tenant, b.tenant, sids["ssh"]))
    return World(a.tenant, b.tenant, sids, tokens, KeyFile.create(key_file_path(a)))


# -- what each token kind is, and what it may see ------------------------------------------------


def tenant_of(w: World, kind: str) -> str:
    return w.b if kind == "other" else w.a


def visible(
    w: World, kind: str, tenant: str, kubernetes_cluster: str, sid: str | None = None
) -> bool:
    """The expected read rule, written out independently of the code under test."""
    if kind in ("revoked", "expired", "none", "webhook"):
        return False
    if kind == "share":  # its one session, nothing else
        return sid == w.sids["ssh"]
    if tenant != tenant_of(w, kind):
        return False
    return kind != "cluster" or kubernetes_cluster == "prod"


def auth_status(kind: str, *accepted: str) -> int | None:
    """401/403 when the token fails before any data is looked at, else None (``accepted``:
    the scopes the route takes, any of them)."""
    if kind in ("revoked", "expired", "none"):
        return 401
    scopes = {
        "tenant": {"read", "webhook", "import"},
        "cluster": {"read", "webhook"},
        "readonly": {"read"},
        "webhook": {"webhook"},
        "other": {"read", "webhook"},
        "share": {"share"},
    }[kind]
    return None if scopes & set(accepted) else 403


# -- one case per (route, target) ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    method: str
    route: str  # as the OpenAPI document spells it
    name: str
    request: Callable[[World], tuple[str, dict[str, Any], bytes | None]]  # path, params, body
    expect: Callable[[World, str], int]  # token kind -> status
    check: Callable[[World, str, httpx.Response], None] = lambda w, k, r: None


def _target_visible(w: World, kind: str, target: str) -> bool:
    tenant = w.b if target == "b_ssh" else w.a
    cluster = target if target in ("prod", "dev") else ""
    return visible(w, kind, tenant, cluster, w.sids[target])


def _one_session_expect(target: str) -> Callable[[World, str], int]:
    """A route that reads one session: ``read`` or the session's share link; a session the
    token may not see is 404."""

    def expect(w: World, kind: str) -> int:
        return auth_status(kind, "read", "share") or (
            200 if _target_visible(w, kind, target) else 404
        )

    return expect


def _export_case(target: str) -> Case:
    def check(w: World, kind: str, r: httpx.Response) -> None:
        if r.status_code == 200:
            assert f"{target}".encode() in r.content or b"words" in r.content
        else:
            assert b"words" not in r.content

    return Case(
        "GET",
        "/v1/sessions/{sid}/export",
        f"export-{target}",
        lambda w: (f"/v1/sessions/{w.sids[target]}/export", {"format": "text"}, None),
        _one_session_expect(target),
        check,
    )


def _bundle_case(target: str) -> Case:
    def check(w: World, kind: str, r: httpx.Response) -> None:
        if r.status_code == 200:
            report = verify_bundle(io.BytesIO(r.content), w.keys.public_keys())
            assert report.ok, report.problems
            assert report.sid == w.sids[target]
        else:
            assert b"words" not in r.content

    return Case(
        "GET",
        "/v1/sessions/{sid}/bundle",
        f"bundle-{target}",
        lambda w: (f"/v1/sessions/{w.sids[target]}/bundle", {}, None),
        _one_session_expect(target),
        check,
    )


def _webhook_case(cluster: str) -> Case:
    def expect(w: World, kind: str) -> int:
        denied = auth_status(kind, "webhook")
        if denied:
            return denied
        return 403 if kind == "cluster" and cluster != "prod" else 200

    body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": []})
    return Case(
        "POST",
        "/v1/kube/audit/{cluster}",
        f"webhook-{cluster}",
        lambda w: (f"/v1/kube/audit/{cluster}", {}, body),
        expect,
    )


def _read_expect(w: World, kind: str) -> int:
    return auth_status(kind, "read") or 200


def _check_search(w: World, kind: str, r: httpx.Response) -> None:
    if r.status_code != 200:
        return
    hits = r.json()["hits"]
    for h in hits:
        assert visible(w, kind, h["tenant"], h["kubernetes_cluster"]), (kind, h)
    seen = {(h["kind"], h["kubernetes_cluster"]) for h in hits}
    # Everything visible is there (so the check above cannot pass on an empty answer).
    expected = {("event", "prod"), ("output", "prod")}
    if kind != "cluster":
        expected |= {("event", "dev"), ("output", "dev"), ("event", ""), ("output", "")}
    if kind == "other":  # tenant B recorded no kubectl sessions
        expected -= {("output", "dev"), ("output", "prod")}
    assert seen == expected, (kind, seen)


def _check_timeline(w: World, kind: str, r: httpx.Response) -> None:
    if r.status_code != 200:
        return
    entries = r.json()["entries"]
    clusters = {e["cluster"] for e in entries}
    assert clusters == ({"prod"} if kind == "cluster" else {"prod", "dev"}), (kind, entries)
    sids = {e["sid"] for e in entries if e["kind"] == "session"}
    mine = {w.sids["prod"]} | (set() if kind == "cluster" else {w.sids["dev"]})
    assert sids == (set() if kind == "other" else mine), (kind, entries)
    namespaces = {e["namespace"] for e in entries if e["kind"] == "request"}
    assert namespaces == {"b" if kind == "other" else "a"}


def _session_case(suffix: str, target: str, params: dict[str, Any]) -> Case:
    """A route of the console's player (one session), see :func:`_one_session_expect`."""

    def check(w: World, kind: str, r: httpx.Response) -> None:
        if r.status_code != 200:
            assert b"words" not in r.content
        elif suffix == "":
            assert r.json()["sid"] == w.sids[target]
        elif suffix in ("/seek", "/frames"):
            data = b"".join(base64.b64decode(f[2]) for f in r.json()["frames"])
            assert b"words" in data, (kind, target, r.json())

    return Case(
        "GET",
        "/v1/sessions/{sid}" + suffix,
        f"session{suffix or '-detail'}-{target}",
        lambda w: (f"/v1/sessions/{w.sids[target]}{suffix}", dict(params), None),
        _one_session_expect(target),
        check,
    )


def _check_list(w: World, kind: str, r: httpx.Response) -> None:
    if r.status_code != 200:
        return
    got = {s["sid"] for s in r.json()["sessions"]}
    want = {sid for name, sid in w.sids.items() if _target_visible(w, kind, name)}
    assert got == want, (kind, got, want)


def _share_case(target: str) -> Case:
    def expect(w: World, kind: str) -> int:
        denied = auth_status(kind, "read")
        if denied:
            return denied
        return 200 if _target_visible(w, kind, target) else 404

    return Case(
        "POST",
        "/v1/shares",
        f"share-{target}",
        lambda w: ("/v1/shares", {}, orjson.dumps({"sid": w.sids[target]})),
        expect,
    )


def _check_whoami(w: World, kind: str, r: httpx.Response) -> None:
    if r.status_code == 200:
        assert r.json()["tenant"] == tenant_of(w, kind), (kind, r.text)


def _check_keys(w: World, kind: str, r: httpx.Response) -> None:
    # Public keys only: the signing key's id and its public half, never the key file.
    doc = r.json()
    assert doc["active"] == w.keys.signing_kid
    assert parse_public_keys(doc) == w.keys.public_keys()
    assert "key" not in r.text.replace('"keys"', "")


def _check_metrics(w: World, kind: str, r: httpx.Response) -> None:
    # Public, so it names no tenant, session or user: route templates and counts only.
    assert "sessionvault_http_requests" in r.text
    for secret in (w.a, w.b, *w.sids.values(), "alice"):
        assert secret not in r.text, secret


def _fixed_request(path: str) -> Callable[[World], tuple[str, dict[str, Any], bytes | None]]:
    return lambda w: (path, {}, None)


def _check_not_a_root(w: World, kind: str, r: httpx.Response) -> None:
    if r.status_code == 404:
        assert "not a federation root" in r.json()["detail"], r.text


def _check_share_self(w: World, kind: str, r: httpx.Response) -> None:
    if r.status_code == 200:
        assert r.json()["sid"] == w.sids["ssh"], r.text


CASES = [
    Case(
        "GET",
        "/v1/whoami",
        "whoami",
        lambda w: ("/v1/whoami", {}, None),
        _read_expect,
        _check_whoami,
    ),
    Case(
        "GET",
        "/v1/sessions",
        "sessions",
        lambda w: ("/v1/sessions", {"limit": 50}, None),
        _read_expect,
        _check_list,
    ),
    Case(
        "GET",
        "/v1/shares/self",
        "share-self",
        lambda w: ("/v1/shares/self", {}, None),
        lambda w, k: auth_status(k, "share") or 200,
        _check_share_self,
    ),
    *(_share_case(t) for t in ("ssh", "prod", "b_ssh")),
    *(
        _session_case(suffix, t, params)
        for suffix, params in (
            ("", {}),
            ("/seek", {"at_ms": 10**9}),
            ("/frames", {"seq": 0}),
            ("/markers", {}),
        )
        for t in ("ssh", "prod", "dev", "b_ssh")
    ),
    Case("GET", "/healthz", "healthz", lambda w: ("/healthz", {}, None), lambda w, k: 200),
    Case(
        "GET",
        "/metrics",
        "metrics",
        lambda w: ("/metrics", {}, None),
        lambda w, k: 200,
        _check_metrics,
    ),
    Case(
        "GET", "/v1/keys", "keys", lambda w: ("/v1/keys", {}, None), lambda w, k: 200, _check_keys
    ),
    _webhook_case("prod"),
    _webhook_case("dev"),
    Case(
        "GET",
        "/v1/kube/timeline",
        "timeline",
        lambda w: ("/v1/kube/timeline", dict(WINDOW), None),
        _read_expect,
        _check_timeline,
    ),
    Case(
        "GET",
        "/v1/search",
        "search",
        lambda w: ("/v1/search", {**WINDOW, "limit": 500}, None),
        _read_expect,
        _check_search,
    ),
    *(_export_case(t) for t in ("ssh", "prod", "dev", "b_ssh")),
    *(_bundle_case(t) for t in ("ssh", "prod", "dev", "b_ssh")),
    # This installation is no federation root: its federated routes authenticate like every
    # read route, then say so (tests/integration/test_federation.py runs a real root).
    *(
        Case(
            "GET",
            route,
            f"federation-{route.rsplit('/', 1)[-1]}",
            _fixed_request(path),
            lambda w, k: auth_status(k, "read") or 404,
            _check_not_a_root,
        )
        for route, path in (
            ("/v1/federation/leaves", "/v1/federation/leaves"),
            ("/v1/federation/search", "/v1/federation/search"),
            ("/v1/federation/sessions", "/v1/federation/sessions"),
            ("/v1/federation/kube/timeline", "/v1/federation/kube/timeline"),
            (
                "/v1/federation/leaves/{leaf}/{path}",
                "/v1/federation/leaves/leaf-a/v1/sessions/x/export",
            ),
        )
    ),
    Case(
        "POST",
        "/v1/federation/join",
        "federation-join",
        lambda w: (
            "/v1/federation/join",
            {},
            orjson.dumps({"token": "svj_x", "csr": ""}),
        ),
        lambda w, k: 404,  # the join token is the credential; no root here
        _check_not_a_root,
    ),
]


def test_every_route_times_every_token_kind_answers_by_the_one_read_rule(
    settings: Settings, world: World
) -> None:
    with serve(dataclasses.replace(settings, opensearch_url="")) as base:
        spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
        routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
        assert routes == {(c.method, c.route) for c in CASES}, "a route without matrix rows"
        # /docs offers an Authorize button: the bearer scheme is declared and required.
        schemes = spec["components"]["securitySchemes"]
        [bearer] = [name for name, s in schemes.items() if s.get("scheme") == "bearer"]
        for path, ops in spec["paths"].items():
            for op in ops.values():
                public = path in ("/healthz", "/metrics", "/v1/keys", "/v1/federation/join")
                wanted: list[dict[str, list[str]]] = [] if public else [{bearer: []}]
                assert op.get("security", []) == wanted, path
        matrix: dict[tuple[str, str], int] = {}
        wrong: list[str] = []
        with httpx.Client(base_url=base, timeout=30) as client:
            for case in CASES:
                path, params, body = case.request(world)
                for kind in TOKEN_KINDS:
                    token = world.tokens[kind]
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    if body is not None:
                        headers["Content-Type"] = "application/json"
                    r = client.request(
                        case.method, path, params=params, content=body, headers=headers
                    )
                    matrix[(case.name, kind)] = r.status_code
                    want = case.expect(world, kind)
                    if r.status_code != want:
                        wrong.append(f"{case.name} x {kind}: {r.status_code}, want {want}")
                        continue
                    case.check(world, kind, r)
    assert not wrong, "\n".join(wrong)
