"""Pure parts of the search front ends: CSV escaping and formula neutralisation, terminal-safe
tables, time parsing, query building."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

from api.search_format import csv_header, csv_rows, format_table, neutralise_formula
from api.search_query import make_query, parse_when
from sessionvault.errors import ValidationError
from storage.search.model import EventHit, SegmentHit

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def seg(text: str) -> SegmentHit:
    return SegmentHit(
        kind="output",
        tenant="t",
        time_us=1_795_000_000_000_000,
        id="s/000000000001",
        user="u",
        login="root",
        server_id="n",
        cluster_name="",
        kubernetes_cluster="",
        sid="s",
        offset_ms=1500,
        seg_no=1,
        start_ms=1000,
        end_ms=1600,
        text=text,
    )


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+cmd", "'+cmd"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("plain = text", "plain = text"),
        ("", ""),
    ],
)
def test_formula_cells_get_a_leading_quote(cell: str, expected: str) -> None:
    assert neutralise_formula(cell) == expected


def test_csv_round_trips_quotes_commas_and_newlines_and_neutralises_formulas() -> None:
    texts = ['a "quoted", comma', "line1\nline2", '=HYPERLINK("http://x")']
    data = csv_header() + csv_rows(seg(t) for t in texts)
    rows = list(csv.DictReader(io.StringIO(data, newline="")))
    assert [r["text"] for r in rows] == [texts[0], texts[1], "'" + texts[2]]
    assert rows[0]["replay"] == "sessionvault play s --start-at 1.500"
    assert rows[0]["offset_ms"] == "1500"


def test_csv_event_rows_carry_the_stored_fields_as_json() -> None:
    hit = EventHit(
        kind="event",
        tenant="t",
        time_us=1,
        id="u1",
        user="-rf",
        login="",
        server_id="",
        cluster_name="",
        kubernetes_cluster="",
        sid=None,
        offset_ms=None,
        event="exec",
        code="T3002I",
        fields={"event": "exec", "command": "=evil"},
    )
    [row] = list(csv.DictReader(io.StringIO(csv_header() + csv_rows([hit]), newline="")))
    assert row["user"] == "'-rf"
    assert row["fields"] == '{"command":"=evil","event":"exec"}'
    assert row["sid"] == row["replay"] == ""


def test_table_never_passes_control_characters_to_the_terminal() -> None:
    out = format_table([seg("ok \x1b]0;pwned\x07 \x9b2J")])
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "\x9b" not in out
    assert "\\x1b]0;pwned\\x07" in out


def test_parse_when_takes_rfc3339_with_microseconds_and_spans() -> None:
    assert parse_when("since", "2026-11-20T10:00:00.000123Z") == datetime(
        2026, 11, 20, 10, 0, 0, 123, tzinfo=UTC
    )
    assert parse_when("since", "24h", now=NOW) == datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    assert parse_when("since", "2w", now=NOW) == datetime(2026, 11, 7, 12, 0, tzinfo=UTC)
    assert parse_when("since", None) is None
    with pytest.raises(ValidationError, match="since"):
        parse_when("since", "yesterday")


def test_make_query_maps_kinds_and_filters_and_refuses_unknown_ones() -> None:
    q = make_query("t", filters={"user": ["a", "b"], "verb": []}, kind="events", text=["x"])
    assert q.kinds == ("event",)
    assert q.user == ("a", "b")
    assert q.verb == ()
    assert make_query("t").kinds == ("event", "output")
    with pytest.raises(ValidationError):
        make_query("t", filters={"tenant": ["other"]})
    with pytest.raises(ValidationError):
        make_query("t", kind="everything")
