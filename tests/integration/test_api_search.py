"""Compliance search front ends on real servers: ``GET /v1/search`` under real uvicorn (tenant
from the token only, cluster-bound tokens, cursors, both backends and the fallback, OpenAPI
spec) and ``sessionvault search`` (table/json/csv, --all-pages, replay links that work)."""

from __future__ import annotations

import csv
import dataclasses
import io
import subprocess
import uuid
from typing import Any

import httpx
import orjson
import pytest

from sessionvault.settings import Settings
from tests.integration.api_support import make_token, serve
from tests.integration.import_support import SESSIONVAULT, cli
from tests.integration.search_front_support import Corpus, build, index_into_opensearch

PROMPT = b"\x1b[01;32mroot@web-1\x1b[00m:~# "


@pytest.fixture
def corpus(settings: Settings) -> Corpus:
    return build(settings)


def get(base: str, token: str, path: str, params: Any = None) -> httpx.Response:
    return httpx.get(
        f"{base}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def pages(base: str, token: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every page of a search, following next_cursor."""
    out = []
    cursor: str | None = None
    while True:
        r = get(base, token, "/v1/search", [*params, *([("cursor", cursor)] if cursor else [])])
        assert r.status_code == 200, r.text
        body = r.json()
        out.append(body)
        cursor = body["next_cursor"]
        if cursor is None:
            return out


def test_api_search_finds_typed_command_in_output_and_events_with_working_replay_links(
    settings: Settings, corpus: Corpus
) -> None:
    pg_only = dataclasses.replace(settings, opensearch_url="")
    token = make_token(settings, scopes=("read",))
    with serve(pg_only) as base:
        r = get(base, token, "/v1/search", {"text": "RM -RF /srv/cache"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["backend"] == "postgres"
        assert body["reason"] == "OpenSearch is not configured"
        assert r.headers["X-Search-Backend"] == "postgres"
        hits = body["hits"]
        kinds = sorted((h["kind"], h["sid"]) for h in hits)
        assert kinds == [("event", corpus.sid_a), ("output", corpus.sid_a)]
        assert {h["tenant"] for h in hits} == {settings.tenant}
        out = next(h for h in hits if h["kind"] == "output")
        assert out["text"].startswith("root@web-1:~# rm -rf /srv/cache")
        # The line was complete (backspaces resolved) at 2.5 s into the session.
        assert abs(out["offset_ms"] - 2500) <= 1000
        assert out["replay"].startswith(f"sessionvault play {corpus.sid_a} --start-at ")
        # The API link replays from the hit (asciicast-v2 seeking like play: the screen up to
        # the moment at time 0, later frames after it).
        link = get(base, token, out["replay_api"])
        assert link.status_code == 200, link.text
        frames = [orjson.loads(line) for line in link.content.splitlines()[1:]]
        at_moment = [d for t, _c, d in frames if t == 0]
        assert at_moment[-1] == "che\r\n"  # the screen as it was when the command was complete
        assert all(t > 0 for t, _c, _d in frames[len(at_moment) :])

        # Metacharacters are literal: only the line holding them matches.
        for term in ("100%_done", '*? "AND"', "'x'; \\", "%", "_"):
            r = get(base, token, "/v1/search", {"text": term, "kind": "output"})
            assert [h["text"] for h in r.json()["hits"]] == ["100%_done *? \"AND\" 'x'; \\"], term
        r = get(base, token, "/v1/search", {"text": "'; DROP TABLE events; --"})
        assert r.status_code == 200
        assert r.json()["hits"] == []


def test_api_tenant_comes_from_the_token_and_cluster_bound_tokens_see_only_their_clusters(
    settings: Settings, corpus: Corpus
) -> None:
    pg_only = dataclasses.replace(settings, opensearch_url="")
    token_a = make_token(settings, scopes=("read",))
    prod_only = make_token(settings, scopes=("read",), clusters=("prod",))
    with serve(pg_only) as base:
        # A tenant parameter is not part of the API; the token's tenant wins.
        r = get(base, token_a, "/v1/search", {"text": "rm -rf", "tenant": corpus.b.tenant})
        assert {h["tenant"] for h in r.json()["hits"]} == {settings.tenant}
        assert corpus.sid_b not in r.text
        everything = get(base, token_a, "/v1/search", {"verb": "delete", "limit": 1000}).json()
        assert sorted(h["kubernetes_cluster"] for h in everything["hits"]) == [
            "dev",
            "dev",
            "prod",
            "prod",
            "prod",
        ]
        scoped = get(base, prod_only, "/v1/search", {"verb": "delete"}).json()
        assert [h["id"] for h in scoped["hits"]] == ["kr-4", "kr-2", "kr-0"]
        # Asking for another cluster does not widen the scope.
        r = get(base, prod_only, "/v1/search", {"kubernetes_cluster": "dev"})
        assert r.status_code == 200
        assert r.json()["hits"] == []


def test_api_cursor_pages_never_skip_or_repeat_and_foreign_cursors_are_refused(
    settings: Settings, corpus: Corpus
) -> None:
    pg_only = dataclasses.replace(settings, opensearch_url="")
    token = make_token(settings, scopes=("read",))
    with serve(pg_only) as base:
        full = get(base, token, "/v1/search", {"user": "alice", "limit": 1000}).json()["hits"]
        assert len(full) >= 10
        paged = pages(base, token, [("user", "alice"), ("limit", "3")])
        assert all(len(p["hits"]) <= 3 for p in paged)
        assert [h["id"] for p in paged for h in p["hits"]] == [h["id"] for h in full]
        cursor = paged[0]["next_cursor"]
        other = get(base, token, "/v1/search", {"user": "bob", "cursor": cursor})
        assert other.status_code == 400
        assert "different query" in other.json()["detail"]
        assert get(base, token, "/v1/search", {"cursor": "not-a-cursor"}).status_code == 400
        assert get(base, token, "/v1/search", {"limit": 0}).status_code == 422
        assert get(base, token, "/v1/search", {"since": "yesterday"}).status_code == 400
        assert httpx.get(f"{base}/v1/search", timeout=10).status_code == 401


def test_api_answers_from_opensearch_with_the_same_hits_and_falls_back_saying_so(
    settings: Settings, corpus: Corpus
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    index_into_opensearch(corpus, prefix)
    with_os = dataclasses.replace(settings, opensearch_index_prefix=prefix)
    pg_only = dataclasses.replace(settings, opensearch_url="")
    dead_os = dataclasses.replace(settings, opensearch_url="http://127.0.0.1:9")
    token = make_token(settings, scopes=("read",))
    queries: list[dict[str, Any]] = [
        {"text": "rm -rf", "limit": 1000},
        {"user": "alice", "limit": 1000},
        {"verb": "delete", "kubernetes_cluster": "prod"},
        {"text": "%_done", "kind": "output"},
    ]
    answers: dict[str, list[list[dict[str, Any]]]] = {}
    for name, s in (("opensearch", with_os), ("postgres", pg_only), ("fallback", dead_os)):
        with serve(s) as base:
            answers[name] = []
            for q in queries:
                body = get(base, token, "/v1/search", q).json()
                expected = "opensearch" if name == "opensearch" else "postgres"
                assert body["backend"] == expected, (name, body)
                if name == "fallback":
                    assert body["reason"], body
                answers[name].append(body["hits"])
    assert answers["opensearch"] == answers["postgres"] == answers["fallback"]
    assert all(answers["postgres"])  # every query found something


def test_openapi_spec_lists_the_search_route_with_its_parameters_and_no_tenant(
    settings: Settings,
) -> None:
    with serve(settings) as base:
        spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    op = spec["paths"]["/v1/search"]["get"]
    assert op["summary"] == "Search audit events and terminal output"
    names = {p["name"] for p in op["parameters"]}
    assert {"text", "kind", "user", "login", "server_id", "kubernetes_cluster", "verb"} <= names
    assert {"event", "code", "sid", "since", "until", "limit", "cursor"} <= names
    assert "tenant" not in names
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/SearchPage")
    hit = spec["components"]["schemas"]["SearchHit"]["properties"]
    assert {"replay", "replay_api", "offset_ms", "sid", "time"} <= set(hit)


def sv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return cli(env, *args)


def test_cli_search_json_table_and_all_pages_and_the_replay_command_runs(
    settings: Settings, corpus: Corpus, sv_env: dict[str, str]
) -> None:
    proc = sv(sv_env, "search", "rm -rf", "--format", "json", "--backend", "postgres")
    [page] = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert page["backend"] == "postgres"
    assert {h["sid"] for h in page["hits"]} == {corpus.sid_a}
    out = next(h for h in page["hits"] if h["kind"] == "output")
    # The replay command from the hit works as printed.
    replay = out["replay"].split()
    assert replay[:3] == ["sessionvault", "play", corpus.sid_a]
    played = sv(sv_env, *replay[1:], "--speed", "1000")
    # (Seeking fast-forwards the earlier output to rebuild the screen, then plays on.)
    assert played.stdout.endswith(b"che\r\n100%_done *? \"AND\" 'x'; \\\r\n" + PROMPT)

    table = sv(sv_env, "search", "--text", "rm -rf", "--backend", "postgres").stdout.decode()
    lines = table.splitlines()
    assert lines[0].startswith("TIME (UTC)")
    assert len(lines) == 3
    assert f"sessionvault play {corpus.sid_a} --start-at" in table
    # Stored escapes never reach the reader's terminal.
    assert "\x1b" not in table
    assert "\\x1b[31m" in table

    pg = ("--backend", "postgres")
    one = sv(sv_env, "search", "--user", "alice", "--limit", "1000", "--format", "json", *pg)
    full = [h["id"] for h in orjson.loads(one.stdout)["hits"]]
    many = sv(
        sv_env, "search", "--user", "alice", "--limit", "2", "--all-pages", "--format", "json", *pg
    )
    pages_ = [orjson.loads(line) for line in many.stdout.splitlines()]
    assert len(full) >= 10
    assert len(pages_) == (len(full) + 1) // 2
    assert [h["id"] for p in pages_ for h in p["hits"]] == full
    assert f"{len(full)} hits".encode() in many.stderr


def test_cli_search_csv_escapes_and_neutralises_formulas(
    settings: Settings, corpus: Corpus, sv_env: dict[str, str]
) -> None:
    proc = sv(
        sv_env,
        "search",
        "--sid",
        corpus.sid_csv,
        "--kind",
        "output",
        "--format",
        "csv",
        "--backend",
        "postgres",
    )
    rows = list(csv.DictReader(io.StringIO(proc.stdout.decode(), newline="")))
    texts = sorted(r["text"] for r in rows)
    assert texts == sorted(
        [
            '\'=HYPERLINK("http://x","click"),"quoted", comma',
            "'+1+1",
            "'-2",
            "'@SUM(A1)",
        ]
    )
    assert {r["sid"] for r in rows} == {corpus.sid_csv}
    assert all(r["replay"].startswith(f"sessionvault play {corpus.sid_csv}") for r in rows)


def test_cli_search_with_opensearch_down_answers_from_postgres_and_says_so(
    settings: Settings, corpus: Corpus, sv_env: dict[str, str]
) -> None:
    env = {**sv_env, "SESSIONVAULT_OPENSEARCH_URL": "http://127.0.0.1:9"}
    proc = sv(env, "search", "rm -rf", "--format", "json")
    assert orjson.loads(proc.stdout)["backend"] == "postgres"
    assert b"answered by postgres: OpenSearch is unavailable" in proc.stderr
    forced = subprocess.run(
        [SESSIONVAULT, "search", "rm -rf", "--backend", "opensearch"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert forced.returncode != 0
    assert b"OpenSearch could not answer alone (OpenSearch is unavailable" in forced.stderr
