"""Kubernetes audit webhook ingest rate: EventList POSTs of 400 events over real HTTP.

Path measured: uvicorn + FastAPI on 127.0.0.1 -> token lookup (PostgreSQL) -> parse, redact,
merge stages -> produce to the local broker and wait for every acknowledgement -> 200. This is
what a kube-apiserver's webhook backend waits for (it batches up to 400 events by default).
Storing in PostgreSQL happens later in the persist worker (see bench.persist). The pure
parse+redact rate (no HTTP, no Kafka) is reported too, for context.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from typing import Any

import httpx
import orjson
import uvicorn

from api.app import create_app
from bench._common import Figure, bench_main
from bench.servers import bench_stack
from ingest.kube_audit import events_from_webhook
from storage import pg
from storage.tokens import create_token

BATCH = 400


def audit_event(rng: random.Random, i: int) -> dict[str, Any]:
    """A realistic audit event: mostly reads, some writes, some Secrets at RequestResponse."""
    ns = rng.choice(["default", "kube-system", "prod", "payments"])
    kind = rng.random()
    base: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": str(uuid.UUID(int=rng.getrandbits(128))),
        "stage": "ResponseComplete",
        "user": {
            "username": rng.choice(["alice", "bob", "ci"]),
            "groups": ["system:authenticated"],
        },
        "sourceIPs": [f"10.0.0.{rng.randint(1, 254)}"],
        "userAgent": "kubectl/v1.29.0 (linux/amd64) kubernetes/abc",
        "requestReceivedTimestamp": f"2026-11-21T10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}."
        f"{i % 1000:03d}000Z",
        "stageTimestamp": "2026-11-21T10:00:00.100000Z",
        "responseStatus": {"metadata": {}, "code": 200},
    }
    if kind < 0.7:
        base.update(
            verb=rng.choice(["get", "list", "watch"]),
            requestURI=f"/api/v1/namespaces/{ns}/pods",
            objectRef={"resource": "pods", "namespace": ns, "apiVersion": "v1"},
        )
    elif kind < 0.9:
        name = f"web-{rng.randint(0, 999)}"
        base.update(
            level="Request",
            verb="create",
            requestURI=f"/api/v1/namespaces/{ns}/pods",
            objectRef={"resource": "pods", "namespace": ns, "name": name, "apiVersion": "v1"},
            requestObject={
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "nginx:1.27",
                            "env": [{"name": "DB_PASSWORD", "value": "hunter2"}],
                        }
                    ]
                },
            },
        )
    else:
        base.update(
            level="RequestResponse",
            verb="create",
            requestURI=f"/api/v1/namespaces/{ns}/secrets",
            objectRef={"resource": "secrets", "namespace": ns, "name": "s", "apiVersion": "v1"},
            requestObject={"kind": "Secret", "apiVersion": "v1", "data": {"k": "c2VjcmV0"}},
            responseObject={"kind": "Secret", "apiVersion": "v1", "data": {"k": "c2VjcmV0"}},
            responseStatus={"metadata": {}, "code": 201},
        )
    return base


def bodies(n_events: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    events = [audit_event(rng, i) for i in range(n_events)]
    return [
        orjson.dumps(
            {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events[i : i + BATCH]}
        )
        for i in range(0, n_events, BATCH)
    ]


async def _token(dsn: str, tenant: str) -> str:
    await pg.migrate(dsn)
    conn = await pg.connect(dsn)
    try:
        token, _ = await create_token(conn, tenant, scopes=["webhook"])
        return token
    finally:
        await conn.close()


def run(quick: bool) -> list[Figure]:
    n_events = 4_000 if quick else 40_000
    posts = bodies(n_events)
    mib = sum(len(b) for b in posts) / 2**20

    t0 = time.perf_counter()
    for body in posts:
        events_from_webhook(body, tenant="bench", kubernetes_cluster="c")
    pure = n_events / (time.perf_counter() - t0)

    with bench_stack("bench-webhook") as bs:
        token = asyncio.run(_token(bs.dsn, bs.settings.tenant))
        server = uvicorn.Server(
            uvicorn.Config(create_app(bs.settings), host="127.0.0.1", port=0, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            ) as http:
                http.post("/v1/kube/audit/warmup", content=posts[0]).raise_for_status()
                latencies = []
                t0 = time.perf_counter()
                for body in posts:
                    t = time.perf_counter()
                    http.post("/v1/kube/audit/c", content=body).raise_for_status()
                    latencies.append(time.perf_counter() - t)
                wall = time.perf_counter() - t0
        finally:
            server.should_exit = True
            thread.join(timeout=20)
    latencies.sort()
    return [
        Figure(
            "webhook",
            "ingest rate, HTTP -> Kafka acked",
            n_events / wall,
            "events/s",
            note=f"{len(posts)} POSTs of {BATCH} events, {mib:.1f} MiB, one client",
        ),
        Figure(
            "webhook", "POST latency p50 (400 events)", latencies[len(latencies) // 2] * 1000, "ms"
        ),
        Figure(
            "webhook",
            "POST latency p99 (400 events)",
            latencies[int(len(latencies) * 0.99)] * 1000,
            "ms",
        ),
        Figure("webhook", "parse+redact+merge only", pure, "events/s", note="no HTTP, no Kafka"),
    ]


if __name__ == "__main__":
    raise SystemExit(bench_main(run, "audit webhook ingest"))
