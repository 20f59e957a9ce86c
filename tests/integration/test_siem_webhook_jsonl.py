"""Signed webhook (a real HTTP receiver on 127.0.0.1 verifying the HMAC), the JSON-lines file
sink, filters, and the sink's lag and failure counts in ``sessionvault status``."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from deploy.stack import LocalStack, free_port
from sessionvault.cli.stack import format_status
from sessionvault.settings import Settings
from siem.config import parse_siem_config
from tests.integration.persist_helpers import group_lag
from tests.integration.siem_support import make_events, produce_events, running_sink

pytestmark = pytest.mark.integration

KEY = "whsec-test-key-7f3a"


class SignedReceiver:
    """Accepts a POST only when X-Sessionvault-Signature is the HMAC-SHA256 (with KEY) of
    "<X-Sessionvault-Timestamp>.<body>" and the timestamp is fresh; computed here with hmac
    directly, not with the sink's code."""

    def __init__(self, key: str) -> None:
        self.key = key.encode()
        self.port = free_port()
        self.batches: list[dict[str, Any]] = []
        self.refused = 0
        self.deliveries: list[str] = []
        self.fail_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.check(
                    body,
                    self.headers.get("X-Sessionvault-Timestamp", ""),
                    self.headers.get("X-Sessionvault-Signature", ""),
                    self.headers.get("X-Sessionvault-Delivery", ""),
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def check(self, body: bytes, ts: str, sig: str, delivery: str) -> int:
        if self.fail_next > 0:
            self.fail_next -= 1
            return 502
        want = "sha256=" + hmac.new(self.key, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        if (
            not ts.isdigit()
            or abs(time.time() - int(ts)) > 300
            or not hmac.compare_digest(want, sig)
        ):
            self.refused += 1
            return 401
        self.batches.append(json.loads(body))
        self.deliveries.append(delivery)
        return 204

    def __enter__(self) -> SignedReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_batches_carry_a_signature_the_receiver_verifies(settings: Settings) -> None:
    events = make_events(settings.tenant, sessions=3, per_session=5)
    want = {e["uid"]: e for e in events if e["event"] != "print"}
    with SignedReceiver(KEY) as rx:
        rx.fail_next = 2  # two 502s first: retried, not lost
        cfg = parse_siem_config(
            f"""
[[sink]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{rx.port}/hooks/sv"
hmac_key = {{ env = "HOOK_KEY" }}
[sink.batch]
max_events = 4
[sink.retry]
backoff_base_ms = 20
""".encode(),
            env={"HOOK_KEY": KEY},
        ).sinks[0]
        assert KEY not in repr(cfg)
        produce_events(settings, events)
        with running_sink(settings, cfg) as run:
            run.wait(lambda: run.worker.stats.records >= len(events), 60, "all records")
        assert run.worker.stats.failures == 2
        assert rx.refused == 0
        got = [ev for b in rx.batches for ev in b["events"]]
        assert all(b["sink"] == "hook" for b in rx.batches)
        assert all(len(b["events"]) <= 4 for b in rx.batches)
        assert sorted(e["uid"] for e in got) == sorted(want)
        for e in got:
            assert e == want[e["uid"]]
        assert len(set(rx.deliveries)) == len(rx.deliveries)

        # The same body with a forged timestamp (a replay) or another key is refused.
        from siem.sinks.webhook import sign

        body = orjson.dumps({"sink": "hook", "events": []})
        old = str(int(time.time()) - 3600)
        assert rx.check(body, old, sign(KEY.encode(), old, body), "x") == 401
        now = str(int(time.time()))
        assert rx.check(body, now, sign(b"other-key", now, body), "x") == 401
        assert rx.check(body, now, sign(KEY.encode(), old, body), "x") == 401
        assert rx.check(body, now, sign(KEY.encode(), now, body), "x") == 204


def test_jsonl_file_sink_filters_and_shows_in_status(
    settings: Settings, stack: LocalStack, tmp_path: Path
) -> None:
    events = make_events(settings.tenant, sessions=3, per_session=4)
    other = make_events("other-tenant", sessions=1, per_session=4)
    for e in other:
        e["uid"] = "other-" + e["uid"]
    out = tmp_path / "siem" / "events.jsonl"
    name = f"file-{settings.tenant[-8:]}"
    cfg = parse_siem_config(
        f"""
[[sink]]
name = "{name}"
type = "jsonl"
format = "ecs"
path = "{out}"
[sink.filter]
tenants = ["{settings.tenant}"]
event_types = ["session.*"]
exclude_types = ["session.end"]
""".encode()
    ).sinks[0]
    produce_events(settings, events + other)
    wanted = [e for e in events if e["event"] in ("session.start", "session.command")]
    try:
        with running_sink(settings, cfg, state_home=stack.home) as run:
            run.wait(lambda: run.worker.stats.records >= len(events) + len(other), 60, "records")
            run.wait(
                lambda: group_lag(settings, f"siem-{name}").get(settings.topic_events) == 0,
                30,
                "committed lag 0",
            )
            time.sleep(1.5)  # the state file is rewritten about once a second
        lines = out.read_bytes().splitlines()
        assert len(lines) == len(wanted)
        docs = [orjson.loads(line) for line in lines]
        # ECS: event.id carries the uid; the user survives intact.
        got = {d["event"]["id"]: d for d in docs}
        assert set(got) == {e["uid"] for e in wanted}
        for e in wanted:
            assert got[e["uid"]]["user"]["name"] == e["user"]
        status = stack.status()
        row = next(s for s in status.sinks if s["sink"] == name)
        assert row["group"] == f"siem-{name}"
        assert row["delivered"] == len(wanted)
        assert row["failures"] == 0
        assert row["dead_letters"] == 0
        assert row["lag"] == 0
        assert name in format_status(status)
    finally:
        (stack.home / "siem" / f"{name}.json").unlink(missing_ok=True)


def test_worker_siem_cli_delivers_and_stops_cleanly_on_sigterm(
    settings: Settings, sv_env: dict[str, str], tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    out = tmp_path / "cli.jsonl"
    conf = tmp_path / "siem.yaml"
    conf.write_text(f"sink:\n  - name: cli\n    type: jsonl\n    path: {out}\n")
    events = make_events(settings.tenant, sessions=2, per_session=3)
    wanted = [e for e in events if e["event"] != "print"]
    produce_events(settings, events)
    exe = Path(sys.executable).parent / "sessionvault"
    env = {**sv_env, "SESSIONVAULT_SIEM_CONFIG": str(conf)}
    proc = subprocess.Popen(
        [str(exe), "worker", "siem", "--sink", "cli", "--status-every", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and len(out.read_bytes().splitlines()) >= len(wanted)):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the CLI worker delivered nothing in 60 s"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    docs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert sorted(docs, key=lambda d: d["uid"]) == sorted(wanted, key=lambda d: d["uid"])
    for sid in {e["sid"] for e in wanted}:  # each session in produced order
        assert [d for d in docs if d["sid"] == sid] == [e for e in wanted if e["sid"] == sid]
    assert b"siem[cli]: stopped after" in err
