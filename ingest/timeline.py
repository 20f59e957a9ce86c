"""kubectl review: what a user did in a cluster over a time window.

``kube.request`` audit events (verb, resource, namespace, name, response code) interleaved in
time with kubectl exec sessions (``sessions.kind = 'kube'``), each session linked to its replay.
:func:`kube_timeline` reads PostgreSQL, always within one tenant (and, for a cluster-bound API
token, within its clusters); grouping and formatting are pure functions.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.links import replay_api, replay_command
from sessionvault.errors import ValidationError
from storage.kube_timeline import Executor, kube_requests, kube_sessions

__all__ = [
    "GROUP_BY",
    "Group",
    "Timeline",
    "TimelineEntry",
    "format_table",
    "group_entries",
    "kube_timeline",
    "replay_url",
]

GROUP_BY = ("user", "cluster", "session")
DEFAULT_LIMIT = 10_000


def replay_url(sid: str) -> str:
    """The API path that replays (exports) a session."""
    return replay_api(sid)


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of a timeline: an API request (``kind="request"``) or an exec session."""

    kind: str
    time: datetime
    user: str
    cluster: str
    uid: str = ""
    verb: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    response_code: int | None = None
    request_path: str = ""
    sid: str = ""
    ended_at: datetime | None = None
    duration_ms: int = 0
    exit_code: int | None = None
    command: str = ""

    @property
    def replay_command(self) -> str:
        return replay_command(self.sid) if self.kind == "session" else ""

    @property
    def end(self) -> datetime:
        return self.ended_at or self.time

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "user": self.user,
            "cluster": self.cluster,
        }
        if self.kind == "request":
            out.update(
                uid=self.uid,
                verb=self.verb,
                resource=self.resource,
                subresource=self.subresource,
                namespace=self.namespace,
                name=self.name,
                response_code=self.response_code,
                request_path=self.request_path,
            )
        else:
            out.update(
                sid=self.sid,
                ended_at=self.ended_at.isoformat().replace("+00:00", "Z")
                if self.ended_at
                else None,
                duration_ms=self.duration_ms,
                exit_code=self.exit_code,
                command=self.command,
                replay={"command": self.replay_command, "url": replay_url(self.sid)},
            )
        return out


@dataclass(frozen=True, slots=True)
class Group:
    """Entries sharing a key (a user, a cluster, or a session id; ``""`` = no session)."""

    key: str
    entries: tuple[TimelineEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "entries": [e.to_json() for e in self.entries]}


@dataclass(frozen=True, slots=True)
class Timeline:
    """Entries in time order; ``truncated`` when ``limit`` cut the requests short."""

    entries: tuple[TimelineEntry, ...]
    truncated: bool = False
    groups: tuple[Group, ...] = field(default=())

    def to_json(self, *, grouped: bool = False) -> dict[str, Any]:
        """The JSON answer of the API and of ``kube-timeline --format json`` (``groups`` when
        the timeline was grouped, even if empty)."""
        out: dict[str, Any] = {
            "entries": [e.to_json() for e in self.entries],
            "truncated": self.truncated,
        }
        if grouped:
            out["groups"] = [g.to_json() for g in self.groups]
        return out

    def format_text(self, group_by: str | None) -> str:
        """The plain-text tables of ``kube-timeline`` (one per group when grouped)."""
        if not group_by:
            return format_table(self.entries) if self.entries else ""
        return "\n".join(
            f"== {group_by} {g.key or '(no session)'}\n{format_table(g.entries)}"
            for g in self.groups
        )


def _clusters_filter(cluster: str | None, allowed: Collection[str] | None) -> list[str] | None:
    if cluster is not None and allowed and cluster not in allowed:
        # The caller's token may not see this cluster: an empty filter, not an error that
        # would tell which clusters exist.
        return []
    if cluster is not None:
        return [cluster]
    return sorted(allowed) if allowed else None


async def kube_timeline(
    db: Executor,
    tenant: str,
    *,
    since: datetime,
    until: datetime,
    user: str | None = None,
    cluster: str | None = None,
    allowed_clusters: Collection[str] | None = None,
    group_by: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Timeline:
    """kube.request events and kube exec sessions of ``tenant`` in ``[since, until)``.

    ``allowed_clusters`` (a cluster-bound token's clusters; None or empty: all) bounds what
    is visible whatever ``cluster`` asks for. Sessions overlapping the window are included.
    """
    if since.tzinfo is None or until.tzinfo is None:
        raise ValidationError("wrong_type", "since/until must carry a UTC offset")
    if until <= since:
        raise ValidationError("wrong_type", "until must be after since")
    if group_by is not None and group_by not in GROUP_BY:
        raise ValidationError("wrong_type", f"group_by must be one of {', '.join(GROUP_BY)}")
    clusters = _clusters_filter(cluster, allowed_clusters)
    reqs = await kube_requests(db, tenant, since, until, user, clusters, limit + 1)
    sess = await kube_sessions(db, tenant, since, until, user, clusters, limit)
    truncated = len(reqs) > limit
    entries = [
        TimelineEntry(
            "request",
            r["time"],
            r["user_name"],
            r["cluster"] or "",
            uid=r["uid"],
            verb=r["verb"],
            resource=r["resource"],
            subresource=r["subresource"],
            namespace=r["namespace"],
            name=r["name"],
            response_code=r["response_code"],
            request_path=r["request_path"],
        )
        for r in reqs[:limit]
    ]
    entries += [
        TimelineEntry(
            "session",
            s["started_at"],
            s["user_name"],
            s["kubernetes_cluster"],
            sid=s["sid"],
            ended_at=s["ended_at"],
            duration_ms=s["duration_ms"],
            exit_code=s["exit_code"],
            command=s["command"],
        )
        for s in sess
    ]
    ordered = tuple(sorted(entries, key=_order))
    groups = tuple(group_entries(ordered, group_by)) if group_by else ()
    return Timeline(ordered, truncated, groups)


def _order(e: TimelineEntry) -> tuple[datetime, int, str]:
    # A session sorts before requests of the same instant: it is their context.
    return (e.time, 0 if e.kind == "session" else 1, e.sid or e.uid)


def group_entries(entries: Sequence[TimelineEntry], by: str) -> list[Group]:
    """Group time-ordered entries by ``user``, ``cluster`` or ``session``.

    By session, a request belongs to the exec session of the same user and cluster whose
    time span contains it (the earliest such); requests outside every session form the group
    with key ``""``. Groups are ordered by their first entry; entries stay in time order.
    """
    if by not in GROUP_BY:
        raise ValidationError("wrong_type", f"group_by must be one of {', '.join(GROUP_BY)}")
    buckets: dict[str, list[TimelineEntry]] = {}
    sessions = [e for e in entries if e.kind == "session"]
    for e in entries:
        if by == "user":
            key = e.user
        elif by == "cluster":
            key = e.cluster
        elif e.kind == "session":
            key = e.sid
        else:
            key = next(
                (
                    s.sid
                    for s in sessions
                    if s.user == e.user and s.cluster == e.cluster and s.time <= e.time <= s.end
                ),
                "",
            )
        buckets.setdefault(key, []).append(e)
    return [Group(k, tuple(v)) for k, v in buckets.items()]


def _describe(e: TimelineEntry) -> str:
    if e.kind == "session":
        code = "running" if e.exit_code is None and e.ended_at is None else f"exit {e.exit_code}"
        cmd = f" {e.command}" if e.command else ""
        return f"exec session {e.sid}{cmd} ({e.duration_ms / 1000:.1f}s, {code})"
    what = e.resource + (f"/{e.subresource}" if e.subresource else "")
    where = f"{e.namespace}/{e.name}" if e.namespace else e.name
    code = "" if e.response_code is None else f" -> {e.response_code}"
    return f"{e.verb} {what} {where}".rstrip() + code


def format_table(entries: Iterable[TimelineEntry]) -> str:
    """A plain-text table: time, user, cluster, what happened (and how to replay it)."""
    lines = []
    for e in entries:
        line = f"{e.time.isoformat(timespec='milliseconds')}  {e.user}  {e.cluster}  {_describe(e)}"
        if e.kind == "session":
            line += f"  [replay: {e.replay_command}]"
        lines.append(line)
    return "\n".join(lines)
