"""Pure parts of the OpenSearch backend: wildcard escaping, text_norm pieces, query bodies,
bulk answers and request sizing (no server)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from storage.search.model import KIND_EVENT, KIND_OUTPUT, MAX_TERM_CHARS, Query, norm
from storage.search.opensearch import (
    BulkAction,
    chunk_actions,
    escape_wildcard,
    parse_bulk_response,
    query_body,
)
from storage.search.templates import (
    TEXT_NORM_MAX_CHARS,
    TEXT_NORM_OVERLAP_CHARS,
    TEXT_NORM_PIECE_CHARS,
    index_templates,
    mapped_fields,
    text_norm_pieces,
)


def _wildcard_match(pattern: str, text: str) -> bool:
    """Lucene wildcard semantics (``*``, ``?``, ``\\`` escapes), for checking the escaping."""
    import re

    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.fullmatch("".join(out), text, re.S) is not None


@pytest.mark.parametrize(
    "term", ["*", "?", "\\", "a*b", "a?b", "c:\\windows\\", "\\*", "100%_", '"x" AND y', "';--"]
)
def test_escaped_wildcard_pattern_is_a_literal_substring_test(term: str) -> None:
    pattern = f"*{escape_wildcard(term)}*"
    assert _wildcard_match(pattern, f"before {term} after")
    # A metacharacter never matches anything but itself.
    other = term.replace("*", "x").replace("?", "y").replace("\\", "/")
    if other != term:
        assert not _wildcard_match(pattern, f"before {other} after")


def test_short_text_norm_is_one_term_and_long_one_overlapping_pieces() -> None:
    assert text_norm_pieces("abc") == "abc"
    rng = random.Random(7)
    text = "".join(rng.choice("abcdefgh ß/\\*") for _ in range(30_000))
    pieces = text_norm_pieces(text)
    assert isinstance(pieces, list)
    assert all(len(p) <= TEXT_NORM_PIECE_CHARS for p in pieces)
    assert all(len(p.encode()) <= 32766 for p in pieces)
    assert TEXT_NORM_PIECE_CHARS <= TEXT_NORM_MAX_CHARS
    # Every substring a query may hold is inside one piece; pieces never invent text.
    assert TEXT_NORM_OVERLAP_CHARS >= 3 * MAX_TERM_CHARS
    for _ in range(300):
        n = rng.randint(1, TEXT_NORM_OVERLAP_CHARS)
        start = rng.randrange(len(text) - n)
        sub = text[start : start + n]
        assert any(sub in p for p in pieces)
    assert all(p in text for p in pieces)
    assert pieces[-1].endswith(text[-100:])


def test_query_body_filters_tenant_kinds_time_text_and_pages_after_the_cursor() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    q = Query(tenant="t1", text=("Straße*",), user=("alice",), since=since, limit=10)
    body = query_body(q)
    assert body is not None
    filters = body["query"]["bool"]["filter"]
    assert {"term": {"tenant": "t1"}} in filters
    assert {"terms": {"kind": [KIND_EVENT, KIND_OUTPUT]}} in filters
    assert {"terms": {"user": ["alice"]}} in filters
    assert {"range": {"time_us": {"gte": q.since_us}}} in filters
    assert {"wildcard": {"text_norm": {"value": f"*{norm('Straße')}\\**"}}} in filters
    assert body["sort"] == [{"time_us": {"order": "desc"}}, {"id": {"order": "desc"}}]
    assert body["size"] == 11
    assert "search_after" not in body
    from storage.search.model import encode_cursor

    paged = query_body(q.with_cursor(encode_cursor(123, "x/1", q)))
    assert paged is not None
    assert paged["search_after"] == [123, "x/1"]


def test_event_only_filter_drops_output_and_empty_scope_matches_nothing() -> None:
    body = query_body(Query(tenant="t", verb=("GET",)))
    assert body is not None
    assert {"terms": {"kind": [KIND_EVENT]}} in body["query"]["bool"]["filter"]
    assert query_body(Query(tenant="t", kinds=(KIND_OUTPUT,), verb=("GET",))) is None
    assert query_body(Query(tenant="t", scope_kubernetes_clusters=())) is None


def test_bulk_answer_splits_ok_retriable_and_permanent_items() -> None:
    response = {
        "errors": True,
        "items": [
            {"index": {"_id": "a", "status": 201}},
            {"index": {"_id": "b", "status": 429, "error": {"type": "es_rejected", "reason": "q"}}},
            {
                "index": {
                    "_id": "c",
                    "status": 400,
                    "error": {"type": "mapper_parsing_exception", "reason": "bad"},
                }
            },
            {"index": {"_id": "d", "status": 503, "error": "unavailable"}},
        ],
    }
    out = parse_bulk_response(response, ["a", "b", "c", "d"])
    assert out.ok == 1
    assert [f.id for f in out.retriable] == ["b", "d"]
    assert [(f.id, f.status) for f in out.permanent] == [("c", 400)]
    assert "mapper_parsing_exception" in out.permanent[0].reason


def test_bulk_requests_stay_under_the_byte_and_count_bounds() -> None:
    actions = [BulkAction("i", str(n), {"text": "x" * (n % 500)}) for n in range(1000)]
    groups = list(chunk_actions(actions, max_bytes=20_000, max_docs=100))
    assert [a for g in groups for a in g] == actions
    for g in groups:
        assert len(g) <= 100
        assert len(g) == 1 or sum(len(a.lines()) for a in g) <= 20_000


def test_templates_map_filters_as_keywords_and_time_us_as_long() -> None:
    templates = index_templates("pfx")
    assert set(templates) == {"pfx-events-v1", "pfx-output-v1"}
    events = templates["pfx-events-v1"]
    assert events["index_patterns"] == ["pfx-events-*"]
    props = events["template"]["mappings"]["properties"]
    assert events["template"]["mappings"]["dynamic"] is False
    assert props["time_us"] == {"type": "long"}
    for name in ("tenant", "id", "user", "verb", "kubernetes_resource", "code", "event"):
        assert props[name]["type"] == "keyword"
    assert "normalizer" not in props["text_norm"]
    assert {"text_norm", "seg_no", "times"} <= mapped_fields("output")
