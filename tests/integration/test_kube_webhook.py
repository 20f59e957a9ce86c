"""The audit webhook over real HTTP (uvicorn) -> Kafka -> persist worker -> PostgreSQL.

The three real kube-apiserver audit events are posted as ONE EventList. The Secret's values
(as stored in the fixture and base64-decoded) must appear nowhere: not in any PostgreSQL
table, not in the Kafka records, not in any log line, not in what the API or the CLI returns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ingest.kube_audit import secret_values
from sessionvault.settings import Settings
from tests.integration.api_support import make_token, serve
from tests.integration.conftest import env_for
from tests.integration.import_support import cli, drain, dump_tables, fetch
from tests.integration.test_recorder_spool import consume_all

FIXTURES = sorted(Path("/work/shared/fixtures/k8s-audit").glob("*.json"))


def fixture_events() -> list[dict[str, Any]]:
    events = []
    for path in FIXTURES:
        events += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return events


def event_list(items: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})


def test_webhook_stores_every_event_and_no_secret_value_leaks_anywhere(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    events = fixture_events()
    assert len(FIXTURES) == 3
    secrets = secret_values(events)
    # The oracle is real: the fixture does carry the secret, as stored and decoded.
    assert "MzFiNGQ0YjctMDAyNi00YzI3LWJiMGItNDk5ZDZkZjg1ZGJi" in secrets
    assert "31b4d4b7-0026-4c27-bb0b-499d6df85dbb" in secrets
    token = make_token(settings, clusters=["prod"])
    returned: list[bytes] = []
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        resp = http.post(
            "/v1/kube/audit/prod",
            content=event_list(events),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        returned.append(resp.content)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"accepted": 3}
        drain(settings, [settings.topic_events])
        timeline = http.get(
            "/v1/kube/timeline",
            params={"since": "2018-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
            headers={"Authorization": f"Bearer {token}"},
        )
        returned.append(timeline.content)
        assert timeline.status_code == 200, timeline.text

    rows = fetch(
        settings,
        "SELECT uid, user_name, body FROM events WHERE tenant = $1 AND event = 'kube.request'"
        " ORDER BY time",
        settings.tenant,
    )
    assert len(rows) == 3
    by_id = {orjson.loads(str(r["body"]))["kube_audit"]["auditID"]: r for r in rows}
    assert set(by_id) == {e["auditID"] for e in events}
    secret_row = orjson.loads(str(by_id["c07ab0e2-9b07-4cc6-8e3b-91ac69586a1f"]["body"]))
    assert secret_row["resource_kind"] == "secrets"
    assert secret_row["response_code"] == 201
    # The key stays visible to reviewers; only the value is gone.
    assert "access-key" in secret_row["kube_audit"]["requestObject"]["data"]
    entries = timeline.json()["entries"]
    assert [e["kind"] for e in entries] == ["request"] * 3
    assert {(e["verb"], e["resource"], e["response_code"]) for e in entries} >= {
        ("create", "secrets", 201),
        ("create", "pods", 101),
    }

    cli_out = cli(
        env_for(settings),
        "kube-timeline",
        "--since",
        "2018-01-01T00:00:00Z",
        "--until",
        "2020-01-01T00:00:00Z",
        "--format",
        "json",
    ).stdout
    cli_table = cli(
        env_for(settings),
        "kube-timeline",
        "--since",
        "2018-01-01T00:00:00Z",
        "--until",
        "2020-01-01T00:00:00Z",
        "--group-by",
        "user",
    ).stdout
    assert b"secrets sysdig-agent/sysdig-agent -> 201" in cli_table

    tables = dump_tables(settings)
    kafka = [r.value for r in consume_all(settings, settings.topic_events)]
    assert len(kafka) == 3
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)
    assert logs  # the capture works: the server and worker did log
    places: dict[str, str] = {
        "postgresql": "\n".join("\n".join(rows) for rows in tables.values()),
        "kafka": b"\n".join(kafka).decode(errors="replace"),
        "logs": logs,
        "api responses": b"\n".join(returned).decode(),
        "cli output": (cli_out + cli_table).decode(),
    }
    for where, text in places.items():
        for value in secrets:
            assert value not in text, f"secret value found in {where}"


def test_webhook_refuses_missing_wrong_and_cluster_foreign_tokens(settings: Settings) -> None:
    body = event_list(fixture_events())
    prod_only = make_token(settings, clusters=["prod"])
    read_only = make_token(settings, scopes=["read"])
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.post("/v1/kube/audit/prod", content=body).status_code == 401
        bad = {"Authorization": "Bearer svt_nope_nope"}
        assert http.post("/v1/kube/audit/prod", content=body, headers=bad).status_code == 401
        other = {"Authorization": f"Bearer {prod_only}"}
        assert http.post("/v1/kube/audit/staging", content=body, headers=other).status_code == 403
        ro = {"Authorization": f"Bearer {read_only}"}
        assert http.post("/v1/kube/audit/prod", content=body, headers=ro).status_code == 403
        bad_body = http.post("/v1/kube/audit/prod", content=b"{not json", headers=other)
        assert bad_body.status_code == 400
    assert fetch(settings, "SELECT count(*) AS n FROM events")[0]["n"] == 0


def _stage(event: dict[str, Any], stage: str) -> dict[str, Any]:
    out = dict(event, stage=stage)
    if stage == "RequestReceived":
        out.pop("responseStatus", None)
        out.pop("responseObject", None)
    return out


def test_stages_of_one_request_in_separate_deliveries_merge_into_one_row(
    settings: Settings,
) -> None:
    exec_event = next(e for e in fixture_events() if e["objectRef"].get("subresource") == "exec")
    token = make_token(settings)
    auth = {"Authorization": f"Bearer {token}"}
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        # Cluster a: stages in order, in two deliveries; cluster b: the reverse order.
        for cluster, stages in (
            ("a", ["RequestReceived", "ResponseComplete"]),
            ("b", ["ResponseComplete", "RequestReceived"]),
        ):
            for stage in stages:
                resp = http.post(
                    f"/v1/kube/audit/{cluster}",
                    content=event_list([_stage(exec_event, stage)]),
                    headers=auth,
                )
                assert resp.status_code == 200, resp.text
                # Each delivery is stored before the next: the merge happens in PostgreSQL.
                drain(settings, [settings.topic_events])
        # A redelivery of the first stage changes nothing.
        resp = http.post(
            "/v1/kube/audit/a",
            content=event_list([_stage(exec_event, "RequestReceived")]),
            headers=auth,
        )
        assert resp.status_code == 200
        drain(settings, [settings.topic_events])
    rows = fetch(
        settings,
        "SELECT body FROM events WHERE tenant = $1 ORDER BY body->>'kubernetes_cluster'",
        settings.tenant,
    )
    assert len(rows) == 2
    bodies = [orjson.loads(str(r["body"])) for r in rows]
    for b in bodies:
        assert b["kube_audit_stages"] == ["RequestReceived", "ResponseComplete"]
        assert b["response_code"] == 101
        assert b["kube_audit"]["stage"] == "ResponseComplete"
    a, b = bodies
    assert {k: v for k, v in a.items() if k not in ("uid", "kubernetes_cluster")} == {
        k: v for k, v in b.items() if k not in ("uid", "kubernetes_cluster")
    }


def test_an_event_too_large_for_kafka_is_stored_cut_down_and_the_batch_answered_200(
    settings: Settings,
) -> None:
    from tests.kube_verbs_support import CASES, audit_event

    listing = next(i for i, c in enumerate(CASES) if c[2] == "list")
    good, huge = audit_event(0), audit_event(listing)
    huge["level"] = "RequestResponse"
    huge["responseObject"] = {
        "kind": "PodList",
        "items": [{"metadata": {"name": f"web-{i}", "annotations": {"x": "y" * 100}}}
                  for i in range(40_000)],
    }  # fmt: skip
    body = event_list([good, huge])
    assert settings.max_record_bytes < len(body) < 64 * 1024 * 1024
    token = make_token(settings)
    with serve(settings) as url:
        r = httpx.post(
            f"{url}/v1/kube/audit/minikube",
            content=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 2}
    drain(settings, [settings.topic_events])
    rows = fetch(
        settings,
        "SELECT body FROM events WHERE tenant = $1 ORDER BY body->>'time'",
        settings.tenant,
    )
    stored = [orjson.loads(str(row["body"])) for row in rows]
    assert len(stored) == 2
    cut = next(e for e in stored if "sv_truncated" in e)
    whole = next(e for e in stored if "sv_truncated" not in e)
    assert whole["kube_audit"]["auditID"] == good["auditID"]
    marker = cut["sv_truncated"]
    assert marker["original_bytes"] > settings.max_record_bytes
    assert marker["dropped"] == ["kube_audit.responseObject"]
    assert len(marker["sha256"]) == 64
    # Who did what to which resource is all there.
    assert (cut["kubernetes_verb"], cut["resource_kind"], cut["user"]) == (
        "list",
        "pods",
        huge["user"]["username"],
    )
    assert cut["kube_audit"]["auditID"] == huge["auditID"]
