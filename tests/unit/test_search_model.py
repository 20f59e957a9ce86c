"""storage.search.model: query validation, cursors, normalisation, documents, offsets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionvault.errors import ValidationError
from storage.search.model import (
    KINDS,
    Query,
    SegmentRow,
    decode_cursor,
    decode_times,
    encode_cursor,
    encode_times,
    escape_like,
    event_columns,
    event_document,
    event_hit,
    event_search_text,
    events_index,
    format_time_us,
    make_page,
    match_offset_ms,
    norm,
    output_index,
    parse_time_us,
    segment_document,
    segment_hit,
    segment_id,
    to_us,
)
from tests.examples import examples

T0 = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def test_query_turns_lists_into_tuples_and_orders_kinds() -> None:
    q = Query("t1", text=["rm"], user=["alice", "bob"], kinds=["output", "event"])  # type: ignore[arg-type]
    assert q.text == ("rm",)
    assert q.user == ("alice", "bob")
    assert q.kinds == KINDS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tenant": ""}, "tenant"),
        ({"user": "alice"}, "not one string"),
        ({"user": [1]}, "not a string"),
        ({"text": [""]}, "empty search term"),
        ({"kinds": []}, "kinds"),
        ({"kinds": ["logs"]}, "kinds"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": True}, "limit"),
        ({"since": datetime(2026, 1, 1)}, "aware"),
        ({"since": T0, "until": T0}, "before"),
        ({"sid": ["a\x00b"]}, "NUL"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_query_rejects_bad_values_with_a_clear_error(
    kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"tenant": "t1", **kwargs}
    with pytest.raises(ValidationError, match=message):
        Query(**args)  # type: ignore[arg-type]


def test_event_only_filters_exclude_output_segments() -> None:
    assert Query("t", user=("a",)).wants_output
    for f in ("verb", "code", "event", "kubernetes_namespace", "kubernetes_resource"):
        assert not Query("t", **{f: ("x",)}).wants_output  # type: ignore[arg-type]
    assert not Query("t", kinds=("event",)).wants_output


def test_cursor_round_trips_for_the_same_query_and_is_rejected_for_another() -> None:
    q = Query("t1", text=("rm",), since=T0)
    c = encode_cursor(123, "abc/000000000001", q)
    assert decode_cursor(c, q) == (123, "abc/000000000001")
    assert Query("t1", text=("rm",), since=T0, limit=7, cursor=c).after == (
        123,
        "abc/000000000001",
    )
    with pytest.raises(ValidationError, match="different query"):
        Query("t1", text=("rf",), since=T0, cursor=c)
    with pytest.raises(ValidationError, match="different query"):
        Query("t2", text=("rm",), since=T0, cursor=c)
    with pytest.raises(ValidationError, match="different query"):
        Query("t1", text=("rm",), since=T0, scope_kubernetes_clusters=("k",), cursor=c)


def test_norm_is_casefold_and_compositional() -> None:
    assert norm("RM -RF Straße") == "rm -rf strasse"
    s = "ÄßΣx"
    assert norm(s) == "".join(norm(c) for c in s)


def test_time_us_is_exact_and_truncates_nanoseconds() -> None:
    assert to_us(T0) == 1772600767890123
    assert parse_time_us("2026-03-04T05:06:07.890123456Z") == to_us(T0)
    assert parse_time_us("2026-03-04T07:06:07.890123+02:00") == to_us(T0)
    assert parse_time_us("2026-03-04T05:06:07Z") == to_us(T0.replace(microsecond=0))
    assert format_time_us(to_us(T0)) == "2026-03-04T05:06:07.890123Z"
    with pytest.raises(ValidationError):
        parse_time_us("yesterday")


def test_event_search_text_joins_the_command_line_and_lists_fields() -> None:
    fields = {
        "event": "session.command",
        "path": "/usr/bin/rm",
        "argv": ["-rf", "/tmp/x"],
        "program": "rm",
        "user": "alice",
        "login": "root",
        "uid": "u1",
    }
    text = event_search_text(fields)
    assert text.split("\n") == ["/usr/bin/rm -rf /tmp/x", "rm", "alice", "root"]
    assert "rm -rf /tmp/x" in norm(text)


def test_event_columns_take_the_kubernetes_namespace_not_teleports() -> None:
    fields = {
        "namespace": "default",
        "resource_namespace": "prod",
        "resource_kind": "pods",
        "resource_name": "web-1",
        "verb": "DELETE",
        "user": "Alice",
        "kubernetes_cluster": "k1",
    }
    c = event_columns(fields, 5)
    assert (c.kubernetes_namespace, c.kubernetes_resource_kind, c.kubernetes_resource_name) == (
        "prod",
        "pods",
        "web-1",
    )
    assert c.verb == "delete"  # the Kubernetes verb (no path: the method, lower-cased)
    assert "alice" in c.text_norm
    assert "web-1" in c.text_norm


def test_event_document_has_an_idempotent_id_and_the_monthly_index() -> None:
    fields = {"uid": "u1", "time": "2026-03-04T05:06:07.890123Z", "event": "exec", "sid": "s1"}
    doc = event_document("t1", fields)
    assert doc["_id"] == f"e:t1:u1:{to_us(T0)}"
    assert doc["time_us"] == to_us(T0)
    assert doc["body"] == fields
    assert events_index(doc["time_us"]) == "sv-events-2026.03"
    assert output_index(doc["time_us"]) == "sv-output-2026.03"
    hit = event_hit("t1", to_us(T0), fields)
    assert (hit.id, hit.sid, hit.event, hit.time) == ("u1", "s1", "exec", doc["time"])


def test_times_rle_round_trips() -> None:
    times = [0, 0, 0, 5, 5, 9, 0]
    rle = encode_times(times)
    assert rle == (0, 3, 5, 2, 9, 1, 0, 1)
    assert decode_times(rle) == times


@settings(max_examples=examples(500), deadline=None)
@given(st.lists(st.integers(0, 3), max_size=40))
def test_times_rle_is_the_runs_of_equal_offsets_whatever_their_shape(times: list[int]) -> None:
    # Reference: one (offset, count) pair per maximal run, written out plainly.
    runs: list[int] = []
    for t in times:
        if runs and runs[-2] == t:
            runs[-1] += 1
        else:
            runs += [t, 1]
    assert encode_times(times) == tuple(runs)
    assert decode_times(encode_times(times)) == times


def test_match_offset_is_when_the_last_matched_character_was_written() -> None:
    text = "$ rm -rf /tmp/x"
    times = [100] * 2 + [1000 + 100 * i for i in range(len(text) - 2)]
    rle = encode_times(times)
    assert match_offset_ms(text, rle, ["rm -rf"]) == times[7]
    assert match_offset_ms(text, rle, ["/TMP/X".casefold(), "rm"]) == times[-1]
    assert match_offset_ms(text, rle, []) == 100
    assert match_offset_ms(text, rle, ["nope"]) is None
    # Case folding that expands a character still maps back to the right character.
    assert match_offset_ms("aßb", encode_times([1, 2, 3]), ["ssb"]) == 3


def test_segment_hit_and_document_agree_on_ids() -> None:
    row = SegmentRow("t1", "s1", 7, 100, 900, 10_000, "$ ls", encode_times([100, 200, 800, 900]))
    doc = segment_document(row)
    assert doc["_id"] == "s:s1:7"
    assert doc["id"] == segment_id("s1", 7) == "s1/000000000007"
    hit = segment_hit(row, ["ls"])
    assert (hit.offset_ms, hit.replay) == (900, "sessionvault play s1 --start-at 0.900")


def test_make_page_sets_the_cursor_only_when_there_is_more() -> None:
    q = Query("t1", limit=2)
    hits = [segment_hit(SegmentRow("t1", "s", i, 0, 0, 100 - i, "x", (0, 1)), []) for i in range(3)]
    page = make_page(q, hits, "postgres")
    assert len(page.hits) == 2
    assert page.next_cursor is not None
    assert decode_cursor(page.next_cursor, q) == (99, "s/000000000001")
    assert make_page(q, hits[:2], "postgres").next_cursor is None


def test_escape_like_makes_metacharacters_literal() -> None:
    assert escape_like("50%_a\\b") == "50\\%\\_a\\\\b"


def test_query_time_bounds_in_microseconds() -> None:
    q = Query("t", since=T0, until=T0 + timedelta(microseconds=1))
    assert (q.since_us, q.until_us) == (to_us(T0), to_us(T0) + 1)


def test_split_at_cuts_a_query_at_the_watermark_keeping_its_range_and_keyset_position() -> None:
    from storage.search.model import decode_cursor, encode_cursor, split_at, to_us

    w = to_us(datetime(2026, 11, 21, 10, 0, tzinfo=UTC))
    q = Query(tenant="t", since=datetime(2026, 11, 1, tzinfo=UTC), limit=5)
    q = q.with_cursor(encode_cursor(w + 7, "ev-9", q))
    newer, older = split_at(q, w)
    assert newer is not None
    assert older is not None
    assert (newer.since_us, newer.until_us) == (w, None)
    assert (older.since_us, older.until_us) == (q.since_us, w)
    # Each part keeps the position, re-encoded for its own fingerprint.
    assert decode_cursor(newer.cursor or "", newer) == (w + 7, "ev-9")
    assert decode_cursor(older.cursor or "", older) == (w + 7, "ev-9")
    # A range wholly before or after the watermark is one part only.
    before = Query(tenant="t", until=datetime(2026, 11, 2, tzinfo=UTC))
    assert split_at(before, w) == (None, before)
    after = Query(tenant="t", since=datetime(2026, 11, 22, tzinfo=UTC))
    new_only, none = split_at(after, w)
    assert none is None
    assert new_only is not None
    assert new_only.since_us == after.since_us
