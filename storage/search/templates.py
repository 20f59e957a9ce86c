"""OpenSearch index templates for the search documents (pure: bodies only, no client).

Two families of time-based indices, one per hit kind, each matched by a composable index
template with EXPLICIT mappings (``dynamic: false``: a field not listed here is kept in
``_source`` but never indexed, so a new event field can never change the mapping or make a
document fail):

- ``<prefix>-events-YYYY.MM``: one document per ``events`` row (``model.event_document``);
- ``<prefix>-output-YYYY.MM``: one document per ``text_segments`` row
  (``model.segment_document``).

Mapping choices, all driven by "identical results to the PostgreSQL backend":

- ids and every filter field are ``keyword``: exact, case-sensitive matches, and ``id`` sorts by
  code point (PostgreSQL compares with ``COLLATE "C"``);
- ``time_us`` is a ``long`` (microseconds since epoch): sorting and range filters on the exact
  integer PostgreSQL uses, no millisecond rounding of ``date``; ``time`` (``date``) is there for
  dashboards only, never queried by us;
- ``text_norm`` is a ``keyword`` WITHOUT normalizer: it holds ``model.norm(text)`` (Python's
  casefold, done by the document builder) and is matched with a ``wildcard`` query whose
  pattern is ``*<escaped norm(term)>*``: a literal substring test, no analysis, no query
  syntax. Lucene refuses keyword terms over 32766 bytes; :data:`TEXT_NORM_MAX_CHARS` characters
  of UTF-8 (at most 4 bytes each) always fit, and ``ignore_above`` makes the limit explicit;
- ``text`` (what is shown) and ``body`` (the event as stored) are not indexed at all.
"""

from __future__ import annotations

from typing import Any

#: Longest ``text_norm`` value (characters) a keyword can hold on any OpenSearch: Lucene's
#: term limit is 32766 bytes and a character is at most 4 bytes of UTF-8.
TEXT_NORM_MAX_CHARS = 32766 // 4

#: Long ``text_norm`` values are stored as overlapping pieces of this many characters (see
#: :func:`text_norm_pieces`), each far below the keyword limit.
TEXT_NORM_PIECE_CHARS = 8000
#: Overlap between consecutive pieces: any substring up to this long lies wholly inside one
#: piece. A query term is at most ``model.MAX_TERM_CHARS`` characters and casefolding expands
#: a character to at most 3, so every possible term fits.
TEXT_NORM_OVERLAP_CHARS = 3000

#: Bump when a mapping changes; part of the template name so an upgrade installs the new one.
TEMPLATE_VERSION = 1

_KEYWORD: dict[str, Any] = {"type": "keyword"}

_COMMON_FIELDS: dict[str, Any] = {
    "kind": _KEYWORD,
    "tenant": _KEYWORD,
    "id": _KEYWORD,
    "time_us": {"type": "long"},
    "time": {"type": "date", "format": "strict_date_optional_time"},
    "sid": _KEYWORD,
    "user": _KEYWORD,
    "login": _KEYWORD,
    "server_id": _KEYWORD,
    "cluster_name": _KEYWORD,
    "kubernetes_cluster": _KEYWORD,
    "text_norm": {"type": "keyword", "ignore_above": TEXT_NORM_MAX_CHARS},
}

_EVENT_FIELDS: dict[str, Any] = {
    **_COMMON_FIELDS,
    "uid": _KEYWORD,
    "event": _KEYWORD,
    "code": _KEYWORD,
    "ei": {"type": "long"},
    "verb": _KEYWORD,
    "kubernetes_namespace": _KEYWORD,
    "kubernetes_resource": _KEYWORD,
    "body": {"type": "object", "enabled": False},
}

_SEGMENT_FIELDS: dict[str, Any] = {
    **_COMMON_FIELDS,
    "seg_no": {"type": "long"},
    "start_ms": {"type": "long"},
    "end_ms": {"type": "long"},
    # Shown, never matched: kept in _source only.
    "text": {"type": "keyword", "index": False, "doc_values": False},
    "times": {"type": "long", "index": False, "doc_values": False},
}


def text_norm_pieces(text_norm: str) -> str | list[str]:
    """``text_norm`` as stored in OpenSearch: itself when short enough for one keyword term,
    else overlapping pieces (a multi-valued keyword).

    Pieces start every ``PIECE - OVERLAP`` characters and are ``PIECE`` long, so a substring of
    at most ``OVERLAP`` characters starting at position p lies inside the piece starting at
    ``p - p % step``; each piece is a substring of the text, so a piece can never match what
    the whole text does not. A wildcard ``*term*`` on the field is then exactly "term is a
    substring of text_norm" for every term a Query allows.
    """
    if len(text_norm) <= TEXT_NORM_PIECE_CHARS:
        return text_norm
    step = TEXT_NORM_PIECE_CHARS - TEXT_NORM_OVERLAP_CHARS
    pieces = []
    for start in range(0, len(text_norm), step):
        pieces.append(text_norm[start : start + TEXT_NORM_PIECE_CHARS])
        if start + TEXT_NORM_PIECE_CHARS >= len(text_norm):
            break
    return pieces


def index_pattern(prefix: str, family: str) -> str:
    """The index pattern of a family (``events`` or ``output``): ``<prefix>-<family>-*``."""
    return f"{prefix}-{family}-*"


def template_name(prefix: str, family: str) -> str:
    return f"{prefix}-{family}-v{TEMPLATE_VERSION}"


def _template(prefix: str, family: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "index_patterns": [index_pattern(prefix, family)],
        # Above any catch-all template an operator may have (those usually use 0-10).
        "priority": 200,
        "version": TEMPLATE_VERSION,
        "template": {
            "settings": {
                "number_of_shards": 1,
                "number_of_replicas": 0,
                "refresh_interval": "1s",
            },
            "mappings": {
                "dynamic": False,
                "_source": {"enabled": True},
                "properties": properties,
            },
        },
        "_meta": {"owner": "sessionvault", "family": family},
    }


def index_templates(prefix: str = "sv") -> dict[str, dict[str, Any]]:
    """Template name -> body (``PUT _index_template/<name>``) for both families."""
    return {
        template_name(prefix, "events"): _template(prefix, "events", _EVENT_FIELDS),
        template_name(prefix, "output"): _template(prefix, "output", _SEGMENT_FIELDS),
    }


def mapped_fields(family: str) -> frozenset[str]:
    """The top-level fields the template of ``family`` maps (for checks and tests)."""
    return frozenset(_EVENT_FIELDS if family == "events" else _SEGMENT_FIELDS)


__all__ = [
    "TEMPLATE_VERSION",
    "TEXT_NORM_MAX_CHARS",
    "TEXT_NORM_OVERLAP_CHARS",
    "TEXT_NORM_PIECE_CHARS",
    "index_pattern",
    "index_templates",
    "mapped_fields",
    "template_name",
    "text_norm_pieces",
]
