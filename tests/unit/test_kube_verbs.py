"""schemas.kube: the Kubernetes verb of a request, derived as kube-apiserver does, checked
against the verbs the API server wrote in audit events of every verb."""

from __future__ import annotations

import pytest

from ingest.kube_audit import to_kube_request
from schemas.kube import KUBE_VERBS, KubeVerb, derive_kube_verb, kube_verb
from tests.kube_verbs_support import CASES, audit_event, expected, proxy_event


def test_the_cases_cover_every_kubernetes_verb_and_a_subresource() -> None:
    assert {c[2] for c in CASES} >= set(KUBE_VERBS)
    assert {expected(i)[1] for i in range(len(CASES))} >= {"exec", "log"}


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c[0]} {c[1]}" for c in CASES])
def test_method_and_path_give_the_verb_the_api_server_decided(i: int) -> None:
    method, uri, *_ = CASES[i]
    assert derive_kube_verb(method, uri) == KubeVerb(*expected(i))
    # A proxy event carrying only the method and the path gets the same verb.
    assert kube_verb(proxy_event(i, "t", "c")) == KubeVerb(*expected(i))


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c[0]} {c[1]}" for c in CASES])
def test_a_webhook_event_keeps_the_api_servers_verb_and_teleports_http_method(i: int) -> None:
    event = to_kube_request(audit_event(i), tenant="t", kubernetes_cluster="c")
    assert kube_verb(event) == KubeVerb(*expected(i))
    assert event["verb"] == CASES[i][0]  # Teleport's field stays the HTTP method


def test_watch_needs_a_true_value_and_a_named_get_stays_get() -> None:
    assert derive_kube_verb("GET", "/api/v1/pods?watch=false").verb == "list"
    assert derive_kube_verb("GET", "/api/v1/pods?watch=1").verb == "watch"
    assert derive_kube_verb("GET", "/api/v1/namespaces/p/pods/x?watch=true").verb == "get"
    # Without the query (Teleport records the path only) a watch is seen as a list.
    assert derive_kube_verb("GET", "/api/v1/namespaces/p/pods").verb == "list"


def test_non_resource_and_odd_requests_get_the_lower_case_method() -> None:
    assert derive_kube_verb("GET", "/healthz") == KubeVerb("get")
    assert derive_kube_verb("GET", "/apis/apps/v1") == KubeVerb("get")
    assert derive_kube_verb("POST", "") == KubeVerb("post")
    assert kube_verb({"event": "session.start"}) == KubeVerb("")
    assert kube_verb({"verb": 5, "request_path": None}) == KubeVerb("")
