"""Rendering search hits for people and spreadsheets (PURE: no I/O beyond the given stream).

* ``table``: one line per hit, terminal-safe (control characters shown as ``\\xNN``, so stored
  terminal text can never drive the reader's terminal), with the replay command.
* ``json``: one JSON object per page (``hits``, ``next_cursor``, ``backend``,
  ``reason``, ``indexed_until``), one per line.
* ``csv``: RFC 4180 through the :mod:`csv` module, one row per hit; cells that a spreadsheet
  would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return) get
  a leading ``'`` (OWASP's advice against CSV injection).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable

import orjson

from storage.search.model import AnyHit, EventHit, Page, SegmentHit

__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "csv_header",
    "csv_rows",
    "format_alerts",
    "format_table",
    "neutralise_formula",
    "page_json",
    "terminal_safe",
]

FORMATS = ("table", "json", "csv")
CSV_COLUMNS = (
    "time",
    "kind",
    "tenant",
    "id",
    "event",
    "code",
    "user",
    "login",
    "server_id",
    "cluster_name",
    "kubernetes_cluster",
    "sid",
    "offset_ms",
    "text",
    "replay",
    "replay_api",
    "fields",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def neutralise_formula(cell: str) -> str:
    """``cell`` with a leading ``'`` when a spreadsheet would evaluate it."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def terminal_safe(text: str) -> str:
    """``text`` with C0/C1 control characters (ESC, BEL, CR, ...) shown as ``\\xNN``."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _what(hit: AnyHit) -> str:
    if isinstance(hit, SegmentHit):
        return hit.text
    if isinstance(hit, EventHit):
        label = f"{hit.event} {hit.code}".strip()
        detail = hit.fields.get("command") or hit.fields.get("request_path") or ""
        if not isinstance(detail, str):
            detail = ""
        return f"{label} {detail}".strip()
    return ""


def _cells(hit: AnyHit) -> dict[str, str]:
    ev = hit if isinstance(hit, EventHit) else None
    seg = hit if isinstance(hit, SegmentHit) else None
    return {
        "time": hit.time,
        "kind": hit.kind,
        "tenant": hit.tenant,
        "id": hit.id,
        "event": ev.event if ev else "",
        "code": ev.code if ev else "",
        "user": hit.user,
        "login": hit.login,
        "server_id": hit.server_id,
        "cluster_name": hit.cluster_name,
        "kubernetes_cluster": hit.kubernetes_cluster,
        "sid": hit.sid or "",
        "offset_ms": "" if hit.offset_ms is None else str(hit.offset_ms),
        "text": seg.text if seg else "",
        "replay": hit.replay or "",
        "replay_api": hit.replay_api or "",
        "fields": orjson.dumps(ev.fields, option=orjson.OPT_SORT_KEYS).decode() if ev else "",
    }


def csv_header() -> str:
    """The CSV header line."""
    return _csv_line(list(CSV_COLUMNS))


def csv_rows(hits: Iterable[AnyHit]) -> str:
    """CSV lines (with CRLF, as RFC 4180 says) for ``hits``; every cell formula-neutralised."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    for hit in hits:
        cells = _cells(hit)
        w.writerow([neutralise_formula(cells[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


def _csv_line(cells: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(cells)
    return buf.getvalue()


def page_json(page: Page) -> str:
    """One page as a single JSON line."""
    return orjson.dumps(page.to_json()).decode()


_TABLE_HEAD = ("TIME (UTC)", "KIND", "USER", "LOGIN", "WHERE", "SID", "WHAT", "REPLAY")


def format_table(hits: Iterable[AnyHit], *, header: bool = True, what_chars: int = 80) -> str:
    """The hits as an aligned table (terminal-safe; long texts cut to ``what_chars``)."""
    rows: list[list[str]] = [list(_TABLE_HEAD)] if header else []
    for hit in hits:
        what = _what(hit)
        if len(what) > what_chars:
            what = what[: what_chars - 1] + "…"
        rows.append(
            [
                terminal_safe(c)
                for c in (
                    hit.time[:23] + "Z",
                    hit.kind,
                    hit.user or "-",
                    hit.login or "-",
                    hit.server_id or hit.kubernetes_cluster or hit.cluster_name or "-",
                    hit.sid or "-",
                    what or "-",
                    hit.replay or "-",
                )
            ]
        )
    return _aligned(rows)


def _aligned(rows: list[list[str]]) -> str:
    """Rows as aligned columns (the last one, a replay command, is never padded)."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip()
        for r in rows
    )


_ALERT_HEAD = ("TIME (UTC)", "LEVEL", "RULE", "USER", "WHERE", "REPLAY")


def _field(hit: EventHit, name: str) -> str:
    value = hit.fields.get(name)
    return value if isinstance(value, str) else ""


def format_alerts(hits: Iterable[AnyHit], *, header: bool = True, rule_chars: int = 60) -> str:
    """Alert events (``alert.*``) as an aligned, terminal-safe table: when the matched event
    happened, the rule's level and title, who and where, and the command that replays the
    session from the match (``-`` for alerts outside a recorded session)."""
    rows: list[list[str]] = [list(_ALERT_HEAD)] if header else []
    for hit in hits:
        if not isinstance(hit, EventHit):
            continue
        rule = _field(hit, "title") or _field(hit, "rule_id") or hit.event
        if len(rule) > rule_chars:
            rule = rule[: rule_chars - 1] + "…"
        rows.append(
            [
                terminal_safe(c)
                for c in (
                    hit.time[:23] + "Z",
                    _field(hit, "level") or "-",
                    rule,
                    hit.user or "-",
                    hit.server_id or hit.kubernetes_cluster or hit.cluster_name or "-",
                    _field(hit, "replay") or hit.replay or "-",
                )
            ]
        )
    return _aligned(rows)
