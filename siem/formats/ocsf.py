"""OCSF 1.x events (schema version :data:`OCSF_VERSION`) for the event types that have a class.

| sessionvault event                         | OCSF class                 | activity_id          |
| ------------------------------------------ | -------------------------- | -------------------- |
| session.start / session.join               | SSH Activity 4007          | 1 Open               |
| session.end / session.leave                | SSH Activity 4007          | 2 Close              |
| user.login                                 | Authentication 3002        | 1 Logon              |
| kube.request                               | API Activity 6003          | from the verb (*)    |
| session.command / exec                     | Process Activity 1007      | 1 Launch             |

(*) Kubernetes verb create 1 Create; get/list/watch 2 Read; update/patch 3 Update;
delete/deletecollection 4 Delete; otherwise from the HTTP method, else 0 Unknown.

Every event carries the class's required attributes: ``class_uid``, ``category_uid``,
``activity_id``, ``type_uid = class_uid * 100 + activity_id``, ``severity_id``, ``time`` (ms),
``metadata.product{name,vendor_name,version}`` and ``metadata.version``, plus the per-class
ones (SSH: ``dst_endpoint``, and ``actor`` through the ``host`` profile named in
``metadata.profiles``; Authentication: ``user`` and ``service``; API: ``actor``,
``api.operation``, ``src_endpoint``; Process: ``actor``, ``device``, ``process``). Values
that have no OCSF attribute go under ``unmapped`` (OCSF's place for them). The tests validate
each class against the JSON Schema generated from the official OCSF schema (PyPI
``ocsf-json-schema``), never against one written here. Alert events (``alert.sigma``) map
to Detection Finding 2004 (activity 1 Create, ``finding_info.analytic`` = the rule). Other
event types map to None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from schemas.kube import kube_verb
from siem.formats.cef import _command, _host_port, _text
from siem.formats.common import (
    PRODUCT_NAME,
    PRODUCT_VERSION,
    VENDOR_NAME,
    event_time_ms,
    level_of,
    strip_secrets,
)

__all__ = ["OCSF_CLASSES", "OCSF_VERSION", "ocsf_class_of", "to_ocsf"]

OCSF_VERSION = "1.5.0"

SSH_ACTIVITY = 4007
AUTHENTICATION = 3002
API_ACTIVITY = 6003
PROCESS_ACTIVITY = 1007
DETECTION_FINDING = 2004
# class_uid -> category_uid (4 Network, 3 Identity & Access, 6 Application, 1 System).
_CATEGORY = {SSH_ACTIVITY: 4, AUTHENTICATION: 3, API_ACTIVITY: 6, PROCESS_ACTIVITY: 1}
OCSF_CLASSES: dict[str, tuple[int, int]] = {
    "session.start": (SSH_ACTIVITY, 1),
    "session.join": (SSH_ACTIVITY, 1),
    "session.end": (SSH_ACTIVITY, 2),
    "session.leave": (SSH_ACTIVITY, 2),
    "user.login": (AUTHENTICATION, 1),
    "kube.request": (API_ACTIVITY, 0),  # activity from the verb, below
    "session.command": (PROCESS_ACTIVITY, 1),
    "exec": (PROCESS_ACTIVITY, 1),
}
_API_ACTIVITY = {
    "create": 1,
    "get": 2,
    "list": 2,
    "watch": 2,
    "update": 3,
    "patch": 3,
    "delete": 4,
    "deletecollection": 4,
}
_HTTP_TO_ACTIVITY = {"POST": 1, "GET": 2, "PUT": 3, "PATCH": 3, "DELETE": 4}
_SEVERITY_ID = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
# Fields copied to the OCSF attributes below; everything else non-empty goes to "unmapped".
_MAPPED = frozenset(
    {
        "event", "code", "time", "uid", "sid", "user", "login", "addr.remote", "addr.local",
        "server_id", "server_hostname", "cluster_name", "tenant", "success", "error",
        "path", "argv", "pid", "ppid", "program", "command", "return_code", "exitCode",
        "verb", "kubernetes_verb", "request_path", "response_code", "resource_kind",
        "resource_name", "resource_namespace", "resource_api_group", "kubernetes_cluster",
        "kubernetes_groups", "user_agent", "kube_audit", "sv_version", "ei", "method",
        "proto",
    }
)  # fmt: skip


def ocsf_class_of(event: Mapping[str, Any]) -> int | None:
    """The OCSF class_uid ``event`` maps to, or None."""
    if _text(event.get("event")).startswith("alert."):
        return DETECTION_FINDING
    entry = OCSF_CLASSES.get(_text(event.get("event")))
    return None if entry is None else entry[0]


def _endpoint(addr: Any, **extra: Any) -> dict[str, Any]:
    host, port = _host_port(addr)
    out: dict[str, Any] = {}
    if host:
        out["ip"] = host
    if port.isdigit():
        out["port"] = int(port)
    out.update({k: v for k, v in extra.items() if v not in (None, "")})
    return out


def _user(ev: Mapping[str, Any]) -> dict[str, Any]:
    user: dict[str, Any] = {"name": _text(ev.get("user")) or "unknown"}
    groups = ev.get("kubernetes_groups")
    if isinstance(groups, list) and groups:
        user["groups"] = [{"name": _text(g)} for g in groups]
    return user


def _actor(ev: Mapping[str, Any]) -> dict[str, Any]:
    actor: dict[str, Any] = {"user": _user(ev)}
    if ev.get("sid"):
        actor["session"] = {"uid": _text(ev.get("sid"))}
    return actor


def _unmapped(ev: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ev.items() if k not in _MAPPED and v not in (None, "", [], {})}


def _metadata(ev: Mapping[str, Any], etype: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "product": {
            "name": PRODUCT_NAME,
            "vendor_name": VENDOR_NAME,
            "version": PRODUCT_VERSION,
        },
        "version": OCSF_VERSION,
        "uid": _text(ev.get("uid")),
        "log_name": etype,
    }
    if ev.get("sid"):
        metadata["correlation_uid"] = _text(ev.get("sid"))
    if ev.get("tenant"):
        metadata["tenant_uid"] = _text(ev.get("tenant"))
    return metadata


def _detection_finding(ev: Mapping[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """An ``alert.*`` event (a Sigma match) as Detection Finding 2004, activity 1 Create."""
    analytic: dict[str, Any] = {"type_id": 1, "type": "Rule", "name": _text(ev.get("title"))}
    if ev.get("rule_id"):
        analytic["uid"] = _text(ev.get("rule_id"))
    info: dict[str, Any] = {
        "uid": _text(ev.get("uid")) or "unknown",
        "title": _text(ev.get("title")),
        "analytic": analytic,
        "types": ["sigma"],
    }
    if ev.get("description"):
        info["desc"] = _text(ev.get("description"))
    if ev.get("matched_uid"):
        info["related_events"] = [{"uid": _text(ev.get("matched_uid"))}]
    if ev.get("replay"):
        info["src_url"] = _text(ev.get("replay_api")) or None
    info = {k: v for k, v in info.items() if v not in (None, "")}
    out: dict[str, Any] = {
        "class_uid": DETECTION_FINDING,
        "category_uid": 2,
        "activity_id": 1,
        "type_uid": DETECTION_FINDING * 100 + 1,
        "severity_id": _SEVERITY_ID[level_of(ev)],
        "time": event_time_ms(ev),
        "metadata": metadata,
        "message": _text(ev.get("title")) or _text(ev.get("event")),
        "finding_info": info,
        "is_alert": True,
    }
    if ev.get("user"):
        out["evidences"] = [{"user": _user(ev)}]
    unmapped = _unmapped(ev)
    if unmapped:
        out["unmapped"] = unmapped
    return out


def _ssh_activity(ev: Mapping[str, Any], out: dict[str, Any], metadata: dict[str, Any]) -> None:
    """SSH Activity (4007): the session's endpoints and who."""
    server, server_uid = _text(ev.get("server_hostname")), _text(ev.get("server_id"))
    src = _endpoint(ev.get("addr.remote"))
    if src:
        out["src_endpoint"] = src
    out["dst_endpoint"] = _endpoint(
        ev.get("addr.local"), hostname=server or None, uid=server_uid or None
    ) or {"uid": server_uid or "unknown"}
    out["actor"] = _actor(ev)
    if ev.get("login"):
        out["actor"]["user"]["account"] = {"name": _text(ev.get("login"))}
    # actor (who, and the session) exists on Network Activity classes only through the OCSF
    # "host" profile, declared in metadata.profiles as OCSF requires.
    metadata["profiles"] = ["host"]


def _authentication(ev: Mapping[str, Any], out: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Authentication (3002): the user, the cluster as the service, where from, how."""
    out["user"] = _user(ev)
    out["service"] = {"name": _text(ev.get("cluster_name")) or PRODUCT_NAME}
    src = _endpoint(ev.get("addr.remote"))
    if src:
        out["src_endpoint"] = src
    if ev.get("method"):
        out["auth_protocol"] = _text(ev.get("method"))
    out["is_remote"] = True


def _kube_resource(ev: Mapping[str, Any]) -> list[dict[str, Any]]:
    resource = {
        "type": _text(ev.get("resource_kind")),
        "name": _text(ev.get("resource_name")),
        "namespace": _text(ev.get("resource_namespace")),
    }
    if resource["type"] and not resource["name"]:
        # OCSF needs a name or uid; a collection request (list, create with generateName)
        # names no object, so the request path identifies it.
        resource["uid"] = _text(ev.get("request_path")) or resource["type"]
    if not (resource["type"] or resource["name"]):
        return []
    namespace = {"group": {"name": resource["namespace"]}} if resource["namespace"] else {}
    return [{k: v for k, v in resource.items() if v and k != "namespace"} | namespace]


def _api_activity(ev: Mapping[str, Any], out: dict[str, Any], metadata: dict[str, Any]) -> None:
    """API Activity (6003): a Kubernetes API request (verb, resource, response)."""
    code = ev.get("response_code")
    api: dict[str, Any] = {
        "operation": kube_verb(ev).verb or "unknown",
        "service": {"name": "kubernetes"},
    }
    audit = ev.get("kube_audit")
    if isinstance(audit, dict) and audit.get("auditID"):
        api["request"] = {"uid": _text(audit.get("auditID"))}
    if isinstance(code, int):
        api["response"] = {"code": code}
    out["api"] = api
    out["actor"] = _actor(ev)
    if ev.get("user_agent"):
        out["actor"]["app_name"] = _text(ev.get("user_agent"))
    out["src_endpoint"] = _endpoint(ev.get("addr.remote")) or {"name": "unknown"}
    out["http_request"] = {
        "http_method": _text(ev.get("verb")) or "GET",
        "url": {"path": _text(ev.get("request_path"))},
    }
    resources = _kube_resource(ev)
    if resources:
        out["resources"] = resources
    if ev.get("kubernetes_cluster"):
        out["dst_endpoint"] = {"name": _text(ev.get("kubernetes_cluster"))}
    if isinstance(code, int):
        out["status_id"] = 1 if code < 400 else 2


def _process(ev: Mapping[str, Any]) -> dict[str, Any]:
    process: dict[str, Any] = {"cmd_line": _command(ev)}
    exe = _text(ev.get("path"))
    if exe:
        process["file"] = {"path": exe, "name": exe.rsplit("/", 1)[-1], "type_id": 1}
        process["name"] = exe.rsplit("/", 1)[-1]
    elif ev.get("program"):
        process["name"] = _text(ev.get("program"))
    else:
        process["name"] = _command(ev).split(" ", 1)[0] or "unknown"
    if isinstance(ev.get("pid"), int):
        process["pid"] = ev["pid"]
    else:
        # OCSF needs pid, uid or cpid; an exec event has no pid, so the process is identified
        # by the event that started it.
        process["uid"] = _text(ev.get("uid")) or "unknown"
    if isinstance(ev.get("ppid"), int):
        process["parent_process"] = {"pid": ev["ppid"]}
    if ev.get("login"):
        process["user"] = {"name": _text(ev.get("login"))}
    return process


def _process_activity(ev: Mapping[str, Any], out: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Process Activity (1007): a command run in a session, on which device, its exit code."""
    server, server_uid = _text(ev.get("server_hostname")), _text(ev.get("server_id"))
    out["actor"] = _actor(ev)
    device: dict[str, Any] = {"type_id": 0, "hostname": server or None, "uid": server_uid or None}
    out["device"] = {k: v for k, v in device.items() if v is not None}
    if "hostname" not in out["device"] and "uid" not in out["device"]:
        out["device"]["name"] = "unknown"
    out["process"] = _process(ev)
    rc = ev.get("return_code", ev.get("exitCode"))
    if isinstance(rc, int):
        out["exit_code"] = rc


_ClassMapping = Callable[[Mapping[str, Any], dict[str, Any], dict[str, Any]], None]

#: One mapping per OCSF class: fills the class's own attributes into the base event.
_CLASS_MAPPINGS: dict[int, _ClassMapping] = {
    SSH_ACTIVITY: _ssh_activity,
    AUTHENTICATION: _authentication,
    API_ACTIVITY: _api_activity,
    PROCESS_ACTIVITY: _process_activity,
}


def _base_event(
    ev: Mapping[str, Any], etype: str, class_uid: int, activity_id: int, metadata: dict[str, Any]
) -> dict[str, Any]:
    """The attributes every class has (base event), status included."""
    out: dict[str, Any] = {
        "class_uid": class_uid,
        "category_uid": _CATEGORY[class_uid],
        "activity_id": activity_id,
        "type_uid": class_uid * 100 + activity_id,
        "severity_id": _SEVERITY_ID[level_of(ev)],
        "time": event_time_ms(ev),
        "metadata": metadata,
        "message": etype,
    }
    if ev.get("code"):
        out["status_code"] = _text(ev.get("code"))
    success = ev.get("success")
    if isinstance(success, bool):
        out["status_id"] = 1 if success else 2
    if ev.get("error"):
        out["status_detail"] = _text(ev.get("error"))
    return out


def to_ocsf(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The OCSF event for ``event`` (secrets stripped), or None if its type has no class."""
    ev = strip_secrets(event)
    etype = _text(ev.get("event"))
    if etype.startswith("alert."):
        return _detection_finding(ev, _metadata(ev, etype))
    entry = OCSF_CLASSES.get(etype)
    if entry is None:
        return None
    class_uid, activity_id = entry
    if class_uid == API_ACTIVITY:
        activity_id = _API_ACTIVITY.get(kube_verb(ev).verb) or _HTTP_TO_ACTIVITY.get(
            _text(ev.get("verb")).upper(), 0
        )
    metadata = _metadata(ev, etype)
    out = _base_event(ev, etype, class_uid, activity_id, metadata)
    mapping = _CLASS_MAPPINGS.get(class_uid)
    if mapping is not None:
        mapping(ev, out, metadata)
    unmapped = _unmapped(ev)
    if unmapped:
        out["unmapped"] = unmapped
    return out
