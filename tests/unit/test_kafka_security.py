"""Kafka transport security from the settings: one mapping, given to every client."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.consumer import consumer_config
from ingest.kafka import producer_config, security_config
from sessionvault.errors import ConfigError
from sessionvault.settings import load_settings


def _settings(tmp_path: Path, **env: str) -> object:
    return load_settings(
        env={"SESSIONVAULT_HOME": str(tmp_path), "SESSIONVAULT_KAFKA_BOOTSTRAP": "k:9093", **env}
    )


def test_plaintext_adds_nothing_and_sasl_ssl_reaches_producers_and_consumers(
    tmp_path: Path,
) -> None:
    assert security_config(_settings(tmp_path)) == {}  # type: ignore[arg-type]
    s = _settings(
        tmp_path,
        SESSIONVAULT_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        SESSIONVAULT_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        SESSIONVAULT_KAFKA_SASL_USERNAME="sv",
        SESSIONVAULT_KAFKA_SASL_PASSWORD="pw",
        SESSIONVAULT_KAFKA_SSL_CAFILE="/etc/ca.pem",
    )
    want = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "sv",
        "sasl_plain_password": "pw",
        "ssl_cafile": "/etc/ca.pem",
    }
    assert security_config(s) == want  # type: ignore[arg-type]
    for config in (producer_config(s), consumer_config(s, "g")):  # type: ignore[arg-type]
        assert want.items() <= config.items()
    assert "pw" not in repr(s)  # the password is a Secret: never printed


def test_an_unknown_protocol_or_sasl_without_a_mechanism_is_one_clear_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="SECURITY_PROTOCOL='TLS'"):
        _settings(tmp_path, SESSIONVAULT_KAFKA_SECURITY_PROTOCOL="TLS")
    with pytest.raises(ConfigError, match="SASL_MECHANISM"):
        _settings(tmp_path, SESSIONVAULT_KAFKA_SECURITY_PROTOCOL="SASL_SSL")
