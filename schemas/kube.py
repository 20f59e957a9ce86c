"""Kubernetes verbs of ``kube.request`` events: the one rule, pure.

Teleport's ``kube.request`` has ``verb`` = the HTTP method (``GET``) and ``request_path``; that
field is a contract and stays as it is. What a compliance search means by "verb" is the
Kubernetes verb the API server authorizes (``get``, ``list``, ``watch``, ``create``,
``update``, ``patch``, ``delete``, ``deletecollection``), plus the subresource (``exec``,
``log``, ``portforward``, ...) when there is one. :func:`kube_verb` gives both:

* when the event carries them (``kubernetes_verb``/``kubernetes_subresource``, as events from
  the API server's own audit webhook do), those win;
* otherwise they are derived from the method and the path exactly as kube-apiserver's
  ``RequestInfoFactory`` does: ``/api/v1/...`` and ``/apis/GROUP/VERSION/...`` are resource
  requests (``namespaces/NS/`` scoping, then ``RESOURCE[/NAME[/SUBRESOURCE]]``); GET/HEAD is
  ``get`` on a named object and ``list`` on a collection, or ``watch`` with ``?watch=true``
  (or the legacy ``/watch/`` prefix); DELETE on a collection is ``deletecollection``; POST is
  ``create``, PUT ``update``, PATCH ``patch``. Anything else (``/healthz``, ``/version``,
  discovery under ``/apis``) is a non-resource request whose verb is the lower-case method.

Searching ``verb`` matches the Kubernetes verb or the subresource, so ``--verb exec`` finds the
``kubectl exec`` requests (verb ``create``, subresource ``exec``) and ``--verb create`` finds
them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from sessionvault.errors import ValidationError

__all__ = [
    "KUBE_VERBS",
    "STAGE_ORDER",
    "KubeVerb",
    "derive_kube_verb",
    "kube_verb",
    "merge_kube_requests",
]

KUBE_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
"""The Kubernetes API verbs of resource requests."""

_METHOD_VERB = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
# Subresources of a namespace itself (/api/v1/namespaces/NS/status), not resources in it.
_NS_SUBRESOURCES = frozenset({"status", "finalize"})
# strconv.ParseBool's true values (kube-apiserver parses ?watch= with it).
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})


@dataclass(frozen=True)
class KubeVerb:
    """The Kubernetes verb of a request and its subresource (``""`` when none)."""

    verb: str
    subresource: str = ""


def derive_kube_verb(method: str, path: str) -> KubeVerb:
    """The verb kube-apiserver would authorize for ``method`` on ``path`` (query included
    or not: ``?watch=true`` is only seen when it is there)."""
    method = method.strip().upper()
    split = urlsplit(path)
    parts = [p for p in split.path.split("/") if p]
    lower = method.lower()
    if not parts or parts[0] not in ("api", "apis"):
        return KubeVerb(lower)
    # /api/VERSION/... (core group) or /apis/GROUP/VERSION/...
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if not rest:  # discovery: /api, /api/v1, /apis/GROUP/VERSION
        return KubeVerb(lower)
    verb = _METHOD_VERB.get(method, lower)
    if rest[0] in ("watch", "proxy"):  # the legacy /api/v1/watch/... and /proxy/... forms
        verb, rest = rest[0], rest[1:]
    if rest and rest[0] == "namespaces" and len(rest) > 2 and rest[2] not in _NS_SUBRESOURCES:
        rest = rest[2:]  # namespaces/NS/RESOURCE...: the resource is what follows
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if not name and verb == "get":
        watch = any(v in _TRUE for v in parse_qs(split.query).get("watch", []))
        verb = "watch" if watch else "list"
    elif not name and verb == "delete":
        verb = "deletecollection"
    return KubeVerb(verb, subresource)


def kube_verb(fields: Mapping[str, Any]) -> KubeVerb:
    """The Kubernetes verb of a ``kube.request`` event (see the module doc); ``KubeVerb("")``
    for an event with neither a Kubernetes verb nor an HTTP method."""
    derived = _derived(fields)
    given = fields.get("kubernetes_verb")
    sub = fields.get("kubernetes_subresource")
    return KubeVerb(
        given if isinstance(given, str) and given else derived.verb,
        sub if isinstance(sub, str) and sub else derived.subresource,
    )


def _derived(fields: Mapping[str, Any]) -> KubeVerb:
    method = fields.get("verb")
    path = fields.get("request_path")
    if not isinstance(method, str) or not method:
        return KubeVerb("")
    return derive_kube_verb(method, path if isinstance(path, str) else "")


# --- merging the audit stages of one request ---------------------------------------------

#: The order of kube-apiserver audit stages; a later stage carries more of the request.
STAGE_ORDER: dict[str, int] = {
    "RequestReceived": 0,
    "ResponseStarted": 1,
    "ResponseComplete": 2,
    "Panic": 3,
}

_RESPONSE_FIELDS = ("response_code",)


def merge_kube_requests(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Combine two kube.request events of the same request (same uid) into one.

    The later stage (by :data:`STAGE_ORDER`, not by arrival) wins for response fields and for
    the kept original; fields only the earlier stage had are filled in. Commutative and
    idempotent, so re-delivery and any arrival order give the same result.
    """
    if a.get("uid") != b.get("uid"):
        raise ValidationError("wrong_type", "merge_kube_requests: events have different uids")

    def rank(e: dict[str, Any]) -> tuple[int, bytes]:
        orig = e.get("kube_audit") or {}
        stages = [STAGE_ORDER.get(s, -1) for s in e.get("kube_audit_stages", [])]
        # Ties (same stage delivered twice, possibly differing) break on content, so the
        # result does not depend on which copy came first.
        return (max(stages, default=-1), orjson.dumps(orig, option=orjson.OPT_SORT_KEYS))

    late, early = (a, b) if rank(a) >= rank(b) else (b, a)
    merged = {**early, **late}
    for key in _RESPONSE_FIELDS:
        if key not in late and key in early:
            merged[key] = early[key]
    late_orig, early_orig = late.get("kube_audit") or {}, early.get("kube_audit") or {}
    merged["kube_audit"] = {**early_orig, **late_orig}
    stages = set(early.get("kube_audit_stages", [])) | set(late.get("kube_audit_stages", []))
    merged["kube_audit_stages"] = sorted(stages, key=lambda s: STAGE_ORDER.get(s, -1))
    return merged
