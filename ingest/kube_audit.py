"""Kubernetes API-server audit events as ``kube.request`` audit events, secrets redacted.

Input: what kube-apiserver's audit webhook backend POSTs (an ``audit.k8s.io/v1`` or
``v1beta1`` ``EventList``) or what its log backend writes (one ``Event`` JSON object per line).

Output: one ``kube.request`` event (Teleport's field names, code ``T3009I``) per request. The
original audit event is kept, redacted, under ``kube_audit``. Invariants:

- Redaction comes first. :func:`redact_event` runs inside :func:`to_kube_request`, before any
  field is copied, so no later step (storage, index, logs, SIEM) can see a secret value. Values
  are replaced by :data:`REDACTED`; keys are kept so reviewers see which keys existed.
- One request, one event. All stages of a request (RequestReceived, ResponseStarted,
  ResponseComplete, Panic) share their ``auditID``; the event ``uid`` is a UUIDv5 of
  (tenant, cluster, auditID) and its ``time`` is the request's ``requestReceivedTimestamp``, so
  re-delivery and later stages hit the same ``(uid, time)`` key. :func:`merge_kube_requests`
  combines two stages; the later stage wins for response fields whatever the arrival order.

Pure: no I/O, no Kafka, no logging of event contents.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from schemas.codec import encode_event
from schemas.kube import STAGE_ORDER, merge_kube_requests
from schemas.models import EVENT_VERSION
from sessionvault.errors import UnknownVersionError, ValidationError

__all__ = [
    "KNOWN_API_VERSIONS",
    "REDACTED",
    "events_from_log_lines",
    "events_from_webhook",
    "kube_request_uid",
    "parse_log_lines",
    "parse_webhook_body",
    "redact_event",
    "redact_object",
    "secret_values",
    "to_kube_request",
]

REDACTED = "[REDACTED]"
KUBE_REQUEST_EVENT = "kube.request"
KUBE_REQUEST_CODE = "T3009I"
KNOWN_API_VERSIONS = frozenset({"audit.k8s.io/v1", "audit.k8s.io/v1beta1"})
# Namespace of the derived event uids; fixed forever (changing it would duplicate events).
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://sessionvault.dev/ns/kube-audit")

# Kinds whose string values are secret by default (deny by default, allowlist below).
_SENSITIVE_KINDS = frozenset({"Secret", "TokenRequest", "TokenReview"})
# Resources whose request/response bodies are treated as sensitive even when they carry no
# ``kind`` (patches) or come as lists.
_SENSITIVE_RESOURCES = frozenset({"secrets", "tokenreviews"})
_SENSITIVE_SUBRESOURCES = frozenset({("serviceaccounts", "token")})
# Inside a sensitive object these stay readable: structure and non-secret status.
_SAFE_TOP = frozenset({"kind", "apiVersion", "type", "immutable"})
_SAFE_SPEC = frozenset({"audiences", "expirationSeconds", "boundObjectRef"})
_SAFE_STATUS = frozenset({"authenticated", "user", "audiences", "error", "expirationTimestamp"})
_SAFE_PATCH_OP = frozenset({"op", "path", "from"})
_SAFE_METADATA = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "ownerReferences",
        "finalizers",
        "managedFields",
        "selfLink",
    }
)
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# Key names whose string values are secrets in any object (env-var style names included).
_SECRET_KEY = re.compile(
    r"(?i)(password|passwd|passphrase|token|secret|api[-_]?key|private[-_]?key|"
    r"access[-_]?key|secret[-_]?key|credentials?)$"
)
_HTTP_METHOD = {
    "get": "GET",
    "list": "GET",
    "watch": "GET",
    "create": "POST",
    "update": "PUT",
    "patch": "PATCH",
    "delete": "DELETE",
    "deletecollection": "DELETE",
}


# -- redaction -------------------------------------------------------------------------------


def _is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def _redact_all(value: Any) -> Any:
    """Every scalar string (and number inside a secret blob) replaced; keys and shape kept."""
    if isinstance(value, dict):
        return {k: _redact_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_all(v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    return REDACTED


def _redact_last_applied(text: object) -> object:
    """The annotation embeds the whole applied object as JSON (a Secret's data included):
    redact it as an object and re-serialize, or drop it whole when it does not parse."""
    if not isinstance(text, str):
        return REDACTED
    try:
        embedded = orjson.loads(text)
    except orjson.JSONDecodeError:
        return REDACTED
    return orjson.dumps(redact_object(embedded)).decode()


def _redact_metadata(meta: Any, sensitive: bool) -> Any:
    if not isinstance(meta, dict):
        return _redact_all(meta) if sensitive else meta
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if key == "annotations" and isinstance(value, dict):
            out[key] = {
                k: _redact_last_applied(v)
                if k == LAST_APPLIED
                else (REDACTED if isinstance(v, str) and _is_secret_key(k) else v)
                for k, v in value.items()
            }
        elif not sensitive or key in _SAFE_METADATA:
            out[key] = value
        else:
            out[key] = _redact_all(value)
    return out


def _redact_sensitive(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key in _SAFE_TOP:
            out[key] = value
        elif key == "metadata":
            out[key] = _redact_metadata(value, sensitive=True)
        elif key in ("spec", "status") and isinstance(value, dict):
            safe = _SAFE_SPEC if key == "spec" else _SAFE_STATUS
            out[key] = {k: v if k in safe else _redact_all(v) for k, v in value.items()}
        else:
            out[key] = _redact_all(value)
    return out


def _redact_generic(value: Any) -> Any:
    if isinstance(value, list):
        return [redact_object(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    # An env-var style pair {"name": "DB_PASSWORD", "value": "..."} hides the secret key name
    # in a sibling field.
    pair_name = value.get("name")
    secret_pair = isinstance(pair_name, str) and _is_secret_key(pair_name)
    for key, item in value.items():
        if key == "metadata":
            out[key] = _redact_metadata(redact_object(item), sensitive=False)
        elif isinstance(item, str) and (_is_secret_key(key) or (secret_pair and key == "value")):
            out[key] = REDACTED
        else:
            out[key] = redact_object(item)
    return out


def redact_object(obj: Any, *, sensitive: bool = False) -> Any:
    """A Kubernetes object (or list, or patch) with its secret values replaced by REDACTED.

    ``Secret``, ``TokenRequest`` and ``TokenReview`` objects (and anything passed with
    ``sensitive=True``, such as a patch to a secret) are redacted by default: every string value
    goes except structure (kind, apiVersion, type, non-secret metadata) and known-public status
    (TokenReview's user, expiry). Every other object loses string values under secret-looking
    keys (password, token, secret, api key, credentials ...) and env-style ``{name, value}``
    pairs with such a name. ``last-applied-configuration`` annotations are parsed and redacted
    the same way, since they embed the applied object. Keys are always kept. Never mutates
    its argument.
    """
    if isinstance(obj, list):
        if sensitive:
            return [
                {k: v if k in _SAFE_PATCH_OP else _redact_all(v) for k, v in op.items()}
                if isinstance(op, dict) and "op" in op
                else redact_object(op, sensitive=True)
                for op in obj
            ]
        return [redact_object(v) for v in obj]
    if not isinstance(obj, dict):
        return _redact_all(obj) if sensitive else obj
    kind = obj.get("kind")
    if kind in _SENSITIVE_KINDS or (sensitive and not isinstance(kind, str)):
        return _redact_sensitive(obj)
    if isinstance(kind, str) and kind.endswith("List") and isinstance(obj.get("items"), list):
        items_sensitive = sensitive or kind[:-4] in _SENSITIVE_KINDS
        out = {k: v for k, v in obj.items() if k != "items"}
        out["items"] = [redact_object(i, sensitive=items_sensitive) for i in obj["items"]]
        return out
    if sensitive and kind == "Status":
        return obj
    if sensitive:
        return _redact_sensitive(obj)
    return _redact_generic(obj)


def _is_sensitive_ref(ref: object) -> bool:
    if not isinstance(ref, dict):
        return False
    resource, sub = ref.get("resource"), ref.get("subresource")
    return resource in _SENSITIVE_RESOURCES or (resource, sub) in _SENSITIVE_SUBRESOURCES


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """An audit ``Event`` with secret values removed from request/response objects.

    Bodies of requests to sensitive resources (secrets, tokenreviews, serviceaccounts/token)
    are redacted by default even when they carry no ``kind`` (patches). Returns a new dict.
    """
    sensitive = _is_sensitive_ref(event.get("objectRef"))
    out = dict(event)
    for key in ("requestObject", "responseObject"):
        if key in out and out[key] is not None:
            out[key] = redact_object(out[key], sensitive=sensitive)
    annotations = out.get("annotations")
    if isinstance(annotations, dict):
        out["annotations"] = _redact_metadata({"annotations": annotations}, False)["annotations"]
    return out


# -- parsing ---------------------------------------------------------------------------------


def _check_event(event: object, where: str) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise ValidationError("wrong_type", f"{where}: audit event must be a JSON object")
    version = event.get("apiVersion")
    # Some log pipelines drop apiVersion (the exec_pod fixture has none). The fields read here
    # are the same in v1 and v1beta1, so absent is accepted; present-but-unknown is refused.
    if version is not None and version not in KNOWN_API_VERSIONS:
        raise UnknownVersionError(f"{where}: audit apiVersion {version!r} is not known")
    if event.get("kind") != "Event":
        raise ValidationError(
            "wrong_type", f"{where}: kind must be 'Event', got {event.get('kind')!r}"
        )
    audit_id = event.get("auditID")
    if not isinstance(audit_id, str) or not audit_id:
        raise ValidationError("missing_field", f"{where}: auditID is missing")
    if event.get("stage") not in STAGE_ORDER:
        raise ValidationError("wrong_type", f"{where}: stage {event.get('stage')!r} is not known")
    return event


def parse_webhook_body(body: bytes) -> list[dict[str, Any]]:
    """The audit events of one webhook POST body (an ``EventList``; a bare ``Event`` too).

    Raises :class:`ValidationError` naming the item at fault; an unknown ``apiVersion`` raises
    :class:`UnknownVersionError` (never guessed).
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("bad_json", f"audit webhook body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValidationError("wrong_type", "audit webhook body must be a JSON object")
    if doc.get("kind") == "Event":
        return [_check_event(doc, "audit event")]
    if doc.get("kind") != "EventList":
        raise ValidationError(
            "wrong_type", f"audit webhook kind {doc.get('kind')!r} is not EventList"
        )
    if doc.get("apiVersion") not in KNOWN_API_VERSIONS:
        raise UnknownVersionError(
            f"audit EventList apiVersion {doc.get('apiVersion')!r} is not known"
        )
    items = doc.get("items") or []
    if not isinstance(items, list):
        raise ValidationError("wrong_type", "audit EventList: items must be an array")
    return [_check_event(item, f"EventList.items[{i}]") for i, item in enumerate(items)]


def parse_log_lines(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """The audit events of the log backend's JSON lines (blank lines skipped)."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValidationError(
                "bad_json", f"audit log line {n} is not valid JSON: {exc}"
            ) from exc
        yield _check_event(doc, f"audit log line {n}")


# -- mapping ---------------------------------------------------------------------------------


def kube_request_uid(tenant: str, kubernetes_cluster: str, audit_id: str) -> str:
    """The event uid of a request: UUIDv5 of (tenant, cluster, auditID).

    The cluster takes part because clients may set ``Audit-ID`` themselves, so auditIDs are
    only unique within one API server's cluster; the tenant keeps tenants apart.
    """
    return str(uuid.uuid5(_UID_NAMESPACE, f"{tenant}\x00{kubernetes_cluster}\x00{audit_id}"))


def _rfc3339(value: object) -> str | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    dt = dt.astimezone(UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond:06d}".rstrip("0")
    return text + "Z"


def _request_time(event: dict[str, Any]) -> str:
    # requestReceivedTimestamp is the same in every stage, so (uid, time) is stable.
    for key in ("requestReceivedTimestamp", "timestamp", "stageTimestamp"):
        t = _rfc3339(event.get(key))
        if t is not None:
            return t
    raise ValidationError(
        "missing_field", f"audit event {event.get('auditID')}: no requestReceivedTimestamp"
    )


def _api_group(ref: dict[str, Any]) -> str:
    group = ref.get("apiGroup") or "core"
    version = ref.get("apiVersion") or ""
    return f"{group}/{version}" if version else str(group)


def _as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def to_kube_request(
    event: dict[str, Any], *, tenant: str, kubernetes_cluster: str
) -> dict[str, Any]:
    """One audit ``Event`` (any stage) as a ``kube.request`` event, redacted.

    ``verb`` is the HTTP method as in Teleport's kube.request (``create`` -> ``POST``); the
    Kubernetes verb stays in ``kubernetes_verb``. The redacted original is ``kube_audit``.
    """
    event = redact_event(_check_event(event, "audit event"))
    ref = _as_dict(event.get("objectRef"))
    user = _as_dict(event.get("user"))
    k8s_verb = str(event.get("verb", ""))
    out: dict[str, Any] = {
        "sv_version": EVENT_VERSION,
        "tenant": tenant,
        "event": KUBE_REQUEST_EVENT,
        "code": KUBE_REQUEST_CODE,
        "time": _request_time(event),
        "uid": kube_request_uid(tenant, kubernetes_cluster, event["auditID"]),
        "user": str(user.get("username", "")),
        "proto": "kube",
        "kubernetes_cluster": kubernetes_cluster,
        "verb": _HTTP_METHOD.get(k8s_verb, k8s_verb.upper()),
        "kubernetes_verb": k8s_verb,
        "request_path": urlsplit(str(event.get("requestURI", ""))).path,
        "kube_audit_stages": [event["stage"]],
        "kube_audit": event,
    }
    groups = user.get("groups")
    if isinstance(groups, list):
        out["kubernetes_groups"] = [str(g) for g in groups]
    impersonated = event.get("impersonatedUser")
    if isinstance(impersonated, dict) and impersonated.get("username"):
        out["kubernetes_users"] = [str(impersonated["username"])]
    ips = event.get("sourceIPs")
    if isinstance(ips, list) and ips:
        out["addr.remote"] = str(ips[0])
    if event.get("userAgent"):
        out["user_agent"] = str(event["userAgent"])
    if ref:
        out["resource_api_group"] = _api_group(ref)
        for src, dst in (
            ("resource", "resource_kind"),
            ("namespace", "resource_namespace"),
            ("name", "resource_name"),
            ("subresource", "kubernetes_subresource"),
        ):
            if ref.get(src):
                out[dst] = str(ref[src])
    status = event.get("responseStatus")
    if isinstance(status, dict) and isinstance(status.get("code"), int):
        out["response_code"] = status["code"]
    return out


def _merge_all(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    by_uid: dict[str, dict[str, Any]] = {}
    for ev in events:
        uid = ev["uid"]
        by_uid[uid] = merge_kube_requests(by_uid[uid], ev) if uid in by_uid else ev
    return list(by_uid.values())


def events_from_webhook(
    body: bytes, *, tenant: str, kubernetes_cluster: str
) -> list[dict[str, Any]]:
    """kube.request events of one webhook POST, stages of one request merged into one event."""
    return _merge_all(
        to_kube_request(e, tenant=tenant, kubernetes_cluster=kubernetes_cluster)
        for e in parse_webhook_body(body)
    )


KEEP_WHEN_CUT = (
    "sv_version", "tenant", "event", "code", "time", "uid", "user", "proto",
    "kubernetes_cluster", "verb", "kubernetes_verb", "kubernetes_subresource", "request_path",
    "resource_api_group", "resource_kind", "resource_namespace", "resource_name",
    "response_code", "kubernetes_groups", "kubernetes_users", "addr.remote", "user_agent",
    "kube_audit_stages",
)  # fmt: skip
"""What a ``kube.request`` keeps when even its identity must be cut down to fit."""
_MAX_KEPT_TEXT = 4096
_MAX_KEPT_ITEMS = 100


def fit_event(event: dict[str, Any], max_bytes: int, *, raw: bytes | None = None) -> dict[str, Any]:
    """``event`` if its record fits ``max_bytes``, else a smaller copy that does, marked
    ``sv_truncated`` (``original_bytes``, ``sha256`` of the original record, ``dropped``).

    An audit event too large for Kafka must not make the API server drop its whole batch, nor
    vanish: who did what to which resource is kept; what goes first is the bulk, the request
    and response objects of the kept original (``kube_audit``), then that original, and last
    every field but the identity ones (:data:`KEEP_WHEN_CUT`, texts cut to 4 KiB). Pure.
    ``raw``: the event's record when the caller has encoded it already."""
    raw = encode_event(event) if raw is None else raw
    if len(raw) <= max_bytes:
        return event
    marker: dict[str, Any] = {
        "original_bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "dropped": [],
    }
    out = dict(event)
    audit = out.get("kube_audit")
    if isinstance(audit, dict):
        bulk = [k for k in ("requestObject", "responseObject") if k in audit]
        out["kube_audit"] = {k: v for k, v in audit.items() if k not in bulk}
        marker["dropped"] = [f"kube_audit.{k}" for k in bulk]
        out["sv_truncated"] = marker
        if len(encode_event(out)) <= max_bytes:
            return out
        del out["kube_audit"]
        marker["dropped"] = ["kube_audit"]
        if len(encode_event(out)) <= max_bytes:
            return out
    kept: dict[str, Any] = {}
    for k in KEEP_WHEN_CUT:
        if k in event:
            v = event[k]
            if isinstance(v, str):
                v = v[:_MAX_KEPT_TEXT]
            elif isinstance(v, list):
                v = [x[:_MAX_KEPT_TEXT] if isinstance(x, str) else x for x in v[:_MAX_KEPT_ITEMS]]
            kept[k] = v
    marker["dropped"] = sorted(set(event) - set(kept))
    kept["sv_truncated"] = marker
    return kept


def events_from_log_lines(
    lines: Iterable[bytes | str], *, tenant: str, kubernetes_cluster: str
) -> list[dict[str, Any]]:
    """kube.request events of audit log lines, stages of one request merged into one event."""
    return _merge_all(
        to_kube_request(e, tenant=tenant, kubernetes_cluster=kubernetes_cluster)
        for e in parse_log_lines(lines)
    )


def _secret_block_values(secret: dict[str, Any]) -> Iterator[str]:
    for key in ("data", "stringData"):
        block = secret.get(key)
        if not isinstance(block, dict):
            continue
        for value in block.values():
            if not isinstance(value, str) or not value:
                continue
            yield value
            if key == "data":
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    yield base64.b64decode(value, validate=True).decode()


def secret_values(event: Any) -> list[str]:
    """Every value under ``data``/``stringData`` of the Secret objects anywhere in ``event``,
    base64-decoded too where it decodes to text. For tests and audits of redaction."""
    found: list[str] = []
    stack = [event]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            if obj.get("kind") == "Secret":
                found.extend(_secret_block_values(obj))
            stack.extend(obj.values())
        elif isinstance(obj, list):
            stack.extend(obj)
    return found
