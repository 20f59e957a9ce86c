"""A token of tenant A never sees tenant B's events or sessions, through ANY route.

The routes are not listed by hand: every GET route of the app is called with tenant A's token
and every parameter it takes filled with B's values (B's session id in the path, B's user,
cluster, session id, words and an all-time range in the query), in every export format. The
same calls with B's own token must show B's data on the data routes, so the check can fail.
Real uvicorn, real PostgreSQL (and OpenSearch holding both tenants' documents)."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from api.app import create_app
from replay.export import FORMATS
from sessionvault.settings import Settings
from tests.integration.api_support import make_token, serve
from tests.integration.search_front_support import build, index_into_opensearch

# Routes that serve tenant data; B's token must see B's data through each of them.
DATA_ROUTES = {
    "/v1/search",
    "/v1/sessions/{sid}/export",
    "/v1/kube/timeline",
    "/v1/sessions",
    "/v1/sessions/{sid}",
    "/v1/whoami",
}
# The web console's page and static assets (no tenant data, no token; checked apart below).
CONSOLE_ROUTES = {"/", "/ui/", "/ui/assets/{name}"}
# Routes only a share link's token may call: an API token gets 403 there.
SHARE_ONLY_ROUTES = {"/v1/shares/self"}


def api_routes(routes: Sequence[BaseRoute]) -> list[tuple[str, APIRoute]]:
    """The GET routes that serve the API (the console's static routes left out)."""
    found = get_routes(routes)
    assert {p for p, _ in found} >= CONSOLE_ROUTES
    return [(p, r) for p, r in found if p not in CONSOLE_ROUTES]


def get_routes(routes: Sequence[BaseRoute], prefix: str = "") -> list[tuple[str, APIRoute]]:
    """Every GET API route as (full path, route), through included routers at any depth
    (FastAPI >= 0.16x keeps an included router as one ``_IncludedRouter`` entry)."""
    out: list[tuple[str, APIRoute]] = []
    for r in routes:
        if isinstance(r, APIRoute):
            if "GET" in (r.methods or ()):
                out.append((prefix + r.path, r))
            continue
        inner = getattr(r, "original_router", None)
        if inner is not None:
            ctx = getattr(r, "include_context", None)
            out += get_routes(inner.routes, prefix + str(getattr(ctx, "prefix", "") or ""))
    return out


def _values(sid_b: str) -> dict[str, list[str]]:
    """Values to try per parameter name: B's identifiers, and ranges covering everything."""
    return {
        "sid": [sid_b],
        "user": ["mallory"],
        "cluster": ["prod"],
        "kubernetes_cluster": ["prod"],
        "server_id": ["web-9"],
        "text": ["rm -rf", "mallory"],
        "since": ["2000-01-01T00:00:00Z"],
        "until": ["2100-01-01T00:00:00Z"],
        "format": list(FORMATS),
        "kind": ["all"],
        "limit": ["1000"],
    }


def _calls(full_path: str, route: APIRoute, sid_b: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(path, query) pairs for ``route``: required parameters only, then each known one."""
    values = _values(sid_b)
    path = full_path
    for whole, name in re.findall(r"({(\w+)(?::\w+)?})", full_path):
        path = path.replace(whole, values.get(name, [sid_b])[0])
    params = route.dependant.query_params
    required = [
        (p.alias, values.get(p.alias, ["x"])[0]) for p in params if p.field_info.is_required()
    ]
    calls = [(path, required)]
    for p in params:
        for v in values.get(p.alias, []):
            base = [(k, val) for k, val in required if k != p.alias]
            calls.append((path, [*base, (p.alias, v)]))
    # Everything at once (the search route ANDs them: B's session by every attribute).
    every = {k: v for k, v in required}
    for p in params:
        if p.alias in values:
            every[p.alias] = values[p.alias][0]
    calls.append((path, list(every.items())))
    return calls


def _get(base: str, token: str, path: str, params: list[tuple[str, str]]) -> httpx.Response:
    return httpx.get(
        f"{base}{path}",
        params=tuple(params),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _leaks(body: bytes, markers: list[bytes]) -> list[bytes]:
    return [m for m in markers if m in body]


def test_no_get_route_shows_tenant_a_anything_of_tenant_b(settings: Settings) -> None:
    corpus = build(settings)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    index_into_opensearch(corpus, prefix)
    s = dataclasses.replace(settings, opensearch_index_prefix=prefix)
    b = corpus.b
    token_a = make_token(s, scopes=("read", "webhook", "import"))
    token_b = make_token(s, tenant=b.tenant, scopes=("read", "webhook", "import"))
    # What only B's data contains: its tenant, session, event uids, user and server.
    markers = [x.encode() for x in (b.tenant, corpus.sid_b, "kr-b", "exec-b", "mallory", "web-9")]

    app = create_app(s)
    routes = api_routes(app.routes)
    assert {p for p, _ in routes} >= DATA_ROUTES
    assert {re.sub(r":\w+}", "}", p) for p, _ in routes} - {"/healthz"} <= set(
        app.openapi()["paths"]
    )
    seen_by_b: set[str] = set()
    checked = 0
    with serve(s) as base:
        for full_path, route in routes:
            for path, params in _calls(full_path, route, corpus.sid_b):
                ra = _get(base, token_a, path, params)
                checked += 1
                if full_path in SHARE_ONLY_ROUTES:
                    assert ra.status_code == 403, (path, ra.text)
                    continue
                assert ra.status_code in (200, 404), (path, params, ra.status_code, ra.text)
                if corpus.sid_b in path:  # B's session itself: it does not exist for A
                    assert ra.status_code == 404, (path, params, ra.content[:300])
                # Values the request carried may be echoed ("session 'X' not found"); anything
                # else of B's is a leak.
                sent = str(ra.request.url).encode()
                unsent = [m for m in markers if m not in sent]
                assert _leaks(ra.content, unsent) == [], (path, params, ra.text[:500])
                if ra.status_code == 200 and path == "/v1/search":
                    assert all(h["tenant"] == s.tenant for h in ra.json()["hits"])
                rb = _get(base, token_b, path, params)
                if rb.status_code == 200 and _leaks(rb.content, markers):
                    seen_by_b.add(full_path)
        # Guessing: B's session id under every export format and offset is "not found",
        # exactly as for a session that does not exist.
        for fmt in FORMATS:
            for sid in (corpus.sid_b, str(uuid.uuid4())):
                r = _get(base, token_a, f"/v1/sessions/{sid}/export", [("format", fmt)])
                assert r.status_code == 404
                assert r.json() == {"detail": f"session {sid!r} not found"}
    assert seen_by_b >= DATA_ROUTES, seen_by_b  # the probes do reach B's data with B's token
    # The console's page and assets carry no data and need no token.
    with serve(s) as base:
        for path in ("/ui/", "/ui/assets/console.js"):
            assert httpx.get(f"{base}{path}", timeout=30).status_code == 200
    assert checked >= 20  # every parameter of every route was probed, not just the paths


def test_a_cluster_bound_token_sees_no_other_cluster_through_any_get_route(
    settings: Settings,
) -> None:
    corpus = build(settings)
    s = dataclasses.replace(settings, opensearch_url="")
    dev_only = make_token(s, scopes=("read",), clusters=("dev",))
    routes = api_routes(create_app(s).routes)
    prod_uids = [b'"kr-0"', b'"kr-2"', b'"kr-4"']
    with serve(s) as base:
        for full_path, route in routes:
            for path, params in _calls(full_path, route, corpus.sid_a):
                params = [(k, "prod" if v == "prod" else v) for k, v in params]
                r = _get(base, dev_only, path, params)
                if full_path in SHARE_ONLY_ROUTES:
                    assert r.status_code == 403, (path, r.text)
                    continue
                assert r.status_code in (200, 404), (path, params, r.text)
                assert _leaks(r.content, prod_uids) == [], (path, params, r.text[:500])
        found: Any = _get(base, dev_only, "/v1/search", [("verb", "delete")]).json()
        assert sorted(h["id"] for h in found["hits"]) == ["kr-1", "kr-3"]
