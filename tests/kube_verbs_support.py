"""Kubernetes audit events of every verb, in the shape kube-apiserver writes them.

The shared fixtures hold real audit events of one verb only (create: a pod, a secret, an exec).
These take the exec fixture's exact shape (audit.k8s.io/v1 ``Event``, stage
``ResponseComplete``) and vary what kubectl sends for each verb: the method, the
``requestURI`` (query string included, as the API server records it), ``objectRef`` and the
verb the API server itself decided. That verb is the oracle the derivation from method and
path is checked against (:mod:`schemas.kube`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
EXEC_FIXTURE = FIXTURES / "k8s-audit" / "exec_pod.json"

# (method kubectl used, requestURI, API server verb, objectRef, response code)
CASES: list[tuple[str, str, str, dict[str, str], int]] = [
    ("GET", "/api/v1/namespaces/prod/pods/web-1", "get",
     {"resource": "pods", "namespace": "prod", "name": "web-1"}, 200),
    ("GET", "/api/v1/namespaces/prod/pods?limit=500", "list",
     {"resource": "pods", "namespace": "prod"}, 200),
    ("GET", "/api/v1/namespaces/prod/pods?resourceVersion=4711&watch=true", "watch",
     {"resource": "pods", "namespace": "prod"}, 200),
    ("GET", "/api/v1/watch/namespaces/prod/configmaps", "watch",
     {"resource": "configmaps", "namespace": "prod"}, 200),
    ("POST", "/apis/apps/v1/namespaces/prod/deployments?fieldManager=kubectl-client-side-apply",
     "create", {"resource": "deployments", "namespace": "prod", "apiGroup": "apps"}, 201),
    ("PUT", "/api/v1/namespaces/prod/configmaps/settings", "update",
     {"resource": "configmaps", "namespace": "prod", "name": "settings"}, 200),
    ("PATCH", "/apis/apps/v1/namespaces/prod/deployments/web?fieldManager=kubectl-edit", "patch",
     {"resource": "deployments", "namespace": "prod", "name": "web", "apiGroup": "apps"}, 200),
    ("DELETE", "/api/v1/namespaces/prod/pods/web-1", "delete",
     {"resource": "pods", "namespace": "prod", "name": "web-1"}, 200),
    ("DELETE", "/api/v1/namespaces/prod/pods?labelSelector=app%3Dweb", "deletecollection",
     {"resource": "pods", "namespace": "prod"}, 200),
    ("POST", "/api/v1/namespaces/prod/pods/web-1/exec?command=sh&stdin=true&tty=true", "create",
     {"resource": "pods", "namespace": "prod", "name": "web-1", "subresource": "exec"}, 101),
    ("GET", "/api/v1/namespaces/prod/pods/web-1/log?container=app", "get",
     {"resource": "pods", "namespace": "prod", "name": "web-1", "subresource": "log"}, 200),
    ("GET", "/api/v1/nodes", "list", {"resource": "nodes"}, 200),
    ("PUT", "/api/v1/namespaces/prod/finalize", "update",
     {"resource": "namespaces", "name": "prod", "subresource": "finalize"}, 200),
    ("GET", "/version", "get", {}, 200),
]  # fmt: skip


def audit_event(i: int) -> dict[str, Any]:
    """Case ``i`` as the audit Event kube-apiserver writes (the exec fixture's shape)."""
    _method, uri, verb, ref, code = CASES[i]
    with EXEC_FIXTURE.open() as fh:
        event: dict[str, Any] = copy.deepcopy(json.loads(fh.readline()))
    event["auditID"] = f"0000000{i:x}-7bf4-4c85-81a8-1b11253d1ba6"
    event["stage"] = "ResponseComplete"
    event["requestURI"] = uri
    event["verb"] = verb
    event["responseStatus"] = {"code": code, "metadata": {}}
    event["requestReceivedTimestamp"] = f"2018-10-26T13:38:{10 + i:02d}.000000Z"
    event["stageTimestamp"] = f"2018-10-26T13:38:{10 + i:02d}.100000Z"
    if ref:
        event["objectRef"] = {"apiVersion": "v1", **ref}
    else:  # a non-resource request has no objectRef
        event.pop("objectRef", None)
    return event


def proxy_event(i: int, tenant: str, cluster: str) -> dict[str, Any]:
    """Case ``i`` as a proxy (Teleport) emits it: ``kube.request`` with the HTTP method in
    ``verb`` and the request path, no Kubernetes verb."""
    method, uri, _verb, ref, code = CASES[i]
    out: dict[str, Any] = {
        "sv_version": 1,
        "tenant": tenant,
        "event": "kube.request",
        "code": "T3009I",
        "uid": f"proxy-{i}",
        "time": f"2018-10-26T14:00:{10 + i:02d}.000Z",
        "user": "alex",
        "login": "alex",
        "proto": "kube",
        "kubernetes_cluster": cluster,
        "verb": method,
        "request_path": uri,
        "response_code": code,
    }
    for src, dst in (("resource", "resource_kind"), ("namespace", "resource_namespace")):
        if ref.get(src):
            out[dst] = ref[src]
    if ref.get("name"):
        out["resource_name"] = ref["name"]
    return out


def expected(i: int) -> tuple[str, str]:
    """(Kubernetes verb, subresource) of case ``i``, as the API server decided them."""
    return CASES[i][2], CASES[i][3].get("subresource", "")
