"""Issue 3's secret check across every place an audit event can end up: the Secret value of
create_secret.json, posted through the real webhook, must appear nowhere in PostgreSQL,
OpenSearch, search exports (CLI json/csv), or the output of a SIEM sink in any format."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from ingest.kube_audit import secret_values
from sessionvault.settings import Settings
from siem.config import parse_siem_config
from storage import pg
from storage.search.opensearch import OpenSearchStore
from storage.search.reindex import reindex
from tests.integration.api_support import make_token, serve
from tests.integration.conftest import env_for
from tests.integration.import_support import cli, drain, dump_tables
from tests.integration.persist_helpers import group_lag
from tests.integration.siem_support import running_sink
from tests.integration.test_kube_webhook import event_list, fixture_events

SINK_FORMATS = ("native", "ocsf", "ecs", "cef")


def _opensearch_documents(settings: Settings) -> str:
    async def run() -> str:
        store = OpenSearchStore(settings.opensearch_url, prefix=settings.opensearch_index_prefix)
        conn = await pg.connect(settings.postgres_dsn.get())
        try:
            report = await reindex(conn, store)
            store.refresh()
            hits = store.search({"query": {"match_all": {}}, "size": 1000})["hits"]["hits"]
        finally:
            await conn.close()
            store.close()
        assert hits, f"reindex indexed nothing: {report}"
        return "\n".join(orjson.dumps(h["_source"]).decode() for h in hits)

    return asyncio.run(run())


def _sink_output(settings: Settings, fmt: str, out: Path) -> str:
    cfg = parse_siem_config(
        f"""
[[sink]]
name = "secrets-{fmt}-{settings.tenant[-8:]}"
type = "jsonl"
format = "{fmt}"
path = "{out}"
""".encode()
    ).sinks[0]
    with running_sink(settings, cfg) as run:
        run.wait(lambda: out.exists() and len(out.read_bytes().splitlines()) >= 3, 60, "lines")
        run.wait(
            lambda: group_lag(settings, cfg.group_id).get(settings.topic_events) == 0,
            30,
            "sink committed lag 0",
        )
    return out.read_text(errors="replace")


def test_secret_value_reaches_no_store_index_export_or_sink_format(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = dataclasses.replace(settings, opensearch_index_prefix=f"sec-{uuid.uuid4().hex[:10]}")
    events = fixture_events()
    secrets = secret_values(events)
    # The oracle is real: the fixture carries the secret, as stored and base64-decoded.
    assert "31b4d4b7-0026-4c27-bb0b-499d6df85dbb" in secrets
    token = make_token(settings, clusters=["prod"])
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        resp = http.post(
            "/v1/kube/audit/prod",
            content=event_list(events),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert resp.status_code == 200, resp.text
        drain(settings, [settings.topic_events])
        api_search = http.get(
            "/v1/search",
            params={"since": "2018-01-01T00:00:00Z", "limit": 100},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert api_search.status_code == 200, api_search.text
        assert len(api_search.json()["hits"]) == 3

    env = env_for(settings)
    exports = {
        f: cli(env, "search", "--since", "2018-01-01T00:00:00Z", "--format", f).stdout.decode()
        for f in ("json", "csv", "table")
    }
    assert all("sysdig-agent" in text for text in exports.values())  # the events are there
    places: dict[str, str] = {
        "postgresql": "\n".join("\n".join(rows) for rows in dump_tables(settings).values()),
        "opensearch": _opensearch_documents(settings),
        "api search": api_search.text,
        **{f"search export ({f})": text for f, text in exports.items()},
        **{
            f"siem sink ({fmt})": _sink_output(settings, fmt, tmp_path / f"{fmt}.jsonl")
            for fmt in SINK_FORMATS
        },
        "logs": "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records),
    }
    assert "sysdig-agent" in places["opensearch"]
    for where, text in places.items():
        assert text, f"nothing captured from {where}"
        for value in secrets:
            assert value not in text, f"secret value found in {where}"
