"""Elastic Common Schema (ECS 8.x) documents for audit events and alerts.

Mapping (Teleport field -> ECS): ``time`` -> ``@timestamp``; ``event`` -> ``event.action``;
``code`` -> ``event.code``; ``uid`` -> ``event.id``; ``user`` -> ``user.name``; ``login`` ->
``user.target.name`` (the OS account used); ``addr.remote`` -> ``source.ip``/``source.port``;
``addr.local`` -> ``destination.ip``/``destination.port``; ``server_hostname``/``server_id`` ->
``host.name``/``host.id``; ``session.command``'s ``path``/``argv``/``pid`` ->
``process.executable``/``process.args``/``process.pid``; kube.request: ``verb`` ->
``http.request.method``, ``request_path`` -> ``url.path``, ``response_code`` ->
``http.response.status_code``, ``kubernetes_cluster``/``resource_*`` -> ``orchestrator.*``;
``tenant`` -> ``organization.id``. Everything sessionvault-specific (sid, ei, cluster) stays
under ``sessionvault.*``. ``event.kind`` is ``alert`` for alert events (``rule.*`` set),
``event`` otherwise; ``event.category``/``event.type`` follow the ECS allowed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from siem.formats.cef import _command, _host_port, _text
from siem.formats.common import PRODUCT_NAME, event_time_ms, level_of, strip_secrets

__all__ = ["ECS_VERSION", "to_ecs"]

ECS_VERSION = "8.11.0"
_SEVERITY = {"informational": 1, "low": 21, "medium": 47, "high": 73, "critical": 99}

# event type -> (event.category, event.type)
_CATEGORIES: dict[str, tuple[list[str], list[str]]] = {
    "session.start": (["session"], ["start"]),
    "session.join": (["session"], ["start"]),
    "session.end": (["session"], ["end"]),
    "session.leave": (["session"], ["end"]),
    "user.login": (["authentication"], ["start"]),
    "kube.request": (["api"], ["access"]),
    "session.command": (["process"], ["start"]),
    "exec": (["process"], ["start"]),
    "session.network": (["network"], ["connection"]),
}


def _iso(ms: int) -> str | None:
    if ms <= 0:
        return None
    from datetime import UTC, datetime

    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _endpoint(addr: Any) -> dict[str, Any] | None:
    host, port = _host_port(addr)
    if not host:
        return None
    out: dict[str, Any] = {"address": host, "ip": host}
    if port.isdigit():
        out["port"] = int(port)
    return out


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _prune(v)
        if v not in (None, "", [], {}):
            out[k] = v
    return out


def to_ecs(event: Mapping[str, Any]) -> dict[str, Any]:
    """The ECS document of one event (secrets stripped; empty fields left out)."""
    ev = strip_secrets(event)
    etype = _text(ev.get("event"))
    is_alert = etype.startswith("alert.")
    ms = event_time_ms(ev)
    success = ev.get("success")
    if is_alert:
        category, types = ["intrusion_detection"], ["indicator"]
    else:
        category, types = _CATEGORIES.get(etype, ([], ["info"]))
    doc: dict[str, Any] = {
        "@timestamp": _iso(ms) or _text(ev.get("time")),
        "ecs": {"version": ECS_VERSION},
        "message": _text(ev.get("title")) if is_alert else etype,
        "event": {
            "kind": "alert" if is_alert else "event",
            "category": category,
            "type": types,
            "action": etype,
            "code": _text(ev.get("code")),
            "id": _text(ev.get("uid")),
            "module": PRODUCT_NAME,
            "dataset": f"{PRODUCT_NAME}.{'alert' if is_alert else 'audit'}",
            "severity": _SEVERITY[level_of(ev)],
            "outcome": None if success is None else ("success" if success else "failure"),
            # ECS: "reference URL linking to additional information about this event": the
            # API path that replays the session from this moment (schemas.links).
            "reference": _text(ev.get("replay_api")),
        },
        "organization": {"id": _text(ev.get("tenant"))},
        "user": {
            "name": _text(ev.get("user")),
            "target": {"name": _text(ev.get("login"))},
        },
        "related": {"user": sorted({_text(ev.get(k)) for k in ("user", "login")} - {""})},
        "source": _endpoint(ev.get("addr.remote")),
        "destination": _endpoint(ev.get("addr.local")),
        "host": {
            "name": _text(ev.get("server_hostname")),
            "id": _text(ev.get("server_id")),
        },
        "sessionvault": {
            "sid": _text(ev.get("sid")),
            "ei": ev.get("ei"),
            "cluster_name": _text(ev.get("cluster_name")),
            "offset_ms": ev.get("offset_ms") if isinstance(ev.get("offset_ms"), int) else None,
            "replay": _text(ev.get("replay")),
            "replay_api": _text(ev.get("replay_api")),
        },
    }
    if etype in ("session.command", "exec"):
        argv = ev.get("argv")
        doc["process"] = {
            "executable": _text(ev.get("path")),
            "name": _text(ev.get("program")),
            "args": [_text(a) for a in argv] if isinstance(argv, list) else None,
            "command_line": _command(ev),
            "pid": ev.get("pid") if isinstance(ev.get("pid"), int) else None,
            "exit_code": ev.get("return_code", ev.get("exitCode")),
        }
    if etype == "kube.request" or ev.get("kubernetes_cluster"):
        code = ev.get("response_code")
        doc["http"] = {
            "request": {"method": _text(ev.get("verb"))},
            "response": {"status_code": code if isinstance(code, int) else None},
        }
        doc["url"] = {"path": _text(ev.get("request_path"))}
        doc["orchestrator"] = {
            "type": "kubernetes",
            "cluster": {"name": _text(ev.get("kubernetes_cluster"))},
            "namespace": _text(ev.get("resource_namespace")),
            "resource": {
                "type": _text(ev.get("resource_kind")),
                "name": _text(ev.get("resource_name")),
            },
        }
        doc["user_agent"] = {"original": _text(ev.get("user_agent"))}
    if is_alert:
        doc["rule"] = {
            "id": _text(ev.get("rule_id")),
            "name": _text(ev.get("title")),
            "description": _text(ev.get("description")),
            "ruleset": "sigma",
        }
        doc["sessionvault"]["matched_uid"] = _text(ev.get("matched_uid"))
    return _prune(doc)
