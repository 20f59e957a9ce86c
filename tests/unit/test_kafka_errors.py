"""kafka-python exceptions are translated at the edge, for every class the installed version has."""

from __future__ import annotations

import inspect
from typing import Any

import kafka.errors as kerr
import pytest

from ingest.consumer import BatchConsumer, CommitRejectedError
from ingest.kafka import to_transport_error
from sessionvault.errors import TransportError
from sessionvault.settings import load_settings

KAFKA_ERRORS = sorted(
    (c for _, c in inspect.getmembers(kerr, inspect.isclass) if issubclass(c, kerr.KafkaError)),
    key=lambda c: c.__name__,
)


@pytest.mark.parametrize("cls", KAFKA_ERRORS, ids=lambda c: c.__name__)
def test_every_kafka_error_class_translates_to_a_transport_error(cls: type[Exception]) -> None:
    try:
        exc = cls("boom")
    except TypeError:
        exc = cls.__new__(cls)
    err = to_transport_error(exc, "commit offsets")
    assert isinstance(err, TransportError)
    assert "commit offsets" in str(err)


def test_connection_failures_are_retriable_and_a_rebalance_is_not_an_attribute_error() -> None:
    assert to_transport_error(kerr.KafkaConnectionError("down"), "poll").retriable
    assert to_transport_error(kerr.KafkaTimeoutError(), "poll").retriable
    assert not to_transport_error(kerr.RebalanceInProgressError(), "commit").retriable


class _Rebalancing:
    """A KafkaConsumer stand-in whose commit meets a rebalance in progress."""

    def __init__(self, **_: Any) -> None:
        pass

    def subscribe(self, topics: list[str]) -> None:
        pass

    def commit(self, offsets: Any) -> None:
        raise kerr.RebalanceInProgressError("rebalancing")


def test_a_commit_during_a_rebalance_is_a_refused_commit_not_a_crash() -> None:
    settings = load_settings(env={}, kafka_bootstrap="127.0.0.1:1")
    consumer = BatchConsumer(settings, "g", ["t"], factory=_Rebalancing)
    with pytest.raises(CommitRejectedError):
        consumer.commit({("t", 0): 5})
