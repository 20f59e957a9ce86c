"""Local broker throughput per storage engine: tansu on memory:// beside tansu on s3:// over
deploy/objectstore.py (the durable default of the local stack), same machine, same run.

Each engine gets a broker of its own (fresh home, so the object store starts empty); one
producer sends records with ``acks=all`` and waits for every acknowledgement, then one consumer
reads them all back from assigned partitions. ``python -m bench.broker [--quick]``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench._common import Figure, bench_main
from deploy.stack import LocalStack
from ingest.topics import ensure_topics
from sessionvault.settings import load_settings

PARTITIONS = 4


def _produce(bootstrap: str, topic: str, size: int, count: int) -> float:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    value = os.urandom(size)
    try:
        t0 = time.perf_counter()
        futures = [producer.send(topic, key=b"%d" % (i % 64), value=value) for i in range(count)]
        producer.flush(timeout=300)
        for f in futures:
            f.get(timeout=60)
        return size * count / (time.perf_counter() - t0) / 1e6
    finally:
        producer.close(timeout=5)


def _consume(bootstrap: str, topic: str, count: int, size: int) -> float:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, consumer_timeout_ms=10_000, fetch_max_bytes=16 * 1024 * 1024
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        t0 = time.perf_counter()
        n = 0
        for _ in consumer:
            n += 1
            if n >= count:
                break
        return n * size / (time.perf_counter() - t0) / 1e6
    finally:
        consumer.close()


def run(quick: bool) -> list[Figure]:
    figures: list[Figure] = []
    small = 5_000 if quick else 50_000
    large = 100 if quick else 800
    for storage in ("memory", "s3"):
        home = Path(tempfile.mkdtemp(prefix=f"sv-bench-broker-{storage}-"))
        stack = LocalStack(home, detached=False, broker_storage=storage)
        try:
            bootstrap = stack.start_broker()
            for size, count in ((1024, small), (64 * 1024, large)):
                topic = f"bench.broker.{size}"
                settings = load_settings(
                    env={},
                    home=home,
                    kafka_bootstrap=bootstrap,
                    topic_chunks=topic,
                    topic_events=topic + ".e",
                    topic_deadletter=topic + ".d",
                    topic_partitions=PARTITIONS,
                )
                ensure_topics(settings)
                label = f"{size // 1024} KiB records"
                rate = _produce(bootstrap, topic, size, count)
                name = f"{storage}: produce {label}, acks=all"
                note = f"{count:,} records"
                figures.append(Figure("broker", name, rate, "MB/s", note=note))
                rate = _consume(bootstrap, topic, count, size)
                figures.append(Figure("broker", f"{storage}: consume {label}", rate, "MB/s"))
        finally:
            stack.down()
            shutil.rmtree(home, ignore_errors=True)
    return figures


if __name__ == "__main__":
    raise SystemExit(bench_main(run, "local broker per storage engine"))
