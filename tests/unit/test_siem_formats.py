"""siem.formats: escaping that cannot forge, split or merge records; secrets never output."""

from __future__ import annotations

import random
import re
from typing import Any

import orjson
import pytest

from siem.formats import (
    FORMATS,
    format_cef,
    format_native,
    hec_batch,
    hec_envelope,
    is_terminal_output,
    lf_frame,
    octet_frame,
    strip_secrets,
    syslog_message,
    to_ecs,
)
from siem.formats.cef import cef_escape_header, cef_escape_value
from siem.formats.syslog import sd_escape

HOSTILE = [
    "alice\nFeb 30 forged: record",
    "a|b|c",
    "k=v x=y",
    "back\\slash\\",
    "br]acket]",
    'quo"te"',
    "nul\x00byte",
    "line\u2028sep\u2029para\x85nel",
    "cr\r\nlf",
    "CEF:0|evil|evil|1|1|1|10|suser=root",
    '"] [forged@1 x="y"]',
    "x" * 100_000,
    "ünïcødé ✓ 日本",
]


def _event(**over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "sv_version": 1,
        "tenant": "acme",
        "event": "session.command",
        "code": "T4000I",
        "time": "2026-01-02T03:04:05.678Z",
        "uid": "uid-1",
        "sid": "sid-1",
        "user": "alice",
        "login": "root",
        "path": "/usr/bin/curl",
        "argv": ["-s", "https://example.com"],
        "addr.remote": "10.1.2.3:5555",
    }
    ev.update(over)
    return ev


def _hostile_events() -> list[dict[str, Any]]:
    rng = random.Random(5)
    out = []
    for value in HOSTILE:
        out.append(_event(user=value, login=value, argv=[value, "|", value], request_path=value))
    for _ in range(50):  # random mixes of the dangerous characters
        s = "".join(rng.choice('ab|=]"\\\n\r\x00\u2028 \t') for _ in range(rng.randint(0, 40)))
        out.append(_event(user=s, login=s[::-1], argv=[s], command=s))
    return out


# -- CEF -------------------------------------------------------------------------------------

_CEF_EXT_PAIR = re.compile(r"(\w+)=((?:[^\\=]|\\.)*?)(?= \w+=|$)")


def _cef_unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), v)


def _parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """A strict CEF reader: 7 header fields split on unescaped pipes, then k=v pairs."""
    fields: list[str] = []
    cur, i = "", 0
    while len(fields) < 7:
        ch = line[i]
        if ch == "\\":
            cur += line[i : i + 2]
            i += 2
            continue
        if ch == "|":
            fields.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    ext = line[i:]
    pairs = {m.group(1): _cef_unescape(m.group(2)) for m in _CEF_EXT_PAIR.finditer(ext)}
    # Every character of the extension is covered by the pairs (no unparsed residue).
    rebuilt = " ".join(f"{m.group(1)}={m.group(2)}" for m in _CEF_EXT_PAIR.finditer(ext))
    assert rebuilt == ext
    return [_cef_unescape(f) for f in fields], pairs


def test_cef_hostile_values_stay_one_record_and_round_trip_to_their_keys() -> None:
    for ev in _hostile_events():
        line = format_cef(ev, max_value_chars=200_000)
        assert "\n" not in line
        assert "\r" not in line
        assert "\x00" not in line
        assert "\u2028" not in line
        assert "\u2029" not in line
        assert "\x85" not in line
        header, ext = _parse_cef(line)
        assert header[0] == "CEF:0"
        assert header[1] == "sessionvault"
        assert len(header) == 7
        safe_user = re.sub("[\x00\t\u2028\u2029\x85]", "\ufffd", ev["user"])
        assert ext["suser"] == safe_user
        assert ext["externalId"] == "uid-1"
        assert ext["cs1"] == "sid-1"
        # no key other than the ones we write can appear
        assert set(ext) <= {
            "rt", "externalId", "act", "suser", "duser", "src", "spt", "dhost", "dvchost",
            "requestMethod", "request", "outcome", "cn1", "cn1Label", "cs1", "cs1Label", "cs2",
            "cs2Label", "cs3", "cs3Label", "cs4", "cs4Label", "cs5", "cs5Label",
            "cs6", "cs6Label",
        }  # fmt: skip


def test_cef_escapes_pipe_and_backslash_in_header_and_equals_in_values() -> None:
    assert cef_escape_header("a|b\\c\nd") == "a\\|b\\\\c\\nd"
    assert cef_escape_value("a=b\\c\r\nd|e") == "a\\=b\\\\c\\r\\nd|e"
    line = format_cef(_event(event="ev|il", code="T|1"))
    assert line.split("|")[0:4] == ["CEF:0", "sessionvault", "sessionvault", "0.1.0"]
    assert "|T\\|1|ev\\|il|1|" in line


def test_cef_long_values_are_cut_not_split() -> None:
    line = format_cef(_event(user="=" * 50_000), max_value_chars=100)
    _, ext = _parse_cef(line)
    assert ext["suser"] == "=" * 99 + "…"


# -- syslog ----------------------------------------------------------------------------------

_SD = re.compile(
    rb'^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) \[(\S+)((?: \w+="(?:[^"\\\]]|\\.)*")*)\] '
)


def _parse_octet_stream(data: bytes) -> list[bytes]:
    out = []
    while data:
        n, _, rest = data.partition(b" ")
        out.append(rest[: int(n)])
        data = rest[int(n) :]
    return out


def test_syslog_octet_framing_keeps_every_hostile_record_whole() -> None:
    events = _hostile_events()
    msgs = [syslog_message(ev, app_name="sessionvault", hostname="node 1\n") for ev in events]
    stream = b"".join(octet_frame(m) for m in msgs)
    assert _parse_octet_stream(stream) == msgs
    for ev, msg in zip(events, msgs, strict=True):
        m = _SD.match(msg)
        assert m is not None, msg[:200]
        assert m.group(3) == b"node_1_"  # HOSTNAME: printable ASCII, no spaces
        params = dict(re.findall(rb' (\w+)="((?:[^"\\\]]|\\.)*)"', m.group(8)))
        unescaped = re.sub(rb"\\(.)", rb"\1", params[b"user"], flags=re.DOTALL)
        # Control characters are #ooo (octal), whatever the framing.
        want = re.sub("[\x00-\x1f\x7f-\x9f]", lambda m: f"#{ord(m.group()):03o}", ev["user"])
        assert unescaped.decode() == want.replace("\ud800", "?")
        body = msg[m.end() :]
        assert orjson.loads(body)["user"] == ev["user"]


def test_syslog_lf_framing_leaves_only_the_terminating_newline() -> None:
    for ev in _hostile_events():
        framed = lf_frame(syslog_message(ev))
        assert framed.endswith(b"\n")
        assert framed.count(b"\n") == 1
        assert b"\r" not in framed
        assert b"\x00" not in framed


def test_syslog_sd_escape_and_priority() -> None:
    assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    msg = syslog_message(_event(code="T1000W", event="user.login"))
    assert msg.startswith(b"<84>1 2026-01-02T03:04:05.678Z - sessionvault - user.login ")
    assert syslog_message(_event(), bom=True, payload=lambda e: b"x").endswith(b"] \xef\xbb\xbfx")


# -- JSON formats, HEC -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["native", "ecs", "ocsf"])
def test_json_formats_are_single_lines_that_parse_back(name: str) -> None:
    for ev in _hostile_events():
        out = FORMATS[name](ev)
        assert out is not None
        assert b"\n" not in out
        assert b"\r" not in out
        assert b"\xe2\x80\xa8" not in out
        assert isinstance(orjson.loads(out), dict)


def test_native_keeps_the_event_values_exactly() -> None:
    ev = _event(user='a\u2028b"c\n', extra={"k": [1, 2]})
    assert orjson.loads(format_native(ev)) == ev


def test_hec_envelope_has_splunk_fields_and_batch_splits_back() -> None:
    events = _hostile_events()[:20]
    envs = [hec_envelope(e, index="sv", sourcetype="sessionvault:audit") for e in events]
    assert envs[0]["time"] == 1767323045.678
    assert set(envs[0]) == {"time", "host", "source", "sourcetype", "index", "event", "fields"}
    body = hec_batch(envs)
    parsed = [orjson.loads(line) for line in body.split(b"\n")]
    assert [p["event"]["user"] for p in parsed] == [e["user"] for e in events]
    env = hec_envelope(_event(), body=format_cef)
    assert isinstance(env["event"], str)
    assert env["event"].startswith("CEF:0|")


def test_ecs_maps_core_fields() -> None:
    doc = to_ecs(_event())
    assert doc["@timestamp"] == "2026-01-02T03:04:05.678Z"
    assert doc["event"]["category"] == ["process"]
    assert doc["event"]["kind"] == "event"
    assert doc["user"]["name"] == "alice"
    assert doc["source"] == {
        "address": "10.1.2.3",
        "ip": "10.1.2.3",
        "port": 5555,
    }
    assert doc["process"]["command_line"] == "/usr/bin/curl -s https://example.com"
    kube = to_ecs(_event(event="kube.request", verb="GET", request_path="/api/v1/secrets",
                         kubernetes_cluster="c1", response_code=200))  # fmt: skip
    assert kube["http"]["request"]["method"] == "GET"
    assert kube["url"]["path"] == "/api/v1/secrets"


# -- secrets and terminal output -------------------------------------------------------------

SECRET = "s3cr3t-VALUE-9f8e"


def _secret_event() -> dict[str, Any]:
    return _event(
        password=SECRET,
        nested={"api_key": SECRET, "db": {"token": SECRET}, "ok": "visible"},
        dsn=SECRET,
        extra={"conn": SECRET},
        secret_fields=["dsn", "extra.conn"],
        kube_audit={"requestObject": {"data": {"x": SECRET}}, "auditID": "a1"},
    )


def test_no_format_outputs_a_secret_field() -> None:
    ev = _secret_event()
    outputs = [f(ev) or b"" for f in FORMATS.values()]
    outputs.append(syslog_message(ev))
    outputs.append(orjson.dumps(hec_envelope(ev)))
    outputs.append(format_cef(ev).encode())
    for out in outputs:
        assert SECRET.encode() not in out
    stripped = strip_secrets(ev)
    assert stripped["nested"] == {"db": {}, "ok": "visible"}
    assert "dsn" not in stripped
    assert stripped["extra"] == {}
    assert stripped["kube_audit"] == {"auditID": "a1"}
    assert ev["password"] == SECRET  # the input is not mutated


def test_terminal_output_records_are_recognised() -> None:
    assert is_terminal_output({"kind": "output", "text": "ls"})
    assert is_terminal_output({"event": "print", "bytes": 10})
    assert not is_terminal_output(_event())
