"""Sigma detection rules evaluated in-process against sessionvault events.

Rules are parsed by pySigma (:class:`sigma.collection.SigmaCollection`); pySigma turns each
rule's detection and condition (``and``/``or``/``not``, ``1 of x*``, ``all of them``) into a
tree of conditions with typed values, applying the value modifiers (``contains``,
``startswith``, ``endswith``, ``all``, ``re`` with ``i``/``m``/``s``, ``cidr``, ``cased``,
``exists``, ``lt``/``lte``/``gt``/``gte``, ``base64``, ``windash`` ...). This module compiles
that tree once into Python predicates and evaluates them per event (no backend query language).
String matches are case-insensitive unless ``|cased`` (Sigma's rule), anchored (wildcards
``*``/``?`` as Sigma defines). A list-valued field (``argv``, ``kubernetes_groups``) matches
when any element matches. A missing field never matches (``field: null`` matches it).

Log sources (which records a rule sees):

| logsource                                   | records                                        |
| ------------------------------------------- | ---------------------------------------------- |
| product sessionvault/teleport, no service   | every audit event                              |
| ... service audit                           | every audit event                              |
| ... service kubernetes                      | kube.request events, and exec events in a pod  |
| ... service terminal                        | output segments (``kind: output``, ``text``),  |
|                                             | session.command and exec events                |
| product kubernetes, service audit           | raw audit.k8s.io Events; kube.request events   |
|                                             | through :data:`K8S_AUDIT_FIELDS`               |

A rule with any other log source is refused when loaded (:class:`RuleError`).

Field names are sessionvault's (Teleport's) event fields; dotted names reach into objects
(``server_labels.env``, ``kube_audit.objectRef.name``) unless a flat key with the dots exists
(``addr.remote``). Derived fields, computed per event:

- ``command_line``: ``path`` + ``argv`` (session.command), else ``command`` (exec).
- ``business_hours``: whether the event time falls in :class:`BusinessHours` (timezone-aware).
- ``kind``: ``event`` for audit events, ``output`` for output segments.

Alerts are events ``alert.sigma`` (see :func:`alert_event`): rule id/title/level, the matched
event's uid and sid, and a replay link ``sessionvault play SID --start-at T`` where T is the
output segment's ``offset_ms`` (or ``start_ms``), the event's own ``ms``, or the event time
minus the session's start (from session.start events seen, or the injected lookup).

Correlation rules: ``event_count`` with ``group-by`` and ``timespan`` and a ``gte``/``gt``
condition, in a sliding window over event time. Memory is bounded: a group keeps at most
``count`` timestamps, at most ``max_groups`` groups per rule are kept (least recently seen
dropped first). After firing, a group's window restarts, so one burst fires once. Base rules a
correlation references emit no alerts of their own unless the correlation says
``generate: true`` (Sigma's rule).
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sigma.collection import SigmaCollection
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.correlations import (
    SigmaCorrelationCondition,
    SigmaCorrelationConditionOperator,
    SigmaCorrelationRule,
    SigmaCorrelationType,
)
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule
from sigma.types import (
    CompareOperators,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SpecialChars,
)

from schemas.kube import kube_verb
from schemas.links import replay_links
from schemas.models import EVENT_VERSION
from sessionvault.errors import ValidationError
from siem.formats.common import event_time_ms

__all__ = [
    "ALERT_CODE",
    "ALERT_EVENT",
    "K8S_AUDIT_FIELDS",
    "STARTER_DIR",
    "BusinessHours",
    "RuleError",
    "SigmaEngine",
    "alert_event",
    "load_rules",
    "locate_match",
]

log = logging.getLogger(__name__)

ALERT_EVENT = "alert.sigma"
ALERT_CODE = "SV5001W"
STARTER_DIR = Path(__file__).parent / "starter"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Namespace of alert uids: an alert of one rule on one event always has the same uid, so a
# redelivered event produces the same (deduplicable) alert.
_ALERT_NS = uuid.uuid5(uuid.NAMESPACE_URL, "https://sessionvault.dev/ns/sigma-alert")
_PRODUCTS = frozenset({"sessionvault", "teleport"})
_TERMINAL_EVENTS = frozenset({"session.command", "exec"})

# Sigma field names of the Kubernetes audit log source -> kube.request fields.
K8S_AUDIT_FIELDS: dict[str, str] = {
    "verb": "kubernetes_verb",
    "user.username": "user",
    "user.groups": "kubernetes_groups",
    "objectRef.resource": "resource_kind",
    "objectRef.subresource": "kubernetes_subresource",
    "objectRef.namespace": "resource_namespace",
    "objectRef.name": "resource_name",
    "responseStatus.code": "response_code",
    "requestURI": "request_path",
    "sourceIPs": "addr.remote",
    "userAgent": "user_agent",
}


class RuleError(ValidationError):
    """A rule cannot be loaded: bad YAML, unsupported log source, modifier or correlation."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_rule", message)


@dataclass(frozen=True)
class BusinessHours:
    """Working time for the ``business_hours`` field: ``start_hour`` <= local hour <
    ``end_hour`` on ``weekdays`` (0 Monday .. 6 Sunday) in ``timezone`` (IANA name)."""

    timezone: str = "UTC"
    start_hour: int = 8
    end_hour: int = 18
    weekdays: tuple[int, ...] = (0, 1, 2, 3, 4)

    def __post_init__(self) -> None:
        if not 0 <= self.start_hour <= self.end_hour <= 24:
            raise RuleError("business hours: need 0 <= start_hour <= end_hour <= 24")
        try:
            ZoneInfo(self.timezone)
        except Exception as exc:
            raise RuleError(f"business hours: unknown timezone {self.timezone!r}") from exc

    def contains(self, time_ms: int) -> bool:
        local = datetime.fromtimestamp(time_ms / 1000, tz=UTC).astimezone(ZoneInfo(self.timezone))
        return local.weekday() in self.weekdays and self.start_hour <= local.hour < self.end_hour


# -- record views ----------------------------------------------------------------------------

_MISSING = object()


def _is_raw_k8s_audit(rec: Mapping[str, Any]) -> bool:
    return rec.get("kind") == "Event" and "auditID" in rec


def _kind(rec: Mapping[str, Any]) -> str:
    if rec.get("kind") == "output":
        return "output"
    if _is_raw_k8s_audit(rec):
        return "k8s_audit"
    return "event"


def _path(rec: Mapping[str, Any], name: str) -> Any:
    if name in rec:
        return rec[name]
    cur: Any = rec
    for part in name.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        else:
            return _MISSING
    return cur


class _View:
    """Field lookup for one record, with derived fields and the log source's field mapping."""

    def __init__(self, rec: Mapping[str, Any], hours: BusinessHours, k8s_mapping: bool) -> None:
        self.rec = rec
        self.hours = hours
        self.k8s_mapping = k8s_mapping
        self._cache: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name in self._cache:
            return self._cache[name]
        value = self._get(name)
        self._cache[name] = value
        return value

    def _get(self, name: str) -> Any:
        rec = self.rec
        if self.k8s_mapping:
            mapped = K8S_AUDIT_FIELDS.get(name)
            if name in ("verb", "objectRef.subresource"):  # the one rule: schemas.kube
                kv = kube_verb(rec)
                value = kv.verb if name == "verb" else kv.subresource
                return value or _MISSING
            if name == "sourceIPs":
                addr = rec.get("addr.remote")
                return _MISSING if addr is None else [str(addr).rsplit(":", 1)[0].strip("[]")]
            if mapped is not None:
                v = _path(rec, mapped)
                if v is not _MISSING:
                    return v
            return _path(rec.get("kube_audit") or {}, name)
        value = _path(rec, name)
        if value is not _MISSING:
            return value
        if name == "command_line":
            exe = rec.get("path") or rec.get("program") or ""
            argv = rec.get("argv")
            args = " ".join(str(a) for a in argv) if isinstance(argv, list) else ""
            line = f"{exe} {args}".strip()
            return line or rec.get("command", _MISSING)
        if name == "business_hours":
            ms = event_time_ms(rec)
            return _MISSING if ms <= 0 else self.hours.contains(ms)
        if name == "kind":
            return _kind(rec)
        return _MISSING

    def keyword_values(self) -> Iterable[str]:
        """Values searched by keyword (field-less) detections: output text, command lines,
        and the record's top-level strings."""
        for name in ("text", "command_line"):
            v = self.get(name)
            if isinstance(v, str):
                yield v
        for v in self.rec.values():
            if isinstance(v, str):
                yield v
            elif isinstance(v, list):
                yield from (x for x in v if isinstance(x, str))


# -- compiling conditions --------------------------------------------------------------------

Pred = Callable[[_View], bool]
ValuePred = Callable[[Any], bool]


def _string_regex(s: SigmaString, cased: bool) -> re.Pattern[str]:
    parts: list[str] = []
    for p in s.s:
        if p == SpecialChars.WILDCARD_MULTI:
            parts.append(".*")
        elif p == SpecialChars.WILDCARD_SINGLE:
            parts.append(".")
        elif isinstance(p, str):
            parts.append(re.escape(p))
        else:
            raise RuleError(f"placeholders are not supported in values ({s!r})")
    return re.compile("".join(parts), re.DOTALL | (0 if cased else re.IGNORECASE))


def _scalars(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _null_pred(value: SigmaNull) -> ValuePred:
    return lambda v: v is _MISSING or v is None or v == ""


def _exists_pred(value: SigmaExists) -> ValuePred:
    want = value.exists
    return lambda v: (v is not _MISSING and v is not None) == want


def _bool_pred(value: SigmaBool) -> ValuePred:
    b = value.boolean

    def is_bool(v: Any) -> bool:
        return any(
            x is b or (isinstance(x, str) and x.lower() == str(b).lower()) for x in _scalars(v)
        )

    return is_bool


def _number_pred(value: SigmaNumber) -> ValuePred:
    num = value.number

    def is_num(v: Any) -> bool:
        for x in _scalars(v):
            if isinstance(x, bool):
                continue
            if isinstance(x, int | float) and x == num:
                return True
            if isinstance(x, str) and x.strip() == str(num):
                return True
        return False

    return is_num


def _compare_pred(value: SigmaCompareExpression) -> ValuePred:
    ref = value.number.number
    ops: dict[CompareOperators, Callable[[float], bool]] = {
        CompareOperators.LT: lambda a: a < ref,
        CompareOperators.LTE: lambda a: a <= ref,
        CompareOperators.GT: lambda a: a > ref,
        CompareOperators.GTE: lambda a: a >= ref,
    }
    op = ops[value.op]

    def cmp(v: Any) -> bool:
        return any(
            isinstance(x, int | float) and not isinstance(x, bool) and op(x) for x in _scalars(v)
        )

    return cmp


_REGEX_FLAGS = (
    (SigmaRegularExpressionFlag.IGNORECASE, re.IGNORECASE),
    (SigmaRegularExpressionFlag.MULTILINE, re.MULTILINE),
    (SigmaRegularExpressionFlag.DOTALL, re.DOTALL),
)


def _regex_pred(value: SigmaRegularExpression) -> ValuePred:
    flags = 0
    for sigma_flag, re_flag in _REGEX_FLAGS:
        if sigma_flag in value.flags:
            flags |= re_flag
    try:
        rx = re.compile(value.regexp.original, flags)
    except re.error as exc:
        raise RuleError(f"bad regular expression {value.regexp.original!r}: {exc}") from exc
    return lambda v: any(isinstance(x, str) and rx.search(x) for x in _scalars(v))


def _host_of(x: Any) -> str:
    """The address part of ``addr``, ``addr:port`` or ``[v6]:port``."""
    host = str(x)
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _cidr_pred(value: SigmaCIDRExpression) -> ValuePred:
    net = value.network

    def in_net(v: Any) -> bool:
        for x in _scalars(v):
            try:
                if ipaddress.ip_address(_host_of(x)) in net:
                    return True
            except ValueError:
                continue
        return False

    return in_net


def _string_pred(value: SigmaString) -> ValuePred:
    rx = _string_regex(value, cased=isinstance(value, SigmaCasedString))

    def str_match(v: Any) -> bool:
        for x in _scalars(v):
            if isinstance(x, bool) or x is None or x is _MISSING:
                continue
            if isinstance(x, str | int | float) and rx.fullmatch(str(x)):
                return True
        return False

    return str_match


#: One predicate builder per Sigma value type, most specific first (SigmaCasedString is a
#: SigmaString).
_VALUE_PREDS: tuple[tuple[type, Callable[[Any], ValuePred]], ...] = (
    (SigmaNull, _null_pred),
    (SigmaExists, _exists_pred),
    (SigmaBool, _bool_pred),
    (SigmaNumber, _number_pred),
    (SigmaCompareExpression, _compare_pred),
    (SigmaRegularExpression, _regex_pred),
    (SigmaCIDRExpression, _cidr_pred),
    (SigmaString, _string_pred),
)


def _value_pred(value: Any) -> ValuePred:
    """A test on one field value (list values: any element)."""
    for kind, build in _VALUE_PREDS:
        if isinstance(value, kind):
            return build(value)
    raise RuleError(f"value type {type(value).__name__} is not supported")


def _compile(node: Any) -> Pred:
    if isinstance(node, ConditionAND):
        preds = [_compile(a) for a in node.args]
        return lambda view: all(p(view) for p in preds)
    if isinstance(node, ConditionOR):
        preds = [_compile(a) for a in node.args]
        return lambda view: any(p(view) for p in preds)
    if isinstance(node, ConditionNOT):
        inner = _compile(node.args[0])
        return lambda view: not inner(view)
    if isinstance(node, ConditionFieldEqualsValueExpression):
        name, vp = node.field, _value_pred(node.value)
        return lambda view: vp(view.get(name))
    if isinstance(node, ConditionValueExpression):
        vp = _value_pred(node.value)
        return lambda view: any(vp(v) for v in view.keyword_values())
    raise RuleError(f"condition element {type(node).__name__} is not supported")


# -- rules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    rule_id: str
    name: str
    title: str
    level: str
    description: str
    tags: tuple[str, ...]
    accepts: Callable[[Mapping[str, Any]], str | None]  # None: not for this rule; else mode
    predicates: tuple[Pred, ...]  # one per condition (OR-ed)
    emit: bool


def _logsource_filter(rule: SigmaRule) -> Callable[[Mapping[str, Any]], str | None]:
    """Which records a rule sees, and whether they go through the k8s audit field mapping."""
    ls = rule.logsource
    product, service = (ls.product or "").lower(), (ls.service or "").lower()
    if ls.category:
        raise RuleError(f"rule {rule.title!r}: logsource category {ls.category!r} not supported")

    if product in _PRODUCTS:
        if service in ("", "audit"):
            return lambda r: "plain" if _kind(r) == "event" else None
        if service == "kubernetes":

            def kube(r: Mapping[str, Any]) -> str | None:
                if _kind(r) != "event":
                    return None
                e = r.get("event")
                ok = e == "kube.request" or (e == "exec" and bool(r.get("kubernetes_cluster")))
                return "plain" if ok else None

            return kube
        if service == "terminal":

            def terminal(r: Mapping[str, Any]) -> str | None:
                k = _kind(r)
                ok = k == "output" or (k == "event" and r.get("event") in _TERMINAL_EVENTS)
                return "plain" if ok else None

            return terminal
    if product == "kubernetes" and service == "audit":

        def k8s(r: Mapping[str, Any]) -> str | None:
            if _is_raw_k8s_audit(r):
                return "plain"
            if _kind(r) == "event" and r.get("event") == "kube.request":
                return "k8s"
            return None

        return k8s
    raise RuleError(
        f"rule {rule.title!r}: logsource product={ls.product!r} service={ls.service!r} "
        "is not supported"
    )


def _rule_id(rule: SigmaRule | SigmaCorrelationRule) -> str:
    if rule.id is not None:
        return str(rule.id)
    if rule.name:
        return str(rule.name)
    return str(uuid.uuid5(_ALERT_NS, rule.title))


def _level(rule: SigmaRule | SigmaCorrelationRule) -> str:
    return rule.level.name.lower() if rule.level is not None else "medium"


def load_rules(sources: Iterable[str | Path]) -> SigmaCollection:
    """A collection from YAML texts and/or paths (files, or directories of ``*.yml``).

    Raises :class:`RuleError` naming the source that does not parse.
    """
    texts: list[tuple[str, str]] = []
    for src in sources:
        if isinstance(src, Path):
            files = (
                sorted(src.glob("*.yml")) + sorted(src.glob("*.yaml")) if src.is_dir() else [src]
            )
            texts.extend((str(f), f.read_text(encoding="utf-8")) for f in files)
        else:
            texts.append(("<text>", src))
    collections = []
    for where, text in texts:
        try:
            collections.append(SigmaCollection.from_yaml(text, collect_errors=False))
        except SigmaError as exc:
            raise RuleError(f"{where}: {exc}") from exc
    try:
        return SigmaCollection.merge(collections) if collections else SigmaCollection([])
    except SigmaError as exc:
        raise RuleError(str(exc)) from exc


# -- correlation -----------------------------------------------------------------------------


@dataclass
class _Correlation:
    rule_id: str
    title: str
    level: str
    description: str
    tags: tuple[str, ...]
    base_ids: frozenset[str]
    group_by: tuple[str, ...]
    timespan_ms: int
    threshold: int  # fires when a group has at least this many events in the window
    max_groups: int
    groups: OrderedDict[tuple[str, ...], list[tuple[int, str]]] = field(default_factory=OrderedDict)

    def observe(self, key: tuple[str, ...], time_ms: int, uid: str) -> list[tuple[int, str]] | None:
        """Add one matching event; the window's events when it fires, else None."""
        window = self.groups.pop(key, None) or []
        bisect.insort(window, (time_ms, uid))
        newest = window[-1][0]
        # Keep the events within timespan of the newest, at most `threshold` of them.
        start = bisect.bisect_left(window, (newest - self.timespan_ms, ""))
        window = window[max(start, len(window) - self.threshold) :]
        if len(window) >= self.threshold:
            return window  # the group is dropped: the next burst starts a new window
        self.groups[key] = window
        while len(self.groups) > self.max_groups:
            self.groups.popitem(last=False)
        return None


def _correlation(rule: SigmaCorrelationRule, max_groups: int) -> _Correlation:
    if rule.type != SigmaCorrelationType.EVENT_COUNT:
        raise RuleError(f"correlation {rule.title!r}: only event_count is supported")
    cond = rule.condition
    if not isinstance(cond, SigmaCorrelationCondition) or not isinstance(cond.count, int):
        raise RuleError(f"correlation {rule.title!r}: only a simple count condition is supported")
    if cond.op == SigmaCorrelationConditionOperator.GTE:
        threshold = cond.count
    elif cond.op == SigmaCorrelationConditionOperator.GT:
        threshold = cond.count + 1
    else:
        raise RuleError(f"correlation {rule.title!r}: only gte/gt conditions are supported")
    if threshold < 1 or rule.timespan.seconds <= 0:
        raise RuleError(f"correlation {rule.title!r}: count and timespan must be positive")
    return _Correlation(
        rule_id=_rule_id(rule),
        title=rule.title,
        level=_level(rule),
        description=(rule.description or "").strip(),
        tags=tuple(str(t) for t in rule.tags),
        base_ids=frozenset(_rule_id(r.rule) for r in rule.rules or ()),
        group_by=tuple(rule.group_by or ()),
        timespan_ms=rule.timespan.seconds * 1000,
        threshold=threshold,
        max_groups=max_groups,
    )


# -- alerts ----------------------------------------------------------------------------------


def _own_offset_ms(rec: Mapping[str, Any]) -> int | None:
    """The offset a record carries itself (output segments, Teleport's ``ms``), if any."""
    for key in ("offset_ms", "start_ms", "ms"):
        v = rec.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
    return None


def _offset_ms(rec: Mapping[str, Any], session_start_ms: int | None) -> int | None:
    own = _own_offset_ms(rec)
    if own is not None:
        return own
    ms = event_time_ms(rec)
    if session_start_ms is None or ms <= 0:
        return None
    return max(0, ms - session_start_ms)


def _decode_times(rle: Any) -> list[int] | None:
    """Per-character write offsets from a segment's run-length ``times`` ((ms, count) pairs)."""
    if not isinstance(rle, list | tuple) or len(rle) % 2:
        return None
    out: list[int] = []
    for i in range(0, len(rle), 2):
        ms, count = rle[i], rle[i + 1]
        if not isinstance(ms, int) or not isinstance(count, int) or count < 0:
            return None
        out.extend([ms] * count)
    return out


def _first_true(lo: int, hi: int, pred: Callable[[int], bool]) -> int:
    """The least i in [lo, hi] with pred(i), for pred false-then-true over the range
    (``hi`` when it is never true before it)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def locate_match(text: str, fires: Callable[[str], bool]) -> int | None:
    """Where in ``text`` (an output line) a rule's match begins: the start of the shortest
    window ``text[start:end]`` the rule still fires on, ``end`` as early as possible, ``start``
    as late as possible. None when the match does not depend on the text (``fires("")``) or
    cannot be narrowed (a rule that is not monotone in its input, e.g. ``not``/``endswith``).

    Two binary searches, so a line of 2,000 characters costs about 22 evaluations, and only
    for lines that already fired.
    """
    if not text or fires(""):
        return None
    n = len(text)
    end = _first_true(1, n, lambda i: fires(text[:i]))
    if not fires(text[:end]):
        return None
    # fires(text[s:end]) is true-then-false in s: find the first s where it stops firing.
    start = _first_true(0, end, lambda i: not fires(text[i:end])) - 1
    if start < 0 or not fires(text[start:end]):
        return None
    return start


def _format_us(time_us: int) -> str:
    return (_EPOCH + timedelta(microseconds=time_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def alert_event(
    *,
    rule_id: str,
    title: str,
    level: str,
    matched: Mapping[str, Any],
    offset_ms: int | None,
    description: str = "",
    tags: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``alert.sigma`` event for a match on ``matched`` (an event or output segment).

    ``uid`` is a UUIDv5 of (rule id, matched uid or segment id), so the same match always
    yields the same alert. ``replay`` is ``sessionvault play SID --start-at SECONDS`` when the
    match is in a session.
    """
    sid = matched.get("sid") or None
    matched_uid = str(
        matched.get("uid")
        or matched.get("id")
        or matched.get("auditID")
        or (f"{sid}/{matched.get('seg_no')}" if sid else "")
    )
    time = matched.get("time") or matched.get("requestReceivedTimestamp")
    if not isinstance(time, str):
        time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out: dict[str, Any] = {
        "sv_version": EVENT_VERSION,
        "tenant": matched.get("tenant") or "default",
        "event": ALERT_EVENT,
        "code": ALERT_CODE,
        "time": time,
        "uid": str(uuid.uuid5(_ALERT_NS, f"{rule_id}\x00{matched_uid}")),
        "rule_id": rule_id,
        "title": title,
        "level": level,
        "matched_uid": matched_uid,
        "matched_event": matched.get("event") or matched.get("kind") or "",
    }
    if description:
        out["description"] = description
    if tags:
        out["tags"] = list(tags)
    for key in ("user", "login", "server_id", "server_hostname", "cluster_name",
                "kubernetes_cluster"):  # fmt: skip
        if matched.get(key):
            out[key] = matched[key]
    if sid:
        out["sid"] = str(sid)
        if offset_ms is not None:
            out.update(replay_links(str(sid), offset_ms))
    if extra:
        out.update(extra)
    return out


# -- the engine ------------------------------------------------------------------------------


class SigmaEngine:
    """Evaluates a rule collection against records, one at a time, returning alert events.

    Not thread-safe (one engine per worker). State: correlation windows (bounded by
    ``max_groups`` per rule) and session start times (bounded by ``max_sessions``).
    ``session_start_ms`` is an optional lookup (sid -> epoch ms) for sessions whose
    session.start this engine did not see (e.g. from PostgreSQL); it is asked only when an
    alert needs an offset.
    """

    def __init__(
        self,
        rules: SigmaCollection,
        *,
        business_hours: BusinessHours | None = None,
        max_groups: int = 10_000,
        max_sessions: int = 100_000,
        session_start_ms: Callable[[str], int | None] | None = None,
    ) -> None:
        self.business_hours = business_hours or BusinessHours()
        self._max_sessions = max_sessions
        self._sessions: OrderedDict[str, int] = OrderedDict()
        self._lookup = session_start_ms
        self._rules: list[_Rule] = []
        self._correlations: list[_Correlation] = []
        silent: set[str] = set()
        for item in rules.rules:
            if isinstance(item, SigmaCorrelationRule):
                corr = _correlation(item, max_groups)
                self._correlations.append(corr)
                if not item.generate:
                    silent |= corr.base_ids
        for item in rules.rules:
            if isinstance(item, SigmaRule):
                self._rules.append(self._compile_rule(item, silent))

    @classmethod
    def from_sources(cls, sources: Iterable[str | Path], **kwargs: Any) -> SigmaEngine:
        """An engine for YAML texts and/or rule files/directories."""
        return cls(load_rules(sources), **kwargs)

    @classmethod
    def starter(cls, **kwargs: Any) -> SigmaEngine:
        """An engine with the starter rule set (``siem/rules/starter/*.yml``)."""
        return cls(load_rules([STARTER_DIR]), **kwargs)

    @staticmethod
    def _compile_rule(rule: SigmaRule, silent: set[str]) -> _Rule:
        rid = _rule_id(rule)
        try:
            preds = tuple(_compile(c.parse()) for c in rule.detection.parsed_condition)
        except SigmaError as exc:
            raise RuleError(f"rule {rule.title!r}: {exc}") from exc
        return _Rule(
            rule_id=rid,
            name=str(rule.name or ""),
            title=rule.title,
            level=_level(rule),
            description=(rule.description or "").strip(),
            tags=tuple(str(t) for t in rule.tags),
            accepts=_logsource_filter(rule),
            predicates=preds,
            emit=rid not in silent and str(rule.name or "") not in silent,
        )

    @property
    def rule_ids(self) -> list[str]:
        return [r.rule_id for r in self._rules] + [c.rule_id for c in self._correlations]

    def _note_session(self, rec: Mapping[str, Any]) -> None:
        if rec.get("event") == "session.start" and rec.get("sid"):
            ms = event_time_ms(rec)
            if ms > 0:
                self._sessions[str(rec["sid"])] = ms
                self._sessions.move_to_end(str(rec["sid"]))
                while len(self._sessions) > self._max_sessions:
                    self._sessions.popitem(last=False)

    def _session_start(self, sid: str) -> int | None:
        if sid in self._sessions:
            return self._sessions[sid]
        if self._lookup is not None:
            return self._lookup(sid)
        return None

    def _offset(self, rec: Mapping[str, Any]) -> int | None:
        own = _own_offset_ms(rec)
        if own is not None:  # no session-start lookup needed (nor wanted: it costs a query)
            return own
        sid = rec.get("sid")
        start = self._session_start(str(sid)) if sid else None
        return _offset_ms(rec, start)

    def _located(
        self, rule: _Rule, record: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any], int | None]:
        """For an output segment, the alert's offset (and time) is when the matched text
        began to be written (e.g. the ``c`` of a typed ``curl``), found by
        :func:`locate_match` and the segment's per-character ``times``; a line's prompt may
        have sat there for an hour before the command was typed. Otherwise, or when the match
        cannot be located, the record's own offset (the line's start for a segment)."""
        offset = self._offset(record)
        text, start_ms, time_us = record.get("text"), record.get("start_ms"), record.get("time_us")
        if _kind(record) != "output" or not isinstance(text, str):
            return record, offset
        times = _decode_times(record.get("times"))
        if times is None or len(times) != len(text):
            return record, offset
        mode = rule.accepts(record) or "plain"

        def fires(t: str) -> bool:
            view = _View({**record, "text": t}, self.business_hours, mode == "k8s")
            return any(p(view) for p in rule.predicates)

        at = locate_match(text, fires)
        if at is None:
            return record, offset
        located = times[at]
        matched = dict(record)
        if isinstance(start_ms, int) and isinstance(time_us, int):
            matched["time"] = _format_us(time_us + (located - start_ms) * 1000)
        return matched, located

    def matching_rules(self, record: Mapping[str, Any]) -> list[str]:
        """Ids of the (non-correlation) rules whose condition ``record`` satisfies."""
        return [r.rule_id for r in self._match(record)]

    def _match(self, record: Mapping[str, Any]) -> list[_Rule]:
        views: dict[str, _View] = {}
        hits: list[_Rule] = []
        for rule in self._rules:
            mode = rule.accepts(record)
            if mode is None:
                continue
            view = views.get(mode)
            if view is None:
                view = views[mode] = _View(record, self.business_hours, mode == "k8s")
            if any(p(view) for p in rule.predicates):
                hits.append(rule)
        return hits

    def evaluate(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Alert events for one record (an audit event, a raw Kubernetes audit Event, or an
        output segment). Alerts themselves are never evaluated (no alert loops)."""
        if str(record.get("event", "")).startswith("alert."):
            return []
        self._note_session(record)
        hits = self._match(record)
        alerts: list[dict[str, Any]] = []
        for rule in hits:
            if rule.emit:
                matched, offset = self._located(rule, record)
                alerts.append(
                    alert_event(
                        rule_id=rule.rule_id,
                        title=rule.title,
                        level=rule.level,
                        matched=matched,
                        offset_ms=offset,
                        description=rule.description,
                        tags=rule.tags,
                    )
                )
        if self._correlations and hits:
            hit_ids = {r.rule_id for r in hits} | {r.name for r in hits if r.name}
            for corr in self._correlations:
                if hit_ids & corr.base_ids:
                    alert = self._correlate(corr, record)
                    if alert is not None:
                        alerts.append(alert)
        return alerts

    def _correlate(self, corr: _Correlation, record: Mapping[str, Any]) -> dict[str, Any] | None:
        view = _View(record, self.business_hours, False)
        key = tuple(str(v) if (v := view.get(g)) is not _MISSING else "" for g in corr.group_by)
        uid = str(record.get("uid") or record.get("id") or "")
        window = corr.observe(key, event_time_ms(record), uid)
        if window is None:
            return None
        uids = [u for _, u in window]
        alert = alert_event(
            rule_id=corr.rule_id,
            title=corr.title,
            level=corr.level,
            matched=record,
            offset_ms=self._offset(record),
            description=corr.description,
            tags=corr.tags,
            extra={
                "correlation": {
                    "type": "event_count",
                    "group": dict(zip(corr.group_by, key, strict=True)),
                    "count": len(window),
                    "timespan_ms": corr.timespan_ms,
                    "matched_uids": uids,
                    "first_time_ms": window[0][0],
                    "last_time_ms": window[-1][0],
                }
            },
        )
        # One alert per window: its uid derives from every event in it.
        alert["uid"] = str(uuid.uuid5(_ALERT_NS, corr.rule_id + "\x00" + "\x00".join(uids)))
        return alert
