"""``--verb`` is the Kubernetes verb, on real servers, for both sources of ``kube.request``:
audit events of every verb posted to the webhook (the API server's verb) and proxy events
carrying only the HTTP method and path (derived). Searched through the API on PostgreSQL and
OpenSearch and through the CLI; then stored rows written before migration 009 (the column held
the HTTP method) are re-derived by the backfill ``migrate`` runs."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import httpx
import orjson

from schemas.kube import KUBE_VERBS
from sessionvault.settings import Settings
from storage import pg
from tests.integration.api_support import make_token, serve
from tests.integration.import_support import cli, drain, fetch
from tests.integration.search_front_support import _reindex
from tests.integration.siem_support import produce_events
from tests.integration.test_kube_webhook import event_list
from tests.kube_verbs_support import CASES, audit_event, expected, proxy_event

WANTED = [*KUBE_VERBS, "exec", "log", "finalize"]


def oracle(verb: str) -> set[str]:
    """Which cases a search for ``verb`` must find: the API server's verb or subresource."""
    return {str(i) for i in range(len(CASES)) if verb in expected(i)}


def case_of(hit: dict[str, Any]) -> str:
    body = hit["fields"]
    return (
        str(body["uid"]).removeprefix("proxy-")
        if body["uid"].startswith("proxy-")
        else (str(int(body["kube_audit"]["auditID"][:8], 16)))
    )


def by_verb(base: str, token: str) -> dict[str, dict[str, set[str]]]:
    """verb -> source (webhook / proxy) -> cases found by ``GET /v1/search?verb=``."""
    out: dict[str, dict[str, set[str]]] = {}
    for verb in WANTED:
        r = httpx.get(
            f"{base}/v1/search",
            params={"verb": verb, "limit": 1000, "event": "kube.request"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        found: dict[str, set[str]] = {"webhook": set(), "proxy": set()}
        for h in r.json()["hits"]:
            source = "proxy" if h["fields"]["uid"].startswith("proxy-") else "webhook"
            found[source].add(case_of(h))
        out[verb] = found
    return out


def test_verb_filters_on_the_kubernetes_verb_for_webhook_and_proxy_events_everywhere(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    token = make_token(settings, scopes=("webhook", "read"))
    auth = {"Authorization": f"Bearer {token}"}
    with serve(settings) as base:
        body = event_list([audit_event(i) for i in range(len(CASES))])
        r = httpx.post(f"{base}/v1/kube/audit/minikube", content=body, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
    produce_events(settings, [proxy_event(i, settings.tenant, "gke") for i in range(len(CASES))])
    drain(settings, [settings.topic_events])
    prefix = f"t{uuid.uuid4().hex[:10]}"
    asyncio.run(_reindex(settings.postgres_dsn.get(), settings.opensearch_url, prefix))

    want = {v: {"webhook": oracle(v), "proxy": oracle(v)} for v in WANTED}
    for served in (
        dataclasses.replace(settings, opensearch_url=""),
        dataclasses.replace(settings, opensearch_index_prefix=prefix),
    ):
        with serve(served) as base:
            assert by_verb(base, token) == want
            # Upper case is the same verb, never Teleport's HTTP method.
            r = httpx.get(f"{base}/v1/search", params={"verb": "DELETE"}, headers=auth)
            assert {case_of(h) for h in r.json()["hits"]} == oracle("delete")
    # Teleport's field stays what it was: the HTTP method.
    rows = fetch(
        settings, "SELECT body FROM events WHERE tenant = $1 AND uid = 'proxy-1'", settings.tenant
    )
    assert orjson.loads(str(rows[0]["body"]))["verb"] == "GET"
    # The CLI's --verb is the same filter.
    out = cli(sv_env, "search", "--verb", "list", "--format", "json", "--backend", "postgres")
    hits = [h for line in out.stdout.splitlines() for h in orjson.loads(line)["hits"]]
    assert sorted(case_of(h) for h in hits) == sorted([*oracle("list"), *oracle("list")])


def test_rows_stored_before_migration_009_get_their_kubernetes_verbs_from_the_backfill(
    settings: Settings,
) -> None:
    produce_events(settings, [proxy_event(i, settings.tenant, "gke") for i in range(len(CASES))])
    drain(settings, [settings.topic_events])
    dsn = settings.postgres_dsn.get()

    async def as_before_009() -> None:
        conn = await pg.connect(dsn)
        try:
            await conn.execute(
                "UPDATE events SET verb = body->>'verb', kubernetes_subresource = ''"
                " WHERE event = 'kube.request'"
            )
            await conn.execute("UPDATE sv_backfills SET done_at = NULL")
        finally:
            await conn.close()

    def columns() -> dict[str, tuple[str, str]]:
        rows = fetch(
            settings,
            "SELECT uid, verb, kubernetes_subresource FROM events WHERE tenant = $1",
            settings.tenant,
        )
        return {str(r["uid"]): (str(r["verb"]), str(r["kubernetes_subresource"])) for r in rows}

    asyncio.run(as_before_009())
    assert columns()["proxy-1"] == ("GET", "")
    applied = asyncio.run(pg.migrate(dsn))
    assert [a for a in applied if a.startswith("backfill kube_verbs")], applied
    assert columns() == {f"proxy-{i}": expected(i) for i in range(len(CASES))}
    # Done once: the next migrate runs nothing.
    assert asyncio.run(pg.migrate(dsn)) == []


def test_an_opensearch_copy_built_by_older_document_rules_is_not_complete(
    settings: Settings,
) -> None:
    from storage.search.model import DOCUMENT_VERSION
    from storage.search.opensearch import MARKER_ID, OpenSearchStore

    store = OpenSearchStore(settings.opensearch_url, prefix=f"t{uuid.uuid4().hex[:10]}")
    try:
        store.ensure_templates()
        store.set_marker({"events": 0, "segments": 0})
        marker = store.marker()
        assert marker is not None
        assert marker["document_version"] == DOCUMENT_VERSION
        # The marker an index built before the Kubernetes-verb rule wrote (no version).
        store._client.index(
            index=store.meta_index, id=MARKER_ID, body={"events": 0}, params={"refresh": "true"}
        )
        assert store.marker() is None  # search falls back; the index worker rebuilds
    finally:
        store.close()
