"""Pure parts of the SIEM sinks: configuration, filters, batching, backoff, signatures, HEC
answer classification, syslog/JSONL encoding, and the worker's retry/isolation logic driven
by a scripted sink (no Kafka: the worker's consumer is never opened)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ingest.consumer import Record
from schemas import encode_event
from sessionvault.errors import ConfigError
from sessionvault.settings import Settings
from siem.config import RetryPolicy, SinkFilter, parse_siem_config
from siem.sinks.base import FormatError, SinkError, SinkRejectedError
from siem.sinks.jsonl import JsonlSink
from siem.sinks.splunk_hec import HecSink
from siem.sinks.syslog import SyslogSink
from siem.sinks.webhook import sign, verify_signature
from siem.worker import SinkWorker, exhausted, retry_delay_ms, selected, split_batches

HEC = b"""
[[sink]]
name = "splunk"
type = "splunk_hec"
url = "https://hec.example:8088/"
token = { env = "HEC_TOKEN" }
ack = true
[sink.filter]
event_types = ["session.*"]
"""


def event(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "sv_version": 1,
        "tenant": "acme",
        "event": "session.command",
        "code": "T4000I",
        "uid": f"u{i}",
        "sid": "s1",
        "time": "2026-01-02T03:04:05.678Z",
        "user": "alice",
        **extra,
    }


# --- configuration ----------------------------------------------------------------------------


def test_config_reads_secret_from_env_and_never_shows_it() -> None:
    cfg = parse_siem_config(HEC, env={"HEC_TOKEN": "s3cr3t-token"}).sinks[0]
    assert cfg.group_id == "siem-splunk"
    assert cfg.options.token.get() == "s3cr3t-token"  # type: ignore[union-attr]
    assert "s3cr3t-token" not in repr(cfg)
    assert cfg.options.url == "https://hec.example:8088"  # type: ignore[union-attr]
    assert cfg.filter.event_types == ("session.*",)


def test_config_yaml_and_json_give_the_same_sinks_as_toml() -> None:
    yaml_doc = b"sink:\n  - name: f\n    type: jsonl\n    path: /tmp/x.jsonl\n    format: ecs\n"
    json_doc = orjson.dumps(
        {"sink": [{"name": "f", "type": "jsonl", "path": "/tmp/x.jsonl", "format": "ecs"}]}
    )
    toml_doc = b'[[sink]]\nname = "f"\ntype = "jsonl"\npath = "/tmp/x.jsonl"\nformat = "ecs"\n'
    a = parse_siem_config(yaml_doc, suffix=".yaml")
    b = parse_siem_config(json_doc, suffix=".json")
    c = parse_siem_config(toml_doc)
    assert a == b == c


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        (b'[[sink]]\nname = "x"\ntype = "jsonl"\npth = "/tmp/a"\n', "unknown key"),
        (b'[[sink]]\nname = "x"\ntype = "kafka"\n', "type 'kafka'"),
        (b'[[sink]]\nname = "x"\ntype = "jsonl"\nformat = "leef"\n', "format 'leef'"),
        (b'[[sink]]\nname = "X y"\ntype = "jsonl"\n', "name"),
        (b'[[sink]]\nname = "h"\ntype = "webhook"\nurl = "http://a"\n', "'hmac_key' is required"),
        (b'[[sink]]\nname = "s"\ntype = "syslog"\nhost = "a"\nframing = "newline"\n', "RFC 5425"),
        (b'[[sink]]\nname = "a"\ntype = "jsonl"\n[[sink]]\nname = "a"\ntype = "jsonl"\n', "unique"),
    ],
)
def test_config_refuses_mistakes_with_a_message_naming_them(doc: bytes, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_siem_config(doc, env={})


def test_config_env_secret_missing_is_an_error() -> None:
    with pytest.raises(ConfigError, match="HEC_TOKEN is not set"):
        parse_siem_config(HEC, env={})


# --- filters, batching, backoff ---------------------------------------------------------------


def test_filter_tenants_globs_and_output_skipped_by_default() -> None:
    f = SinkFilter(
        tenants=("acme",), event_types=("session.*", "kube.*"), exclude_types=("session.end",)
    )
    assert selected(event(), f)
    assert not selected(event(tenant="other"), f)
    assert not selected(event(event="session.end"), f)
    assert not selected(event(event="user.login"), f)
    assert selected(event(event="kube.request"), f)
    assert not selected(event(event="print"), SinkFilter())
    assert selected(event(event="print"), SinkFilter(include_output=True))
    assert selected(event(event="anything"), SinkFilter())


def test_split_batches_respects_counts_and_bytes_and_keeps_order() -> None:
    assert split_batches([], 3, 100) == []
    assert split_batches([10] * 7, 3, 1000) == [range(0, 3), range(3, 6), range(6, 7)]
    assert split_batches([40, 40, 40, 10], 10, 100) == [range(0, 2), range(2, 4)]
    # An item larger than max_bytes travels alone rather than never.
    assert split_batches([5, 500, 5], 10, 100) == [range(0, 1), range(1, 2), range(2, 3)]


def test_backoff_doubles_up_to_the_cap_and_attempts_are_bounded() -> None:
    p = RetryPolicy(max_attempts=4, backoff_base_ms=100, backoff_max_ms=500)
    assert [retry_delay_ms(a, p) for a in range(1, 6)] == [100, 200, 400, 500, 500]
    assert not exhausted(3, p)
    assert exhausted(4, p)
    assert not exhausted(10**6, RetryPolicy(max_attempts=0))


# --- webhook signature ------------------------------------------------------------------------


def test_webhook_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    body = b'{"events":[]}'
    sig = sign(b"k", "1700000000", body)
    assert sig == "sha256=" + hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert verify_signature(b"k", body, "1700000000", sig, now=1700000100)
    assert not verify_signature(b"k", body, "1700000000", sig, now=1700009999)  # stale
    assert not verify_signature(b"k", body + b" ", "1700000000", sig, now=1700000000)
    assert not verify_signature(b"k", body, "1700000001", sig, now=1700000000)  # replayed ts


# --- HEC answers ------------------------------------------------------------------------------


def hec_sink() -> HecSink:
    cfg = parse_siem_config(HEC, env={"HEC_TOKEN": "t"}).sinks[0]
    return HecSink("splunk", cfg.options, "native")  # type: ignore[arg-type]


def answer(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body))


def test_hec_errors_split_into_retriable_config_and_event_rejections() -> None:
    s = hec_sink()
    bad_event = s._error(
        answer(400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 3})
    )
    assert isinstance(bad_event, SinkRejectedError)
    assert bad_event.index == 3
    busy = s._error(answer(503, {"text": "Server is busy", "code": 9}))
    assert busy.retriable
    assert not isinstance(busy, SinkRejectedError)
    token = s._error(answer(403, {"text": "Token disabled", "code": 1}))
    assert not isinstance(token, SinkRejectedError)  # never bisected over the events
    assert "t" not in str(token).split(":")[-1].strip().split()  # no token echo


def test_hec_envelope_has_epoch_seconds_with_ms_and_the_event() -> None:
    env = orjson.loads(hec_sink().encode(event()) or b"")
    assert env["time"] == 1767323045.678
    assert env["event"]["uid"] == "u0"
    assert hec_sink().channel  # ack on: a channel id exists


# --- syslog and JSONL encodings ---------------------------------------------------------------


def syslog(transport: str, **extra: Any) -> SyslogSink:
    lines = [f"{k} = {orjson.dumps(v).decode()}" for k, v in extra.items()]
    doc = "\n".join(
        [
            "[[sink]]",
            'name = "s"',
            'type = "syslog"',
            'host = "127.0.0.1"',
            f'transport = "{transport}"',
            *lines,
        ]
    )
    cfg = parse_siem_config(doc.encode()).sinks[0]
    return SyslogSink("s", cfg.options, cfg.format)  # type: ignore[arg-type]


def test_syslog_tls_units_are_octet_counted() -> None:
    unit = syslog("tls").encode(event(user="a\nb")) or b""
    length, _, msg = unit.partition(b" ")
    assert int(length) == len(msg)
    assert msg.startswith(b"<")


def test_syslog_udp_refuses_messages_over_the_datagram_limit() -> None:
    sink = syslog("udp", max_datagram_bytes=600)
    assert sink.encode(event())
    with pytest.raises(FormatError) as err:
        sink.encode(event(command="x" * 2000))
    assert err.value.reason == "oversize"


def test_jsonl_cef_line_is_a_json_string_on_one_line(tmp_path: Path) -> None:
    cfg = parse_siem_config(
        f'[[sink]]\nname = "j"\ntype = "jsonl"\nformat = "cef"\npath = "{tmp_path / "x"}"'.encode()
    ).sinks[0]
    unit = JsonlSink("j", cfg.options, "cef").encode(event(user="a\nb"))  # type: ignore[arg-type]
    assert unit is not None
    assert unit.count(b"\n") == 1
    assert orjson.loads(unit).startswith("CEF:0|")


# --- the worker's delivery logic with a scripted sink -----------------------------------------


class ScriptedSink:
    """Fails the first ``fail`` deliveries (retriable), refuses any batch holding a unit with
    b"BAD" (index given or not), records delivered batches."""

    name = "scripted"

    def __init__(self, *, fail: int = 0, name_index: bool = True) -> None:
        self.fail = fail
        self.name_index = name_index
        self.batches: list[list[bytes]] = []
        self.tries = 0

    def encode(self, ev: Any) -> bytes | None:
        if ev.get("event") == "unmapped":
            return None
        if ev.get("user") == "explode":
            raise FormatError("format_error", "cannot")
        return str(ev["uid"]).encode() + (b"BAD" if ev.get("user") == "bad" else b"")

    def deliver(self, units: Sequence[bytes]) -> None:
        self.tries += 1
        if self.fail > 0:
            self.fail -= 1
            raise SinkError("peer down")
        for i, u in enumerate(units):
            if u.endswith(b"BAD"):
                raise SinkRejectedError("refused", index=i if self.name_index else None)
        self.batches.append(list(units))

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def worker(sink: ScriptedSink, offline_settings: Settings, **retry: int) -> SinkWorker:
    import dataclasses

    doc = b'[[sink]]\nname = "w"\ntype = "jsonl"\n[sink.batch]\nmax_events = 4\n'
    cfg = parse_siem_config(doc).sinks[0]
    cfg = dataclasses.replace(
        cfg, retry=RetryPolicy(**{"backoff_base_ms": 1, "backoff_max_ms": 2, **retry})
    )
    settings = dataclasses.replace(offline_settings, kafka_bootstrap="127.0.0.1:1")
    return SinkWorker(settings, cfg, sink=sink, state_home=offline_settings.home)


def records(events: list[dict[str, Any]]) -> list[Record]:
    return [Record("t", 0, i, b"k", encode_event(e)) for i, e in enumerate(events)]


@pytest.mark.parametrize("name_index", [True, False])
def test_worker_isolates_refused_event_and_delivers_the_rest_in_order(
    offline_settings: Settings, name_index: bool
) -> None:
    sink = ScriptedSink(name_index=name_index)
    w = worker(sink, offline_settings)
    evs = [event(i, user="bad" if i in (2, 5) else "ok") for i in range(8)]
    items, rejects = w.prepare(records(evs))
    assert rejects == []
    dead = asyncio.run(w._deliver_all(items))
    assert [d.record.offset for d in dead] == [2, 5]
    assert {d.reason for d in dead} == {"sink_rejected"}
    delivered = [u for b in sink.batches for u in b]
    assert delivered == [f"u{i}".encode() for i in range(8) if i not in (2, 5)]


def test_worker_retries_the_same_batch_then_succeeds(offline_settings: Settings) -> None:
    sink = ScriptedSink(fail=3)
    w = worker(sink, offline_settings, max_attempts=5)
    items, _ = w.prepare(records([event(i) for i in range(3)]))
    assert asyncio.run(w._deliver_all(items)) == []
    assert sink.tries == 4
    assert sink.batches == [[b"u0", b"u1", b"u2"]]
    assert w.stats.failures == 3


def test_worker_dead_letters_after_max_attempts(offline_settings: Settings) -> None:
    sink = ScriptedSink(fail=100)
    w = worker(sink, offline_settings, max_attempts=3)
    items, _ = w.prepare(records([event(i) for i in range(3)]))
    dead = asyncio.run(w._deliver_all(items))
    assert sink.tries == 3
    assert [d.reason for d in dead] == ["sink_unavailable"] * 3
    assert [d.record.value for d in dead] == [encode_event(event(i)) for i in range(3)]


def test_worker_prepare_rejects_bad_records_and_skips_unmapped(
    offline_settings: Settings,
) -> None:
    w = worker(ScriptedSink(), offline_settings)
    recs = records([event(0), event(1, user="explode"), event(2, event="unmapped")])
    recs.append(Record("t", 0, 3, b"k", b"{not json"))
    items, rejects = w.prepare(recs)
    assert [r.offset for r, _ in items] == [0]
    assert sorted((r.record.offset, r.reason) for r in rejects) == [
        (1, "format_error"),
        (3, "bad_json"),
    ]
    assert w.stats.skipped == 1
