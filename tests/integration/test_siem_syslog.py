"""Syslog sink against a REAL rsyslogd (Debian packages rsyslog + rsyslog-gnutls) started by
the test on 127.0.0.1: RFC 5424 over TLS with RFC 5425 octet counting (imtcp + gtls), plain
TCP (imptcp, octet counting and newline framing) and UDP (imudp).

rsyslog writes every received message with a template that keeps it exactly (``rawmsg``,
JSON-escaped, one object per line). The events' user and command fields hold newlines,
``|``, ``=``, ``]``, quotes and text that looks like syslog and CEF headers; the tests require
exactly one record per event, in per-session order, each record's fields intact after
undoing only the documented escaping (CEF, RFC 5424 PARAM-VALUE).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from sessionvault.settings import Settings
from siem.config import parse_siem_config
from tests.integration.siem_support import (
    NASTY_USERS,
    make_events,
    produce_events,
    rsyslogd,
    running_sink,
)

pytestmark = pytest.mark.integration


# --- independent parsers of what rsyslog wrote -----------------------------------------------


def split_unescaped(text: str, sep: str, limit: int) -> list[str]:
    """Split on ``sep`` not preceded by a backslash escape, at most ``limit`` times."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if c == sep and len(parts) < limit:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def cef_unescape(value: str) -> str:
    table = {"\\": "\\", "=": "=", "|": "|", "n": "\n", "r": "\r"}
    return re.sub(r"\\(.)", lambda m: table.get(m.group(1), "\\" + m.group(1)), value)


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """CEF header fields and extension (keys are words followed by an unescaped '=')."""
    fields = split_unescaped(line, "|", 7)
    assert len(fields) == 8, f"not 8 CEF fields: {line!r}"
    ext = fields[7]
    # Positions of unescaped '=' (each one ends a key).
    eqs = [m.end() - 1 for m in re.finditer(r"(?<!\\)(?:\\\\)*=", ext)]
    out: dict[str, str] = {}
    keys: list[tuple[str, int, int]] = []
    for pos in eqs:
        m = re.search(r"(?:^| )([A-Za-z0-9_]+)$", ext[:pos])
        assert m, f"no key before '=' at {pos} in {ext!r}"
        keys.append((m.group(1), m.start(1), pos + 1))
    for n, (key, _, vstart) in enumerate(keys):
        vend = keys[n + 1][1] - 1 if n + 1 < len(keys) else len(ext)
        assert key not in out, f"key {key} twice: forged? {ext!r}"
        out[key] = cef_unescape(ext[vstart:vend])
    return [cef_unescape(f) for f in fields[:7]], out


def parse_sd(sd: str) -> tuple[str, dict[str, str]]:
    """One RFC 5424 SD-ELEMENT ``[id k="v" ...]`` with \\" \\\\ \\] escapes."""
    m = re.fullmatch(r"\[(\S+)((?: [^=\s]+=\"(?:[^\"\\]|\\.)*\")*)\]", sd, re.S)
    assert m, f"not one SD-ELEMENT: {sd!r}"
    params = {
        k: re.sub(r"\\([\"\\\]])", r"\1", v)
        for k, v in re.findall(r" ([^=\s]+)=\"((?:[^\"\\]|\\.)*)\"", m.group(2), re.S)
    }
    return m.group(1), params


def sd_expected(value: str) -> str:
    """A PARAM-VALUE as the sink documents it after unescaping \\" \\\\ \\]: control
    characters (C0, DEL, C1) as #ooo, in octal."""
    return re.sub("[\x00-\x1f\x7f-\x9f]", lambda m: f"#{ord(m.group()):03o}", value)


def cef_clean(text: str) -> str:
    """What the CEF format documents for characters it cannot carry (U+2028 etc. -> U+FFFD)."""
    return re.sub("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]", "\ufffd", text)


def sink_config(kind: str, port: int, fmt: str, cert: Path, **extra: Any) -> bytes:
    lines = [
        "[[sink]]",
        'name = "rsyslog"',
        'type = "syslog"',
        f'format = "{fmt}"',
        'host = "127.0.0.1"',
        f"port = {port}",
        f'transport = "{kind}"',
        *(f"{k} = {orjson.dumps(v).decode()}" for k, v in extra.items()),
        "[sink.batch]",
        "max_events = 7",
        "linger_ms = 20",
        "[sink.tls]",
        f'ca_file = "{cert}"',
        'server_name = "localhost"',
    ]
    return "\n".join(lines).encode()


def deliver_all(settings: Settings, config: bytes, events: list[dict[str, Any]]) -> int:
    cfg = parse_siem_config(config).sinks[0]
    wanted = sum(1 for e in events if e["event"] != "print")
    produce_events(settings, events)
    with running_sink(settings, cfg) as run:
        run.wait(lambda: run.worker.stats.delivered >= wanted, 60, f"{wanted} deliveries")
        run.wait(lambda: run.worker.stats.records >= len(events), 30, "all records handled")
    assert run.worker.stats.dead_letters == 0
    assert run.worker.stats.delivered == wanted
    return wanted


def wait_records(rs: Any, name: str, n: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        recs = rs.records(name)
        if len(recs) >= n or time.monotonic() > deadline:
            # A little longer: extra (forged/split) records would arrive right behind.
            time.sleep(0.5)
            return list(rs.records(name))
        time.sleep(0.1)


def by_uid(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["uid"]: e for e in events if e["event"] != "print"}


def check_session_order(uids: list[str], events: list[dict[str, Any]]) -> None:
    """Within each session, the records come in the order the events were produced."""
    produced: dict[str, list[str]] = {}
    for e in events:
        if e["event"] != "print":
            produced.setdefault(e["sid"], []).append(e["uid"])
    got: dict[str, list[str]] = {}
    for uid in uids:
        got.setdefault(uid.rsplit("-", 1)[0], []).append(uid)
    assert got == produced


def test_tls_cef_records_arrive_exactly_once_each_with_fields_intact(
    settings: Settings, tmp_path: Path
) -> None:
    events = make_events(settings.tenant, sessions=5, per_session=6)
    with rsyslogd(tmp_path / "rsyslog") as rs:
        config = sink_config("tls", rs.tls_port, "cef", rs.cert)
        n = deliver_all(settings, config, events)
        recs = wait_records(rs, "tls", n)
    assert len(recs) == n, f"expected {n} records, rsyslog wrote {len(recs)}"
    expected = by_uid(events)
    uids = []
    for rec in recs:
        sd_id, params = parse_sd(rec["sd"])
        assert sd_id == "sessionvault@32473"
        header, ext = parse_cef(rec["msg"])
        assert header[0] == "CEF:0"
        uid = ext["externalId"]
        uids.append(uid)
        ev = expected[uid]
        assert rec["msgid"] == ev["event"]
        assert header[4] == ev["code"]
        assert header[5] == ev["event"]
        # The CEF extension and the structured data each carry the fields intact.
        assert ext["suser"] == cef_clean(ev["user"])
        assert params["user"] == sd_expected(ev["user"])
        assert params["uid"] == uid
        assert params["sid"] == ev["sid"]
        assert ext["cs1"] == ev["sid"]
        assert ext["cs2"] == settings.tenant
        if ev["event"] == "session.command":
            labels = {ext[k + "Label"]: ext[k] for k in ("cs1", "cs2", "cs3") if k in ext}
            assert labels["command"] == cef_clean(f"/bin/sh -c {ev['command']}")
        else:
            assert "cs3" not in ext
        # Nothing forged: only the keys the format defines.
        assert set(ext) <= {
            "rt",
            "externalId",
            "act",
            "suser",
            "duser",
            "src",
            "spt",
            "dhost",
            "dvchost",
            "cs1",
            "cs1Label",
            "cs2",
            "cs2Label",
            "cs3",
            "cs3Label",
        }
    assert sorted(uids) == sorted(expected), "missing or duplicated records"
    check_session_order(uids, events)
    # The rawmsg is exactly header + SP + MSG: nothing merged around it.
    for rec in recs:
        assert rec["raw"].endswith(" " + rec["msg"])
        assert rec["raw"].startswith("<")


def test_plain_tcp_octet_counted_native_json_is_exact(settings: Settings, tmp_path: Path) -> None:
    events = make_events(settings.tenant, sessions=4, per_session=5)
    with rsyslogd(tmp_path / "rsyslog") as rs:
        config = sink_config("tcp", rs.tcp_port, "native", rs.cert, framing="octet")
        n = deliver_all(settings, config, events)
        recs = wait_records(rs, "tcp", n)
    assert len(recs) == n
    expected = by_uid(events)
    uids = []
    for rec in recs:
        doc = orjson.loads(rec["msg"])
        ev = expected[doc["uid"]]
        uids.append(doc["uid"])
        # Native JSON keeps every field exactly (newlines, quotes, U+2028 included).
        assert doc == ev
        _, params = parse_sd(rec["sd"])
        assert params["user"] == sd_expected(ev["user"])
    assert sorted(uids) == sorted(expected)
    check_session_order(uids, events)


def test_plain_tcp_newline_framing_escapes_line_ends_and_never_splits(
    settings: Settings, tmp_path: Path
) -> None:
    events = make_events(settings.tenant, sessions=4, per_session=5)
    with rsyslogd(tmp_path / "rsyslog") as rs:
        config = sink_config("tcp", rs.tcp_port, "native", rs.cert, framing="newline")
        n = deliver_all(settings, config, events)
        recs = wait_records(rs, "tcp", n)
    assert len(recs) == n
    expected = by_uid(events)
    uids = []
    for rec in recs:
        doc = orjson.loads(rec["msg"])
        uids.append(doc["uid"])
        assert doc == expected[doc["uid"]]
        _, params = parse_sd(rec["sd"])
        assert params["user"] == sd_expected(expected[doc["uid"]]["user"])
    check_session_order(uids, events)


def test_udp_one_message_per_datagram(settings: Settings, tmp_path: Path) -> None:
    events = make_events(settings.tenant, sessions=2, per_session=4)
    with rsyslogd(tmp_path / "rsyslog") as rs:
        config = sink_config("udp", rs.udp_port, "native", rs.cert, max_datagram_bytes=8192)
        n = deliver_all(settings, config, events)
        recs = wait_records(rs, "udp", n)
    # UDP on loopback with a handful of datagrams: none is expected to be lost.
    assert len(recs) == n
    docs = [orjson.loads(r["msg"]) for r in recs]
    assert sorted(d["uid"] for d in docs) == sorted(by_uid(events))
    for d in docs:
        assert d == by_uid(events)[d["uid"]]


@pytest.mark.parametrize(
    ("kind", "fmt", "extra"),
    [
        ("udp", "native", {"max_datagram_bytes": 8192}),
        ("udp", "cef", {"max_datagram_bytes": 8192}),
        ("tcp", "ecs", {"framing": "octet"}),
        ("tls", "native", {}),
    ],
)
def test_no_control_character_from_a_user_field_reaches_the_receiver_on_any_transport(
    settings: Settings, tmp_path: Path, kind: str, fmt: str, extra: dict[str, Any]
) -> None:
    """rsyslog keeps control characters as received here (escaping on receive is off): not
    one CR, LF, NUL, ESC or NEL arrives, and no record is split or forged."""
    events = make_events(settings.tenant, sessions=len(NASTY_USERS), per_session=2)
    assert any("\x00" in e.get("user", "") for e in events)
    with rsyslogd(tmp_path / "rsyslog") as rs:
        config = sink_config(kind, getattr(rs, f"{kind}_port"), fmt, rs.cert, **extra)
        n = deliver_all(settings, config, events)
        recs = wait_records(rs, kind, n)
    assert len(recs) == n
    for rec in recs:
        assert not re.search("[\x00-\x1f\x7f-\x9f]", rec["raw"]), rec["raw"]
