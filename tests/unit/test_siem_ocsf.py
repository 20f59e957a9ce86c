"""OCSF output validates against the official OCSF schema for each mapped class.

The JSON Schemas come from PyPI ``ocsf-json-schema``, which generates them from the OCSF
project's own schema exports (schema.ocsf.io data, packaged per version), not from anything
written here.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ocsf_json_schema import (  # type: ignore[import-untyped]
    OcsfJsonSchemaEmbedded,
    get_ocsf_schema,
)

from ingest.kube_audit import events_from_log_lines
from siem.formats import to_ocsf
from siem.formats.ocsf import OCSF_CLASSES, OCSF_VERSION
from siem.rules import SigmaEngine

EXEC_RULE = "6b3e6a8e-1a53-4c36-9d7e-3f0c5a1d2b01"
FAILED_LOGINS_RULE = "5e9b1d3f-7a2c-4f4e-8b0a-ab2c4e6f8d07"

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")


@cache
def _schema() -> Any:
    return OcsfJsonSchemaEmbedded(get_ocsf_schema(version=OCSF_VERSION))


def _validator(doc: dict[str, Any]) -> jsonschema.Draft202012Validator:
    s = _schema()
    name = s.lookup_class_name_from_uid(doc["class_uid"])
    js = s.get_class_schema(name, doc["metadata"].get("profiles", []))
    return jsonschema.Draft202012Validator(js, format_checker=jsonschema.FormatChecker())


def _kube_events() -> list[dict[str, Any]]:
    out = []
    for name in ("exec_pod.json", "create_secret.json", "create_nginx_pod_privileged.json"):
        with (FIXTURES / "k8s-audit" / name).open("rb") as f:
            out += events_from_log_lines(f, tenant="acme", kubernetes_cluster="minikube")
    return out


def _teleport_events() -> list[dict[str, Any]]:
    lines = (FIXTURES / "teleport" / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


BASE = {"sv_version": 1, "tenant": "acme", "time": "2026-03-04T05:06:07.089Z", "sid": "s-1"}
SYNTHETIC = [
    {**BASE, "event": "session.join", "code": "T2001I", "uid": "j1", "user": "bob",
     "server_id": "node-1", "addr.remote": "[2001:db8::1]:4444"},
    {**BASE, "event": "session.leave", "code": "T2003I", "uid": "l1", "user": "bob",
     "server_id": "node-1"},
    {**BASE, "event": "session.end", "code": "T2004I", "uid": "e1", "user": "bob",
     "server_hostname": "web-1", "addr.local": "10.0.0.5:3022"},
    {**BASE, "event": "user.login", "code": "T1000I", "uid": "u1", "user": "bob",
     "success": True, "method": "local", "addr.remote": "192.0.2.1:5000"},
    {**BASE, "event": "user.login", "code": "T1000W", "uid": "u2", "user": "bob",
     "success": False, "error": "invalid credentials"},
    {**BASE, "event": "session.command", "code": "T4000I", "uid": "c1", "user": "bob",
     "login": "root", "server_id": "node-1", "path": "/usr/bin/curl", "argv": ["-s", "x"],
     "pid": 10, "ppid": 9, "return_code": 0},
    {**BASE, "event": "exec", "code": "T3002I", "uid": "x1", "user": "bob",
     "command": "ls -la", "exitCode": 0, "server_hostname": "web-1"},
    {**BASE, "event": "kube.request", "code": "T3009I", "uid": "k1", "user": "bob",
     "verb": "DELETE", "request_path": "/api/v1/namespaces/a/pods/b", "response_code": 403},
]  # fmt: skip


def _all_mapped() -> list[dict[str, Any]]:
    return _teleport_events() + _kube_events() + SYNTHETIC


def test_every_mapped_class_is_covered_by_the_cases() -> None:
    classes = {to_ocsf(e)["class_uid"] for e in _all_mapped()}  # type: ignore[index]
    assert classes == {4007, 3002, 6003, 1007}
    assert {e["event"] for e in _all_mapped()} >= set(OCSF_CLASSES)


@pytest.mark.parametrize("event", _all_mapped(), ids=lambda e: f"{e['event']}-{e['uid'][:8]}")
def test_ocsf_event_validates_against_the_official_class_schema(event: dict[str, Any]) -> None:
    doc = to_ocsf(event)
    assert doc is not None
    errors = sorted(_validator(doc).iter_errors(doc), key=str)
    assert errors == [], [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    assert doc["type_uid"] == doc["class_uid"] * 100 + doc["activity_id"]
    assert doc["metadata"]["version"] == OCSF_VERSION
    assert doc["metadata"]["product"]["name"] == "sessionvault"


def test_activity_ids_follow_the_event() -> None:
    acts = {e["uid"]: to_ocsf(e)["activity_id"] for e in SYNTHETIC}  # type: ignore[index]
    assert acts["j1"] == 1
    assert acts["l1"] == 2
    assert acts["e1"] == 2
    assert acts["k1"] == 4  # DELETE
    kube = {e["kubernetes_verb"]: to_ocsf(e) for e in _kube_events()}
    assert kube["create"]["activity_id"] == 1  # type: ignore[index]
    login_fail = to_ocsf(SYNTHETIC[4])
    assert login_fail is not None
    assert login_fail["status_id"] == 2


def test_the_validator_rejects_an_event_missing_a_required_attribute() -> None:
    # Guards the test above: the generated schema really enforces OCSF's requirements.
    doc = to_ocsf(SYNTHETIC[3])
    assert doc is not None
    del doc["user"]
    assert list(_validator(doc).iter_errors(doc))
    doc2 = to_ocsf(SYNTHETIC[5])
    assert doc2 is not None
    doc2["process"]["not_an_ocsf_attribute"] = 1
    assert list(_validator(doc2).iter_errors(doc2))


def test_sigma_alerts_validate_as_detection_findings() -> None:
    engine = SigmaEngine.starter()
    alerts = [a for e in _kube_events() for a in engine.evaluate(e)]
    for i in range(5):
        login = {**SYNTHETIC[4], "uid": f"f{i}", "time": f"2026-03-04T05:06:0{i}Z"}
        alerts += engine.evaluate(login)
    assert {a["rule_id"] for a in alerts} >= {EXEC_RULE, FAILED_LOGINS_RULE}
    for alert in alerts:
        doc = to_ocsf(alert)
        assert doc is not None
        assert doc["class_uid"] == 2004
        assert doc["type_uid"] == 200401
        errors = list(_validator(doc).iter_errors(doc))
        assert errors == [], [f"{list(e.absolute_path)}: {e.message}" for e in errors]
        assert doc["finding_info"]["analytic"]["uid"] == alert["rule_id"]


def test_unmapped_event_types_give_none() -> None:
    assert to_ocsf({**BASE, "event": "session.upload", "uid": "z"}) is None
