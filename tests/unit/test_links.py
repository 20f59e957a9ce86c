"""Replay links (schemas.links): one shape and one moment for every producer."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from schemas.links import replay_api, replay_command, replay_links, replay_offset_ms


@pytest.mark.parametrize("offset", [0, 1, 999, 1000, 8444, 8444.9, 8445, 3_600_001])
def test_cli_seconds_and_api_milliseconds_name_the_same_moment(offset: float) -> None:
    links = replay_links("s1", offset)
    seconds = str(links["replay"]).rsplit(" ", 1)[1]
    query = parse_qs(urlsplit(str(links["replay_api"])).query)
    assert query["format"] == ["asciicast-v2"]
    assert int(query["start_ms"][0]) == links["offset_ms"] == int(offset)
    assert round(float(seconds) * 1000) == links["offset_ms"]


def test_a_fraction_of_a_millisecond_is_truncated_never_rounded_up() -> None:
    assert replay_command("s", 8444.9) == "sessionvault play s --start-at 8.444"
    assert replay_api("s", 8444.9).endswith("start_ms=8444")


def test_offsets_are_clamped_into_the_recording() -> None:
    assert replay_offset_ms(-5) == 0
    assert replay_offset_ms(None) == 0
    assert replay_offset_ms(90_000, duration_ms=12_345) == 12_345
    assert replay_links("s", 10**12, duration_ms=500)["offset_ms"] == 500


def test_a_session_id_is_escaped_in_the_path() -> None:
    assert replay_api("a/b?c").startswith("/v1/sessions/a%2Fb%3Fc/export?")
