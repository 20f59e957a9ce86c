"""Pure parts of the detection worker: settings parsing, the per-batch detection step, and the
offline ``rules test`` command (no servers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from ingest.consumer import Record
from schemas import encode_event, validate_event
from sessionvault.cli import main
from sessionvault.errors import ConfigError
from sessionvault.settings import load_settings
from siem.detect import alert_key, build_engine, detect, rule_sources
from siem.detect_config import parse_business_hours, parse_days, rule_paths
from siem.rules import STARTER_DIR, SigmaEngine

K8S = Path("/work/shared/fixtures/k8s-audit")
CORR_ID = "5e9b1d3f-7a2c-4f4e-8b0a-ab2c4e6f8d07"
CURL_ID = "9a1c3e5f-7b2d-4f6a-8c0e-1d3b5f7a9c03"


def test_business_hours_parse_timezone_hours_and_weekday_ranges() -> None:
    bh = parse_business_hours("Europe/Berlin 08-18 mon-fri")
    assert (bh.timezone, bh.start_hour, bh.end_hour, bh.weekdays) == (
        "Europe/Berlin",
        8,
        18,
        (0, 1, 2, 3, 4),
    )
    assert parse_business_hours("UTC 07:00-19:00 sat,sunday").weekdays == (5, 6)
    assert parse_business_hours("America/New_York 9-17").weekdays == (0, 1, 2, 3, 4)
    assert parse_business_hours("") == parse_business_hours("UTC 08-18 mon-fri")
    assert parse_days("fri-mon") == (0, 4, 5, 6)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Europe/Berlin", "expected TIMEZONE HH-HH"),
        ("Mars/Olympus 08-18", "unknown timezone"),
        ("UTC 18-08", "over midnight"),
        ("UTC 08-25", "<= 24"),
        ("UTC 8h-18", "not HH-HH"),
        ("UTC 08-18 mon-funday", "unknown weekday 'funday'"),
        ("UTC 08-18 mon,,fri", "empty weekday"),
    ],
)
def test_bad_business_hours_raise_a_config_error_naming_the_problem(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match="SESSIONVAULT_BUSINESS_HOURS") as info:
        parse_business_hours(text)
    assert says in str(info.value)


def test_rule_paths_split_on_colons_and_missing_paths_are_refused(tmp_path: Path) -> None:
    assert rule_paths(f"{tmp_path}/a.yml::{tmp_path}/dir") == [tmp_path / "a.yml", tmp_path / "dir"]
    settings = load_settings(env={}, home=tmp_path, sigma_rules=str(tmp_path / "nope.yml"))
    with pytest.raises(ConfigError, match=r"nope\.yml"):
        rule_sources(settings)


EXTRA_RULE = """
title: Reboot typed
id: 11111111-2222-4333-8444-555555555555
logsource:
  product: sessionvault
  service: terminal
detection:
  sel:
    event: session.command
    command_line|contains: reboot
  condition: sel
level: low
"""


def test_extra_rules_from_settings_are_loaded_after_the_starter_set(tmp_path: Path) -> None:
    (tmp_path / "extra.yml").write_text(EXTRA_RULE)
    settings = load_settings(
        env={}, home=tmp_path, sigma_rules=str(tmp_path), business_hours="Asia/Tokyo 09-17"
    )
    engine = build_engine(settings)
    assert "11111111-2222-4333-8444-555555555555" in engine.rule_ids
    assert CURL_ID in engine.rule_ids
    assert engine.business_hours.timezone == "Asia/Tokyo"


def _event(i: int, **fields: Any) -> dict[str, Any]:
    return {
        "sv_version": 1,
        "tenant": "acme",
        "event": "user.login",
        "code": "T1000W",
        "uid": f"login-{i}",
        "time": f"2026-01-05T10:00:{i:02d}.000Z",
        "user": "mallory",
        "success": False,
        **fields,
    }


def _records(events: list[dict[str, Any] | bytes]) -> list[Record]:
    return [
        Record("sv.events.v1", 0, i, None, e if isinstance(e, bytes) else encode_event(e))
        for i, e in enumerate(events)
    ]


def test_detect_skips_undecodable_records_and_its_own_alerts_and_emits_valid_alerts() -> None:
    engine = SigmaEngine.starter()
    cmd = {
        "sv_version": 1,
        "tenant": "acme",
        "event": "session.command",
        "code": "T4000I",
        "uid": "c1",
        "sid": "s1",
        "time": "2026-01-05T10:00:00Z",
        "command": "curl x | sh",
    }
    first = detect(_records([b"{not json", cmd]), engine, max_record_bytes=1 << 20)
    assert (first.undecodable, first.evaluated, len(first.alerts)) == (1, 1, 1)
    alert = first.alerts[0]
    validate_event(alert)  # schema-valid
    assert alert["rule_id"] == CURL_ID
    assert alert["tenant"] == "acme"
    assert alert["time"] == cmd["time"]  # deterministic: the matched event's time
    assert alert_key(alert) == b"s1"
    # The alert coming back round is not evaluated (even one whose text would match).
    again = detect(_records([alert]), engine, max_record_bytes=1 << 20)
    assert (again.own_alerts, again.evaluated, again.alerts) == (1, 0, [])


def test_a_record_seen_again_by_the_same_worker_does_not_count_twice_in_a_correlation() -> None:
    engine = SigmaEngine.starter()
    seen: dict[tuple[str, int], int] = {}
    batch = _records([_event(i) for i in range(3)])
    assert detect(batch, engine, max_record_bytes=1 << 20, evaluated_up_to=seen).alerts == []
    # Redelivered after a refused commit: skipped, so 3 + 3 never looks like 6 failures.
    again = detect(batch, engine, max_record_bytes=1 << 20, evaluated_up_to=seen)
    assert (again.repeated, again.alerts) == (3, [])
    more = [Record("sv.events.v1", 0, 3 + i, None, encode_event(_event(3 + i))) for i in range(2)]
    fired = detect(more, engine, max_record_bytes=1 << 20, evaluated_up_to=seen).alerts
    assert [a["rule_id"] for a in fired] == [CORR_ID]
    assert fired[0]["correlation"]["count"] == 5


def test_rules_test_command_prints_the_exec_alert_for_exec_pod_only(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"SESSIONVAULT_HOME": str(tmp_path)}
    outputs = {}
    for path in sorted(K8S.glob("*.json")):
        res = runner.invoke(main, ["rules", "test", str(STARTER_DIR), str(path), "--json"], env=env)
        assert res.exit_code == 0, res.output
        outputs[path.name] = [orjson.loads(x) for x in res.stdout.splitlines() if x.strip()]
    assert set(outputs) == {
        "exec_pod.json",
        "create_secret.json",
        "create_nginx_pod_privileged.json",
    }
    assert [a["title"] for a in outputs["exec_pod.json"]] == ["Exec or attach into a container"]
    assert outputs["create_secret.json"] == outputs["create_nginx_pod_privileged.json"] == []


def test_rules_test_command_reads_json_lines_and_reports_a_bad_line(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(orjson.dumps(_event(i)).decode() for i in range(5)) + "\n\n")
    runner = CliRunner()
    env = {"SESSIONVAULT_HOME": str(tmp_path)}
    res = runner.invoke(
        main, ["rules", "test", str(STARTER_DIR / "failed_logins.yml"), str(events)], env=env
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.count("Repeated failed logins by one user") == 1
    assert "events.jsonl:5: HIGH" in res.stdout
    events.write_text("{broken\n")
    res = runner.invoke(main, ["rules", "test", str(STARTER_DIR), str(events)], env=env)
    assert res.exit_code == 1
    assert "events.jsonl:1: not JSON" in res.stderr


def test_rules_test_with_starter_needs_no_rules_path_and_takes_paths_in_any_order(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(orjson.dumps(_event(i)).decode() for i in range(5)) + "\n")
    runner = CliRunner()
    env = {"SESSIONVAULT_HOME": str(tmp_path)}
    starter_only = runner.invoke(main, ["rules", "test", "--with-starter", str(events)], env=env)
    assert starter_only.exit_code == 0, starter_only.output
    assert starter_only.stdout.count("Repeated failed logins by one user") == 1
    rule = str(STARTER_DIR / "failed_logins.yml")
    swapped = runner.invoke(main, ["rules", "test", str(events), rule], env=env)
    assert (swapped.exit_code, swapped.stdout) == (0, starter_only.stdout)
    # Asking for nothing to test, or for no rules, is a usage error that says what to give.
    no_rules = runner.invoke(main, ["rules", "test", str(events)], env=env)
    assert no_rules.exit_code == 2
    assert "give a rules file or directory, or --with-starter" in no_rules.stderr
    no_records = runner.invoke(main, ["rules", "test", "--with-starter"], env=env)
    assert no_records.exit_code == 2
    assert "--session SID" in no_records.stderr
