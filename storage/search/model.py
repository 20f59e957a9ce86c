"""The search model both backends share (PURE: no PostgreSQL, no OpenSearch imports).

One definition of the query, the hits, the cursor, the normalisation and the documents, so the
PostgreSQL backend (:mod:`storage.search.pg`) and the OpenSearch backend
(:mod:`storage.search.opensearch`) give identical results for the same :class:`Query`.

Semantics (see docs/search.md):

* A hit is an EVENT (a row of ``events``) or an OUTPUT segment (a rendered line of a session's
  terminal output, ``text_segments``). ``Query.kinds`` selects which.
* ``tenant`` is mandatory. ``scope_kubernetes_clusters`` (from a cluster-bound token) restricts
  hits to those Kubernetes clusters on top of any filter.
* Filters are tuples of values, OR-ed within a filter, AND-ed across filters; exact,
  case-sensitive. Event-only filters (:data:`EVENT_ONLY_FILTERS`) exclude output segments.
* ``since`` is inclusive, ``until`` exclusive; times are compared as integer microseconds since
  the epoch (``time_us``).
* ``text`` terms are AND-ed; each is a literal, case-insensitive substring after :func:`norm`
  (``str.casefold``) of both sides. No syntax: ``* ? " AND % _ \\ ' ;`` are plain characters.
* Order: ``time_us`` DESC, then ``id`` DESC by code point (event uid, or
  ``f"{sid}/{seg_no:012d}"``).
* Pagination: keyset; the cursor carries (time_us, id) of the last hit and a fingerprint of the
  query, so a cursor is rejected when used with another query.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, runtime_checkable

import orjson

from schemas import links
from schemas.kube import kube_verb
from sessionvault.errors import ValidationError
from sessionvault.timespec import parse_rfc3339

KIND_EVENT = "event"
KIND_OUTPUT = "output"
KINDS = (KIND_EVENT, KIND_OUTPUT)
Kind = Literal["event", "output"]

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_TERMS = 16
MAX_TERM_CHARS = 1000
MAX_FILTER_VALUES = 1000
SEGMENT_MAX_CHARS = 2000

# Filters, by Query attribute name. Segments inherit the session's who/where values.
SESSION_FILTERS = ("user", "login", "server_id", "cluster_name", "kubernetes_cluster", "sid")
EVENT_ONLY_FILTERS = (
    "kubernetes_namespace",
    "kubernetes_resource",
    "verb",
    "event",
    "code",
)
FILTERS = SESSION_FILTERS + EVENT_ONLY_FILTERS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_VERSION = 1


def norm(s: str) -> str:
    """The normalisation of searchable text and of query terms: Unicode case folding.

    ``str.casefold`` works code point by code point, so ``norm(a + b) == norm(a) + norm(b)``
    (used to map a match in the normalised text back to the original characters).
    """
    return s.casefold()


# -- time ------------------------------------------------------------------------------------


def to_us(when: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact, no float)."""
    if when.tzinfo is None:
        raise ValidationError("bad_query", f"time {when.isoformat()} has no UTC offset")
    d = when - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def from_us(time_us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=time_us)


def format_time_us(time_us: int) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-01-02T03:04:05.000006Z``."""
    return from_us(time_us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time_us(value: str) -> int:
    """RFC 3339 text to microseconds since the epoch (:func:`sessionvault.timespec.parse_rfc3339`:
    digits beyond microseconds are truncated, as ``datetime.fromisoformat`` does, so this agrees
    with the writer, which derives ``time_us`` from the parsed datetime)."""
    return to_us(parse_rfc3339(value))


# -- the query -------------------------------------------------------------------------------


def _tuple_of_str(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str | bytes):
        raise ValidationError("bad_query", f"{name}: give a sequence of strings, not one string")
    if not isinstance(value, Iterable):
        raise ValidationError("bad_query", f"{name}: expected a sequence of strings")
    out = tuple(value)
    for v in out:
        if not isinstance(v, str):
            raise ValidationError("bad_query", f"{name}: {v!r} is not a string")
        if "\x00" in v:
            raise ValidationError("bad_query", f"{name}: values cannot contain NUL")
    return out


@dataclass(frozen=True)
class Query:
    """One search. Lists given for tuple fields are turned into tuples; every value is checked
    (:class:`ValidationError` with reason ``bad_query`` says which field is wrong)."""

    tenant: str
    text: tuple[str, ...] = ()
    kinds: tuple[str, ...] = KINDS
    user: tuple[str, ...] = ()
    login: tuple[str, ...] = ()
    server_id: tuple[str, ...] = ()
    cluster_name: tuple[str, ...] = ()
    kubernetes_cluster: tuple[str, ...] = ()
    kubernetes_namespace: tuple[str, ...] = ()
    kubernetes_resource: tuple[str, ...] = ()
    verb: tuple[str, ...] = ()
    event: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    sid: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    # Set from a cluster-bound token, never from user input: None = every cluster.
    scope_kubernetes_clusters: tuple[str, ...] | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tenant, str) or not self.tenant or "\x00" in self.tenant:
            raise ValidationError("bad_query", "tenant: a non-empty string is required")
        for name in ("text", "kinds", *FILTERS):
            object.__setattr__(self, name, _tuple_of_str(name, getattr(self, name)))
        # Kubernetes verbs and subresources are lower case: --verb DELETE means delete, never
        # Teleport's HTTP method (schemas.kube).
        object.__setattr__(self, "verb", tuple(v.lower() for v in self.verb))
        if self.scope_kubernetes_clusters is not None:
            object.__setattr__(
                self,
                "scope_kubernetes_clusters",
                _tuple_of_str("scope_kubernetes_clusters", self.scope_kubernetes_clusters),
            )
        if not self.kinds:
            raise ValidationError("bad_query", "kinds: choose at least one of event, output")
        for k in self.kinds:
            if k not in KINDS:
                raise ValidationError("bad_query", f"kinds: {k!r} is not one of event, output")
        object.__setattr__(self, "kinds", tuple(k for k in KINDS if k in self.kinds))
        if len(self.text) > MAX_TERMS:
            raise ValidationError("bad_query", f"text: at most {MAX_TERMS} terms")
        for t in self.text:
            if not t:
                raise ValidationError("bad_query", "text: empty search term")
            if len(t) > MAX_TERM_CHARS:
                raise ValidationError("bad_query", f"text: a term is over {MAX_TERM_CHARS} chars")
        for name in FILTERS:
            if len(getattr(self, name)) > MAX_FILTER_VALUES:
                raise ValidationError("bad_query", f"{name}: at most {MAX_FILTER_VALUES} values")
        for name in ("since", "until"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, datetime) or v.tzinfo is None):
                raise ValidationError("bad_query", f"{name}: an aware datetime is required")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValidationError("bad_query", "since must be before until")
        if (
            not isinstance(self.limit, int)
            or isinstance(self.limit, bool)
            or not 1 <= self.limit <= MAX_LIMIT
        ):
            raise ValidationError("bad_query", f"limit: an integer from 1 to {MAX_LIMIT}")
        if self.cursor is not None:
            decode_cursor(self.cursor, self)  # rejects a foreign or malformed cursor now

    @property
    def since_us(self) -> int | None:
        return None if self.since is None else to_us(self.since)

    @property
    def until_us(self) -> int | None:
        return None if self.until is None else to_us(self.until)

    @property
    def terms_norm(self) -> tuple[str, ...]:
        """The text terms, normalised (what is matched against ``text_norm``)."""
        return tuple(norm(t) for t in self.text)

    @property
    def wants_events(self) -> bool:
        return KIND_EVENT in self.kinds

    @property
    def wants_output(self) -> bool:
        """Output segments can match: asked for, and no event-only filter is set."""
        return KIND_OUTPUT in self.kinds and not any(getattr(self, f) for f in EVENT_ONLY_FILTERS)

    @property
    def after(self) -> tuple[int, str] | None:
        """The keyset position from the cursor: hits strictly after it (in DESC order)."""
        return None if self.cursor is None else decode_cursor(self.cursor, self)

    def filters(self) -> dict[str, tuple[str, ...]]:
        """The non-empty filters by name."""
        return {f: getattr(self, f) for f in FILTERS if getattr(self, f)}

    def fingerprint(self) -> str:
        """A digest of everything that selects hits (not the cursor, not the page size)."""
        doc = {
            "tenant": self.tenant,
            "text": list(self.text),
            "kinds": list(self.kinds),
            "filters": {k: list(v) for k, v in self.filters().items()},
            "since": self.since_us,
            "until": self.until_us,
            "scope": None
            if self.scope_kubernetes_clusters is None
            else sorted(self.scope_kubernetes_clusters),
        }
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    def with_cursor(self, cursor: str | None) -> Query:
        return dataclasses.replace(self, cursor=cursor)


# -- cursor ----------------------------------------------------------------------------------


def encode_cursor(time_us: int, id: str, query: Query) -> str:
    """Opaque cursor: urlsafe base64 of [version, time_us, id, query fingerprint]."""
    raw = orjson.dumps([_CURSOR_VERSION, time_us, id, query.fingerprint()])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, query: Query) -> tuple[int, str]:
    """(time_us, id) of a cursor made by :func:`encode_cursor` for this same query."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        v, time_us, id_, fp = orjson.loads(raw)
    except Exception as exc:
        raise ValidationError("bad_cursor", "cursor: malformed") from exc
    if (
        v != _CURSOR_VERSION
        or not isinstance(time_us, int)
        or isinstance(time_us, bool)
        or not isinstance(id_, str)
        or not isinstance(fp, str)
    ):
        raise ValidationError("bad_cursor", "cursor: malformed")
    if fp != query.fingerprint():
        raise ValidationError("bad_cursor", "cursor: it belongs to a different query")
    return time_us, id_


# -- hits ------------------------------------------------------------------------------------


def replay_command(sid: str, offset_ms: int) -> str:
    """The CLI command that replays ``sid`` from ``offset_ms`` (:mod:`schemas.links`)."""
    return links.replay_command(sid, offset_ms)


def replay_path(sid: str, offset_ms: int) -> str:
    """The HTTP API path exporting ``sid`` from ``offset_ms`` (:mod:`schemas.links`)."""
    return links.replay_api(sid, offset_ms)


@dataclass(frozen=True)
class Hit:
    """What both kinds of hit carry. ``offset_ms`` is where in the session the hit is (None
    when unknown, e.g. an event whose session is not stored)."""

    kind: str
    tenant: str
    time_us: int
    id: str
    user: str
    login: str
    server_id: str
    cluster_name: str
    kubernetes_cluster: str
    sid: str | None
    offset_ms: int | None

    @property
    def time(self) -> str:
        return format_time_us(self.time_us)

    @property
    def replay(self) -> str | None:
        """``sessionvault play SID --start-at SECONDS`` for hits in a session."""
        if not self.sid:
            return None
        return replay_command(self.sid, self.offset_ms or 0)

    @property
    def replay_api(self) -> str | None:
        if not self.sid:
            return None
        return replay_path(self.sid, self.offset_ms or 0)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (every field, plus ``time``, ``replay`` and ``replay_api``)."""
        d = dataclasses.asdict(self)
        d["time"] = self.time
        d["replay"] = self.replay
        d["replay_api"] = self.replay_api
        return d


@dataclass(frozen=True)
class EventHit(Hit):
    """An audit event. ``id`` is its uid; ``fields`` its body exactly as stored."""

    event: str = ""
    code: str = ""
    fields: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class SegmentHit(Hit):
    """A line of terminal output. ``offset_ms``: when the matched text's last character was
    written (for a query without text: when the line started)."""

    seg_no: int = 0
    start_ms: int = 0
    end_ms: int = 0
    text: str = ""


AnyHit = EventHit | SegmentHit


@dataclass(frozen=True)
class Page:
    """One page of hits, newest first. ``next_cursor`` is None on the last page.

    ``backend`` names who answered: ``postgres``, ``opensearch``, or ``opensearch+postgres``
    (PostgreSQL for the hits from ``indexed_until`` on, OpenSearch for those before it).
    ``reason`` always says why that backend answered; ``indexed_until`` (µs) is OpenSearch's
    watermark for the tenant when OpenSearch was asked (None: it holds everything, or it was
    not asked).
    """

    hits: tuple[AnyHit, ...]
    next_cursor: str | None
    backend: str
    reason: str = ""
    indexed_until_us: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "hits": [h.to_json() for h in self.hits],
            "next_cursor": self.next_cursor,
            "backend": self.backend,
            "reason": self.reason,
            "indexed_until": None
            if self.indexed_until_us is None
            else format_time_us(self.indexed_until_us),
        }


def split_at(query: Query, watermark_us: int) -> tuple[Query | None, Query | None]:
    """(newer, older): ``query`` cut at ``watermark_us`` into the part from it on (to be answered
    by PostgreSQL) and the part before it (OpenSearch holds it completely); None for a part the
    query's own range excludes. Each part keeps the query's keyset position (its cursor is
    re-encoded for the part's own fingerprint), so a page taken from ``newer`` then ``older``
    is the page ``query`` would give on one backend (both order by ``time_us desc, id``)."""
    since_us, until_us = query.since_us, query.until_us
    after = query.after
    newer: Query | None = None
    older: Query | None = None
    if until_us is None or until_us > watermark_us:
        lo = watermark_us if since_us is None else max(since_us, watermark_us)
        newer = dataclasses.replace(query, since=from_us(lo), cursor=None)
        if after is not None:
            newer = newer.with_cursor(encode_cursor(after[0], after[1], newer))
    if since_us is None or since_us < watermark_us:
        hi = watermark_us if until_us is None else min(until_us, watermark_us)
        older = dataclasses.replace(query, until=from_us(hi), cursor=None)
        if after is not None:
            older = older.with_cursor(encode_cursor(after[0], after[1], older))
    return newer, older


def make_page(query: Query, hits: Sequence[AnyHit], backend: str) -> Page:
    """A page from up to ``limit + 1`` hits in order (the extra one says there is more)."""
    more = len(hits) > query.limit
    page = tuple(hits[: query.limit])
    cursor = encode_cursor(page[-1].time_us, page[-1].id, query) if more and page else None
    return Page(page, cursor, backend)


@runtime_checkable
class SearchBackend(Protocol):
    """A search backend: PostgreSQL or OpenSearch. ``name`` is ``postgres`` / ``opensearch``."""

    name: str

    async def search(self, query: Query) -> Page:
        """One page of hits for ``query`` (keyset after ``query.cursor``)."""
        ...

    async def health(self) -> bool:
        """True if the backend can answer now (never raises)."""
        ...


# -- searchable text of events ---------------------------------------------------------------

# Event fields whose text is searchable, in this order (joined with "\n"). Command-ish: what
# was run; kube: what was requested; who/where: user, login, host.
EVENT_TEXT_FIELDS = (
    "command",  # exec (string), kube exec
    "path",  # session.command: the executable's path ...
    "argv",  # ... and its arguments (joined with the path, see below)
    "program",
    "verb",
    "request_path",
    "resource_kind",
    "resource_namespace",
    "resource_name",
    "kubernetes_pod_name",
    "kubernetes_pod_namespace",
    "user",
    "login",
    "server_hostname",
    "addr.remote",
)


def _text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return " ".join(_text_of(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return ""  # objects are not searched as text


def event_search_text(fields: Mapping[str, Any]) -> str:
    """The searchable text of an event (before :func:`norm`): the values of
    :data:`EVENT_TEXT_FIELDS` present, one per line, with the command line first as
    ``path argv...`` (or ``program argv...``) so ``rm -rf /tmp/x`` matches a
    ``session.command`` of ``/usr/bin/rm`` with argv ``["-rf", "/tmp/x"]``."""
    parts: list[str] = []
    argv = _text_of(fields.get("argv"))
    exe = _text_of(fields.get("path")) or _text_of(fields.get("program"))
    if exe or argv:
        parts.append(f"{exe} {argv}".strip())
    for name in EVENT_TEXT_FIELDS:
        if name in ("path", "argv"):
            continue
        t = _text_of(fields.get(name))
        if t:
            parts.append(t)
    return "\n".join(parts)


@dataclass(frozen=True)
class EventColumns:
    """The filter values of an event, extracted once by the writer (PostgreSQL columns and the
    OpenSearch document use the same function)."""

    time_us: int
    user: str
    login: str
    server_id: str
    cluster_name: str
    kubernetes_cluster: str
    kubernetes_namespace: str
    kubernetes_resource_kind: str
    kubernetes_resource_name: str
    verb: str
    """The Kubernetes verb (:func:`schemas.kube.kube_verb`), never Teleport's HTTP method."""
    text_norm: str
    kubernetes_subresource: str = ""


def _s(fields: Mapping[str, Any], name: str) -> str:
    v = fields.get(name)
    return v if isinstance(v, str) else ""


def event_columns(fields: Mapping[str, Any], time_us: int) -> EventColumns:
    """Filter values of an event body. ``kubernetes_namespace`` is the Kubernetes namespace of
    the request (``resource_namespace``, or a kube exec's ``kubernetes_pod_namespace``), not
    Teleport's own ``namespace`` field; ``kubernetes_resource`` matches ``resource_kind`` or
    ``resource_name``; ``verb`` is the Kubernetes verb and matches it or the subresource
    (:mod:`schemas.kube`; the body keeps Teleport's ``verb``, the HTTP method)."""
    kv = kube_verb(fields)
    return EventColumns(
        time_us=time_us,
        user=_s(fields, "user"),
        login=_s(fields, "login"),
        server_id=_s(fields, "server_id"),
        cluster_name=_s(fields, "cluster_name"),
        kubernetes_cluster=_s(fields, "kubernetes_cluster"),
        kubernetes_namespace=_s(fields, "resource_namespace")
        or _s(fields, "kubernetes_pod_namespace"),
        kubernetes_resource_kind=_s(fields, "resource_kind"),
        kubernetes_resource_name=_s(fields, "resource_name"),
        verb=kv.verb,
        text_norm=norm(event_search_text(fields)),
        kubernetes_subresource=kv.subresource,
    )


# -- OpenSearch documents and index names ----------------------------------------------------


def _month(time_us: int) -> str:
    return from_us(time_us).strftime("%Y.%m")


DOCUMENT_VERSION = 2
"""Version of the rules that build OpenSearch documents from PostgreSQL rows. Bump it when a
document's derivation changes (2: ``verb`` is the Kubernetes verb and subresource, see
:mod:`schemas.kube`): the completeness marker of an older version no longer counts, so search
answers from PostgreSQL and the index worker rebuilds OpenSearch."""

EVENTS_INDEX_PREFIX = "sv-events-"
OUTPUT_INDEX_PREFIX = "sv-output-"


def events_index(time_us: int, prefix: str = "sv") -> str:
    """``sv-events-YYYY.MM`` of the event's (UTC) month (``prefix`` replaces ``sv``, e.g. for
    several installations or tests sharing one cluster)."""
    return f"{prefix}-events-{_month(time_us)}"


def output_index(time_us: int, prefix: str = "sv") -> str:
    """``sv-output-YYYY.MM`` of the segment's (UTC) month (``prefix`` as for events)."""
    return f"{prefix}-output-{_month(time_us)}"


def event_doc_id(tenant: str, uid: str, time_us: int) -> str:
    return f"e:{tenant}:{uid}:{time_us}"


def segment_id(sid: str, seg_no: int) -> str:
    """The hit id of a segment (sorts by seg_no within a session)."""
    return f"{sid}/{seg_no:012d}"


def segment_doc_id(sid: str, seg_no: int) -> str:
    return f"s:{sid}:{seg_no}"


def event_document(
    tenant: str, fields: Mapping[str, Any], *, time_us: int | None = None
) -> dict[str, Any]:
    """The OpenSearch document of an event (``_id`` included; pop it before indexing).

    ``time_us`` defaults to :func:`parse_time_us` of ``fields["time"]``.
    """
    uid = _s(fields, "uid")
    tus = parse_time_us(_s(fields, "time")) if time_us is None else time_us
    c = event_columns(fields, tus)
    sid = fields.get("sid")
    code = fields.get("code")
    return {
        "_id": event_doc_id(tenant, uid, tus),
        "kind": KIND_EVENT,
        "tenant": tenant,
        "id": uid,
        "time_us": tus,
        "time": format_time_us(tus),
        "event": _s(fields, "event"),
        "code": code if isinstance(code, str) else "",
        "sid": sid if isinstance(sid, str) and sid else None,
        "user": c.user,
        "login": c.login,
        "server_id": c.server_id,
        "cluster_name": c.cluster_name,
        "kubernetes_cluster": c.kubernetes_cluster,
        "kubernetes_namespace": c.kubernetes_namespace,
        # Both values, empty ones too: the PostgreSQL backend matches the two columns, so a
        # filter value "" matches an event without a kind or a name there as well.
        "kubernetes_resource": [c.kubernetes_resource_kind, c.kubernetes_resource_name],
        # The verb and the subresource (empty too, as for kubernetes_resource): the verb
        # filter matches either, as the PostgreSQL backend's two columns do.
        "verb": [c.verb, c.kubernetes_subresource],
        "text_norm": c.text_norm,
        "body": dict(fields),
    }


@dataclass(frozen=True)
class SegmentRow:
    """A ``text_segments`` row. ``times`` is the run-length encoding of each character's
    write offset (see :func:`encode_times`)."""

    tenant: str
    sid: str
    seg_no: int
    start_ms: int
    end_ms: int
    time_us: int
    text: str
    times: tuple[int, ...]
    user: str = ""
    login: str = ""
    server_id: str = ""
    cluster_name: str = ""
    kubernetes_cluster: str = ""

    @property
    def id(self) -> str:
        return segment_id(self.sid, self.seg_no)

    @property
    def text_norm(self) -> str:
        return norm(self.text)


def segment_document(row: SegmentRow) -> dict[str, Any]:
    """The OpenSearch document of an output segment (``_id`` included)."""
    return {
        "_id": segment_doc_id(row.sid, row.seg_no),
        "kind": KIND_OUTPUT,
        "tenant": row.tenant,
        "id": row.id,
        "sid": row.sid,
        "seg_no": row.seg_no,
        "start_ms": row.start_ms,
        "end_ms": row.end_ms,
        "time_us": row.time_us,
        "time": format_time_us(row.time_us),
        "user": row.user,
        "login": row.login,
        "server_id": row.server_id,
        "cluster_name": row.cluster_name,
        "kubernetes_cluster": row.kubernetes_cluster,
        "text": row.text,
        "text_norm": row.text_norm,
        "times": list(row.times),
    }


# -- per-character times ---------------------------------------------------------------------


def encode_times(times: Sequence[int]) -> tuple[int, ...]:
    """Run-length encode per-character offsets as a flat ``(ms, count, ms, count, ...)``."""
    if not times:
        return ()
    first = times[0]
    # A line of bulk output is usually one run (written in one read): checked in C.
    if times.count(first) == len(times):
        return (first, len(times))
    out: list[int] = []
    for t, run in itertools.groupby(times):
        out += (t, len(list(run)))
    return tuple(out)


def decode_times(rle: Sequence[int]) -> list[int]:
    if len(rle) % 2:
        raise ValueError("times: odd length")
    out: list[int] = []
    for i in range(0, len(rle), 2):
        out.extend([rle[i]] * rle[i + 1])
    return out


def match_offset_ms(text: str, times_rle: Sequence[int], terms_norm: Sequence[str]) -> int | None:
    """When the matched text appeared: over the terms, the latest write time of the last
    character of each term's first match (in ``norm(text)``). None if a term does not match
    or ``times`` does not cover the text; with no terms, the line's first character's time."""
    times = decode_times(times_rle)
    if len(times) != len(text):
        return None
    if not terms_norm:
        return times[0] if times else None
    # Map positions in norm(text) back to characters of text (casefold may expand: ß -> ss).
    owner: list[int] = []
    for i, ch in enumerate(text):
        owner.extend([i] * len(norm(ch)))
    folded = norm(text)
    best: int | None = None
    for term in terms_norm:
        pos = folded.find(term)
        if pos < 0 or not term:
            return None
        t = times[owner[pos + len(term) - 1]]
        best = t if best is None else max(best, t)
    return best


def segment_hit(row: SegmentRow, terms_norm: Sequence[str]) -> SegmentHit:
    """The hit for a matched segment row (both backends build hits with this)."""
    off = match_offset_ms(row.text, row.times, terms_norm)
    return SegmentHit(
        kind=KIND_OUTPUT,
        tenant=row.tenant,
        time_us=row.time_us,
        id=row.id,
        user=row.user,
        login=row.login,
        server_id=row.server_id,
        cluster_name=row.cluster_name,
        kubernetes_cluster=row.kubernetes_cluster,
        sid=row.sid,
        offset_ms=row.start_ms if off is None else off,
        seg_no=row.seg_no,
        start_ms=row.start_ms,
        end_ms=row.end_ms,
        text=row.text,
    )


def event_hit(tenant: str, time_us: int, fields: Mapping[str, Any]) -> EventHit:
    """The hit for a matched event body (both backends build hits with this).

    ``offset_ms`` is left None: the service fills it from the session's start time.
    """
    c = event_columns(fields, time_us)
    sid = fields.get("sid")
    code = fields.get("code")
    return EventHit(
        kind=KIND_EVENT,
        tenant=tenant,
        time_us=time_us,
        id=_s(fields, "uid"),
        user=c.user,
        login=c.login,
        server_id=c.server_id,
        cluster_name=c.cluster_name,
        kubernetes_cluster=c.kubernetes_cluster,
        sid=sid if isinstance(sid, str) and sid else None,
        offset_ms=None,
        event=_s(fields, "event"),
        code=code if isinstance(code, str) else "",
        fields=dict(fields),
    )


def hit_key(hit: Hit) -> tuple[int, str]:
    """The sort key (ascending; pages are in descending order of it)."""
    return (hit.time_us, hit.id)


def escape_like(term: str) -> str:
    """``term`` as a literal inside a LIKE pattern with ``ESCAPE '\\'``."""
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


__all__ = [
    "EVENT_ONLY_FILTERS",
    "FILTERS",
    "KINDS",
    "KIND_EVENT",
    "KIND_OUTPUT",
    "MAX_LIMIT",
    "SEGMENT_MAX_CHARS",
    "AnyHit",
    "EventColumns",
    "EventHit",
    "Hit",
    "Page",
    "Query",
    "SearchBackend",
    "SegmentHit",
    "SegmentRow",
    "decode_cursor",
    "decode_times",
    "encode_cursor",
    "encode_times",
    "escape_like",
    "event_columns",
    "event_doc_id",
    "event_document",
    "event_hit",
    "event_search_text",
    "events_index",
    "format_time_us",
    "from_us",
    "hit_key",
    "make_page",
    "match_offset_ms",
    "norm",
    "output_index",
    "parse_time_us",
    "segment_doc_id",
    "segment_document",
    "segment_hit",
    "segment_id",
    "split_at",
    "to_us",
]
