"""The local stack's default broker is durable: tansu's s3:// engine on the local object store.
A kill -9 of the broker under load loses no acknowledged record, and committed consumer
offsets survive; ``up`` after it carries on. A stack of its own (own home, own ports)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from deploy.stack import LocalStack
from ingest.topics import end_offsets, ensure_topics
from sessionvault.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

TOPIC = "sv.events.v1"


def _read_all(bootstrap: str, partitions: int) -> dict[tuple[int, int], bytes]:
    """Every record of the topic: read until each partition's end offset (as the broker now
    reports it), not until a quiet spell, which a slow restart on a loaded machine can cause."""
    tps = [TopicPartition(TOPIC, p) for p in range(partitions)]
    ends = end_offsets(bootstrap, tps)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=1000)
    out: dict[tuple[int, int], bytes] = {}
    try:
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 90
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, {tp.partition: consumer.position(tp) for tp in tps}
            for m in consumer:
                out[(m.partition, m.offset)] = m.value
    finally:
        consumer.close()
    return out


def test_kill_9_of_the_broker_under_load_loses_no_acknowledged_record(fresh_home: Path) -> None:
    settings = load_settings(env={"SESSIONVAULT_HOME": str(fresh_home)}, home=fresh_home)
    stack = LocalStack(fresh_home, detached=False, broker_storage="s3")
    try:
        stack.start_broker()
        bootstrap = stack.kafka_bootstrap
        ensure_topics(dataclasses.replace(settings, kafka_bootstrap=bootstrap))
        acked: dict[tuple[int, int], bytes] = {}
        lock = threading.Lock()
        stop = threading.Event()
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5, retries=0,
            request_timeout_ms=3000, max_block_ms=3000,
        )  # fmt: skip

        def on_ack(value: bytes) -> object:
            def record(meta: object) -> None:
                with lock:
                    acked[(meta.partition, meta.offset)] = value  # type: ignore[attr-defined]

            return record

        def load() -> None:
            i = 0
            while not stop.is_set():
                value = b"record-%06d-" % i + os.urandom(200)
                try:
                    producer.send(TOPIC, key=b"k%d" % (i % 16), value=value).add_callback(
                        on_ack(value)
                    )
                except Exception:  # the broker is down: this one was never acknowledged
                    time.sleep(0.05)
                i += 1
                if i % 200 == 0:
                    time.sleep(0.01)

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while len(acked) < 3000:
            assert time.monotonic() < deadline, f"only {len(acked)} acknowledged"
            time.sleep(0.05)
        committer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="durable-check")
        committer.commit({TopicPartition(TOPIC, 0): OffsetAndMetadata(7, "", -1)})
        committer.close()
        os.kill(stack.state["pids"]["broker"], signal.SIGKILL)  # under load
        time.sleep(0.5)
        stop.set()
        thread.join(10)
        with contextlib.suppress(Exception):  # unacknowledged sends fail: the broker is gone
            producer.close(timeout=2)
        with lock:
            before = dict(acked)
        assert len(before) >= 3000

        stack.start_broker(same_port=True)
        stored = _read_all(stack.kafka_bootstrap, settings.topic_partitions)
        lost = {k: v for k, v in before.items() if stored.get(k) != v}
        assert not lost, f"{len(lost)} of {len(before)} acknowledged records lost"
        reader = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id="durable-check")
        try:
            assert reader.committed(TopicPartition(TOPIC, 0)) == 7
        finally:
            reader.close()
        assert stack.is_running("objectstore")
    finally:
        stack.down()
