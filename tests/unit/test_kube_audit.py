"""Kubernetes audit events -> kube.request events: mapping, stage merging, secret redaction."""

from __future__ import annotations

import base64
import copy
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.kube_audit import (
    REDACTED,
    events_from_log_lines,
    events_from_webhook,
    kube_request_uid,
    parse_webhook_body,
    redact_event,
    redact_object,
    secret_values,
    to_kube_request,
)
from schemas.codec import validate_event
from schemas.kube import merge_kube_requests
from sessionvault.errors import UnknownVersionError, ValidationError

FIXTURES = Path("/work/shared/fixtures/k8s-audit")
TENANT = "acme"
CLUSTER = "prod-eu"


def load(name: str) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
    return event


def kube(event: dict[str, Any]) -> dict[str, Any]:
    return to_kube_request(event, tenant=TENANT, kubernetes_cluster=CLUSTER)


def stage(event: dict[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(event)
    out["stage"] = name
    out.update(changes)
    return out


# -- mapping ----------------------------------------------------------------------------------


def test_exec_fixture_maps_to_teleport_kube_request_fields() -> None:
    raw = load("exec_pod")
    ev = kube(raw)
    assert ev["event"] == "kube.request"
    assert ev["code"] == "T3009I"
    assert ev["time"] == "2018-10-26T13:38:34.867116Z"
    assert ev["uid"] == kube_request_uid(TENANT, CLUSTER, raw["auditID"])
    assert ev["user"] == "minikube-user"
    assert ev["kubernetes_cluster"] == CLUSTER
    assert ev["verb"] == "POST"
    assert ev["kubernetes_verb"] == "create"
    assert (
        ev["request_path"]
        == "/api/v1/namespaces/default/pods/nginx-deployment-7998647bdf-phvq7/exec"
    )
    assert ev["response_code"] == 101
    assert ev["resource_kind"] == "pods"
    assert ev["kubernetes_subresource"] == "exec"
    assert ev["resource_namespace"] == "default"
    assert ev["resource_name"] == "nginx-deployment-7998647bdf-phvq7"
    assert ev["resource_api_group"] == "core/v1"
    assert ev["addr.remote"] == "192.168.99.1"
    assert ev["kubernetes_groups"] == ["system:masters", "system:authenticated"]
    # The original is kept (it holds the full requestURI with the exec command).
    assert ev["kube_audit"]["requestURI"] == raw["requestURI"]


@pytest.mark.parametrize("name", ["exec_pod", "create_secret", "create_nginx_pod_privileged"])
def test_every_fixture_becomes_a_valid_event_v1(name: str) -> None:
    validate_event(orjson.loads(orjson.dumps(kube(load(name)))))


def test_v1beta1_event_is_accepted_and_keeps_unknown_fields() -> None:
    raw = load("create_nginx_pod_privileged")
    assert raw["apiVersion"] == "audit.k8s.io/v1beta1"
    ev = kube(raw)
    assert ev["kube_audit"]["metadata"] == raw["metadata"]
    assert ev["kube_audit"]["requestObject"]["spec"]["containers"][0]["securityContext"] == {
        "privileged": True
    }


def test_uid_is_deterministic_and_scoped_by_tenant_and_cluster() -> None:
    assert kube_request_uid("a", "c", "x") == kube_request_uid("a", "c", "x")
    assert kube_request_uid("a", "c", "x") != kube_request_uid("b", "c", "x")
    assert kube_request_uid("a", "c", "x") != kube_request_uid("a", "d", "x")


def test_unknown_audit_api_version_is_refused_not_guessed() -> None:
    raw = load("exec_pod")
    raw["apiVersion"] = "audit.k8s.io/v2"
    with pytest.raises(UnknownVersionError):
        kube(raw)
    body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v9", "items": []})
    with pytest.raises(UnknownVersionError):
        parse_webhook_body(body)


def test_webhook_item_at_fault_is_named() -> None:
    good = load("exec_pod")
    body = orjson.dumps(
        {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [good, {"kind": "Event"}]}
    )
    with pytest.raises(ValidationError, match=r"items\[1\]"):
        parse_webhook_body(body)


# -- stages -----------------------------------------------------------------------------------


def _stages() -> list[dict[str, Any]]:
    raw = load("exec_pod")
    received = stage(raw, "RequestReceived", stageTimestamp="2018-10-26T13:38:34.867116Z")
    del received["responseStatus"]
    started = stage(raw, "ResponseStarted")
    complete = stage(
        raw,
        "ResponseComplete",
        stageTimestamp="2018-10-26T13:40:00.000001Z",
        responseStatus={"code": 101, "metadata": {}, "status": "Success"},
    )
    return [received, started, complete]


def test_all_stages_of_one_request_share_uid_and_time() -> None:
    events = [kube(s) for s in _stages()]
    assert len({e["uid"] for e in events}) == 1
    assert len({e["time"] for e in events}) == 1


def test_stage_merge_gives_same_result_in_every_arrival_order() -> None:
    events = [kube(s) for s in _stages()]
    results = []
    for order in itertools.permutations(events):
        merged = order[0]
        for e in order[1:]:
            merged = merge_kube_requests(merged, e)
        results.append(orjson.dumps(merged, option=orjson.OPT_SORT_KEYS))
    assert len(set(results)) == 1
    final = orjson.loads(results[0])
    assert final["kube_audit_stages"] == ["RequestReceived", "ResponseStarted", "ResponseComplete"]
    assert final["kube_audit"]["stage"] == "ResponseComplete"
    assert final["kube_audit"]["responseStatus"]["status"] == "Success"
    assert final["response_code"] == 101


def test_merging_a_redelivered_event_changes_nothing() -> None:
    ev = kube(_stages()[2])
    assert merge_kube_requests(ev, copy.deepcopy(ev)) == ev


def test_webhook_batch_with_all_stages_yields_one_event() -> None:
    body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": _stages()})
    events = events_from_webhook(body, tenant=TENANT, kubernetes_cluster=CLUSTER)
    assert len(events) == 1
    assert events[0]["kube_audit"]["stage"] == "ResponseComplete"


def test_log_lines_of_two_requests_yield_two_events() -> None:
    lines = [orjson.dumps(s) for s in _stages()] + [b"", orjson.dumps(load("create_secret"))]
    events = events_from_log_lines(lines, tenant=TENANT, kubernetes_cluster=CLUSTER)
    assert len(events) == 2


def test_merging_events_of_different_requests_is_refused() -> None:
    with pytest.raises(ValidationError):
        merge_kube_requests(kube(load("exec_pod")), kube(load("create_secret")))


# -- redaction --------------------------------------------------------------------------------


def _assert_no_secret_in(values: list[str], output: bytes) -> None:
    assert values, "the test needs secret values to look for"
    for value in values:
        assert value.encode() not in output, f"secret value {value[:4]}... leaked"


def test_create_secret_fixture_leaks_no_secret_value_anywhere() -> None:
    raw = load("create_secret")
    values = secret_values(raw)
    # The fixture's value and its base64 decoding, from request and response.
    assert "31b4d4b7-0026-4c27-bb0b-499d6df85dbb" in values
    out = orjson.dumps(kube(raw))
    _assert_no_secret_in(values, out)
    # Keys stay, so reviewers see which keys existed.
    ev = orjson.loads(out)
    assert ev["kube_audit"]["requestObject"]["data"] == {"access-key": REDACTED}
    assert ev["kube_audit"]["responseObject"]["data"] == {"access-key": REDACTED}
    assert ev["kube_audit"]["responseObject"]["metadata"]["name"] == "sysdig-agent"


def test_redaction_does_not_mutate_the_input() -> None:
    raw = load("create_secret")
    before = copy.deepcopy(raw)
    redact_event(raw)
    assert raw == before


def _applied_secret_event() -> dict[str, Any]:
    """`kubectl apply` of a Secret: the annotation embeds the secret JSON a second time."""
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "prod"},
        "stringData": {"password": "hunter2-plain"},
        "data": {"token": base64.b64encode(b"tok-3f9a7c-secret").decode()},
        "type": "Opaque",
    }
    applied = copy.deepcopy(secret)
    applied["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": orjson.dumps(secret).decode() + "\n"
    }
    raw = load("create_secret")
    raw["auditID"] = "0b5b0a4e-1111-4f00-9c55-2a0fb8d2b7a1"
    raw["verb"] = "patch"
    raw["requestObject"] = applied
    raw["responseObject"] = {
        "kind": "SecretList",
        "apiVersion": "v1",
        "items": [applied],
    }
    return raw


def test_last_applied_annotation_and_secret_lists_are_redacted() -> None:
    raw = _applied_secret_event()
    values = [*secret_values(raw), "hunter2-plain", "tok-3f9a7c-secret"]
    out = orjson.dumps(kube(raw))
    _assert_no_secret_in(values, out)
    ev = orjson.loads(out)
    annotation = ev["kube_audit"]["requestObject"]["metadata"]["annotations"][
        "kubectl.kubernetes.io/last-applied-configuration"
    ]
    embedded = orjson.loads(annotation)
    assert embedded["stringData"] == {"password": REDACTED}
    assert embedded["metadata"]["name"] == "db"


def test_patch_without_kind_to_a_secret_is_redacted() -> None:
    raw = load("create_secret")
    raw["verb"] = "patch"
    raw["requestObject"] = {"data": {"access-key": "c2VjcmV0LXBhdGNoLXZhbHVl"}}
    raw["responseObject"] = [{"op": "replace", "path": "/data/x", "value": "anNvbnBhdGNoLXZhbA=="}]
    out = orjson.dumps(kube(raw))
    for value in ("c2VjcmV0LXBhdGNoLXZhbHVl", "secret-patch-value", "anNvbnBhdGNoLXZhbA=="):
        assert value.encode() not in out
    ev = orjson.loads(out)
    assert ev["kube_audit"]["responseObject"][0]["path"] == "/data/x"


def test_token_request_and_token_review_tokens_are_redacted() -> None:
    token_request = {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "spec": {"audiences": ["api"], "expirationSeconds": 3600},
        "status": {
            "token": "eyJhbGciOiJSUzI1NiJ9.payload.sig",
            "expirationTimestamp": "2030-01-01T00:00:00Z",
        },
    }
    review = {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "spec": {"token": "eyJreview.token.value"},
        "status": {"authenticated": True, "user": {"username": "system:serviceaccount:a:b"}},
    }
    out_req = redact_object(token_request)
    out_rev = redact_object(review)
    blob = orjson.dumps([out_req, out_rev])
    assert b"eyJhbGciOiJSUzI1NiJ9" not in blob
    assert b"eyJreview" not in blob
    assert out_req["status"]["expirationTimestamp"] == "2030-01-01T00:00:00Z"
    assert out_rev["status"]["user"]["username"] == "system:serviceaccount:a:b"
    assert out_rev["spec"] == {"token": REDACTED}


def test_password_like_keys_and_env_pairs_in_ordinary_objects_are_redacted() -> None:
    pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": "web"},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "nginx",
                    "env": [
                        {"name": "DB_PASSWORD", "value": "pw-in-env-123"},
                        {"name": "LOG_LEVEL", "value": "debug"},
                    ],
                }
            ],
            "volumes": [{"name": "s", "secret": {"secretName": "db"}}],
            "automountServiceAccountToken": False,
        },
        "config": {"apiToken": "tok-in-config", "adminPassword": "pw-in-config"},
    }
    out = redact_object(pod)
    blob = orjson.dumps(out)
    for value in (b"pw-in-env-123", b"tok-in-config", b"pw-in-config"):
        assert value not in blob
    env = out["spec"]["containers"][0]["env"]
    assert env[0] == {"name": "DB_PASSWORD", "value": REDACTED}
    assert env[1] == {"name": "LOG_LEVEL", "value": "debug"}
    # References to secrets are not secrets: they stay for the audit trail.
    assert out["spec"]["volumes"][0]["secret"]["secretName"] == "db"
    assert out["spec"]["automountServiceAccountToken"] is False
    assert out["spec"]["containers"][0]["image"] == "nginx"


def test_fit_event_keeps_a_small_event_and_cuts_a_large_one_step_by_step() -> None:
    import hashlib

    from ingest.kube_audit import fit_event
    from schemas.codec import encode_event

    base = {
        "sv_version": 1, "tenant": "t", "event": "kube.request", "code": "T3009I",
        "time": "2026-01-01T00:00:00Z", "uid": "u", "user": "alice", "verb": "GET",
        "kubernetes_verb": "list", "resource_kind": "pods",
    }  # fmt: skip
    assert fit_event(base, 1000) is base
    audit = {"auditID": "a", "responseObject": {"x": "y" * 5000}, "requestObject": {"z": 1}}
    big = {**base, "kube_audit": audit}
    raw = encode_event(big)
    one = fit_event(big, 2000)
    assert one["sv_truncated"] == {
        "original_bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "dropped": ["kube_audit.requestObject", "kube_audit.responseObject"],
    }
    assert one["kube_audit"] == {"auditID": "a"}
    assert len(encode_event(one)) <= 2000
    # The original's other fields too large as well: the original goes.
    audit2 = {"auditID": "a", "annotations": {"k": "v" * 5000}}
    two = fit_event({**base, "kube_audit": audit2}, 2000)
    assert two["sv_truncated"]["dropped"] == ["kube_audit"]
    assert "kube_audit" not in two
    # Huge fields outside it: only the identity fields stay, texts cut.
    three = fit_event({**base, "user_agent": "u" * 9000, "extra": "e" * 9000}, 6000)
    assert three["sv_truncated"]["dropped"] == ["extra"]
    assert len(three["user_agent"]) == 4096
    assert len(encode_event(three)) <= 6000
    assert (three["uid"], three["kubernetes_verb"]) == ("u", "list")
