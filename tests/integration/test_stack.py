"""The embedded local stack and topic admin against the real servers."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from deploy.stack import LocalStack, pid_alive
from ingest.topics import admin_client, consumer_lag, end_offsets, ensure_topics, list_topics
from sessionvault.errors import StackError
from sessionvault.settings import Settings, load_settings
from storage import pg

pytestmark = pytest.mark.integration


async def _execute(dsn: str, *sql: str) -> None:
    conn = await pg.connect(dsn)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _fetch_notes(dsn: str) -> list[str]:
    conn = await pg.connect(dsn)
    try:
        return [r["note"] for r in await conn.fetch("SELECT note FROM probe ORDER BY note")]
    finally:
        await conn.close()


def _produce(bootstrap: str, topic: str, partition: int, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    try:
        for i in range(count):
            producer.send(topic, key=b"k", value=b"v%d" % i, partition=partition)
        producer.flush(timeout=10)
    finally:
        producer.close()


def test_up_down_up_keeps_postgres_rows_broker_records_and_offsets(fresh_home: Path) -> None:
    home = fresh_home
    stack = LocalStack(home, detached=False)
    try:
        state = stack.up(workers=False)
        assert stack.is_up()
        for key in ("kafka_bootstrap", "postgres_dsn"):
            assert state[key]
        # The default local stack: a durable broker, and search on PostgreSQL (no emulator).
        assert state["broker_storage"] == "s3"
        assert not state.get("opensearch_url")
        settings = load_settings(env={"SESSIONVAULT_HOME": str(home)})
        assert settings.kafka_bootstrap == stack.kafka_bootstrap
        assert settings.postgres_dsn.get() == stack.postgres_dsn
        assert {"sv.chunks.v1", "sv.events.v1", "sv.deadletter.v1"} <= set(
            list_topics(stack.kafka_bootstrap)
        )
        asyncio.run(
            _execute(
                stack.postgres_dsn,
                "CREATE TABLE probe (note text)",
                "INSERT INTO probe VALUES ('written before down')",
            )
        )
        _produce(stack.kafka_bootstrap, "sv.events.v1", 0, 5)
        _commit(stack.kafka_bootstrap, "sv.events.v1", 0, 3)
        pids = dict(stack.state["pids"])

        stopped = stack.down()

        assert sorted(stopped) == ["broker", "objectstore", "postgres"]
        assert not any(pid_alive(pid) for pid in pids.values())
        assert stack.down() == []
        status = stack.status()
        assert not status.healthy
        assert all(not s.alive and not s.reachable for s in status.servers)

        stack.up(workers=False)

        assert asyncio.run(_fetch_notes(stack.postgres_dsn)) == ["written before down"]
        assert "sv.chunks.v1" in list_topics(stack.kafka_bootstrap)
        assert _values(stack.kafka_bootstrap, "sv.events.v1", 0) == [b"v%d" % i for i in range(5)]
        assert _committed(stack.kafka_bootstrap, "sv.events.v1", 0) == 3
        assert stack.status(lag=False).healthy
    finally:
        stack.down()


def _commit(bootstrap: str, topic: str, partition: int, offset: int) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="probe-group")
    try:
        consumer.commit({TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)})
    finally:
        consumer.close()


def _committed(bootstrap: str, topic: str, partition: int) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="probe-group")
    try:
        return consumer.committed(TopicPartition(topic, partition))  # type: ignore[no-any-return]
    finally:
        consumer.close()


def _values(bootstrap: str, topic: str, partition: int) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=3000)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        return [m.value for m in consumer]
    finally:
        consumer.close()


def test_up_is_idempotent_and_keeps_running_servers(fresh_home: Path) -> None:
    stack = LocalStack(fresh_home, detached=False)
    try:
        stack.up(workers=False)
        pids = dict(stack.state["pids"])
        messages: list[str] = []
        again = LocalStack(fresh_home, detached=False, echo=messages.append)

        again.up(workers=False)

        assert again.state["pids"] == pids
        assert any("already running" in m for m in messages)
    finally:
        stack.down()


def test_ensure_topics_is_idempotent_and_uses_configured_partitions(settings: Settings) -> None:
    assert ensure_topics(settings) == []
    with admin_client(settings.kafka_bootstrap) as admin:
        described = admin.describe_topics([settings.topic_chunks])
    assert len(described[0]["partitions"]) == settings.topic_partitions


def test_end_offsets_count_every_record_of_the_last_batch(settings: Settings) -> None:
    _produce(settings.kafka_bootstrap, settings.topic_chunks, 1, 7)
    tps = [TopicPartition(settings.topic_chunks, p) for p in (0, 1)]
    assert end_offsets(settings.kafka_bootstrap, tps) == {tps[0]: 0, tps[1]: 7}


def test_status_reports_lag_of_a_group_that_committed(
    stack: LocalStack, settings: Settings
) -> None:
    from kafka import KafkaConsumer
    from kafka.structs import OffsetAndMetadata

    group = f"g-{uuid.uuid4().hex[:8]}"
    _produce(settings.kafka_bootstrap, settings.topic_chunks, 0, 10)
    tp = TopicPartition(settings.topic_chunks, 0)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        consumer.assign([tp])
        consumer.commit({tp: OffsetAndMetadata(4, None, -1)})
    finally:
        consumer.close()

    rows = consumer_lag(settings.kafka_bootstrap, groups=[group])
    status_rows = [r for r in stack.status().lag if r["group"] == group]

    assert [(r.topic, r.committed, r.end, r.lag) for r in rows] == [
        (settings.topic_chunks, 4, 10, 6)
    ]
    assert [(r["committed"], r["end"], r["lag"]) for r in status_rows] == [(4, 10, 6)]


def test_broker_restart_on_same_port_recreates_registered_topics(
    stack: LocalStack, settings: Settings
) -> None:
    bootstrap = stack.kafka_bootstrap
    stack.stop_broker()
    try:
        assert not stack.status(lag=False).servers[1].reachable
    finally:
        restarted = stack.start_broker(same_port=True)
    assert restarted == bootstrap
    assert settings.topic_chunks in list_topics(bootstrap)


def test_status_cli_prints_json_health(stack: LocalStack) -> None:
    from sessionvault.cli import main

    result = CliRunner().invoke(
        main, ["status", "--json"], env={"SESSIONVAULT_HOME": str(stack.home)}
    )

    assert result.exit_code == 0, result.output
    data = orjson.loads(result.output)
    assert data["healthy"] is True
    # The suite's stack: memory broker storage (no object store) and the OpenSearch emulator.
    assert {s["name"] for s in data["servers"]} == {"postgres", "broker", "opensearch"}
    # PostgreSQL-driven stages report their queues (a fresh database: nothing waiting)
    assert data["backlog"] == {"segment_queue": 0, "detect_feed": 0, "index_pending": 0}


def test_broker_that_fails_to_start_raises_stack_error_naming_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'cannot bind: boom' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CALF_TANSU_BIN", str(fake))
    stack = LocalStack(tmp_path / "h", detached=False, start_timeout_s=10)

    with pytest.raises(StackError) as err:
        stack.start_broker()

    message = str(err.value)
    assert "broker" in message
    assert str(tmp_path / "h" / "logs" / "broker.log") in message
    assert "boom" in message
    assert not stack.is_running("objectstore")  # started for the broker, stopped with it
