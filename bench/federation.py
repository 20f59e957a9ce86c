"""Trusted clusters: a root and two leaves on this machine, each its own installation (own
database, topics, API), the leaves' tunnels dialled out by their `worker tunnel` processes.

* Federated search p99: the same queries (a user filter, a text term; 50 hits a page) asked
  of one leaf's own API, and of the root across both leaves (each holding as many events as
  the one): p50/p99 of each and the ratio of the p99s (target < 2x).
* Replay through the tunnel: ``export --format raw`` of one session of 100 MB (32 MB with
  ``--quick``) from the leaf's own API and through the root's (leaf -> tunnel -> root ->
  client), in MB/s (target >= 50 MB/s through the tunnel), beside the leaf's own figure.

Every process runs on this one machine (2 cores, shared): the root's and the leaves' servers,
the tunnel workers and the client compete for the same cores, so the tunnel figure is a floor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from bench._common import MIB, SESSIONVAULT, Figure, bench_main, cache_dir, load_average
from bench.replay import write_session
from bench.servers import BenchStack, bench_stack
from schemas.codec import decode_event
from sessionvault.settings import Secret, Settings, load_settings, settings_env
from storage import pg
from storage.eventstore import ensure_partitions, insert_events
from storage.persist_logic import event_row, month_of
from storage.tokens import create_token

NAME = "federation"
EVENTS = {True: 20_000, False: 100_000}  # per leaf
USERS = 50
QUERIES = {True: 60, False: 300}
SESSION_BYTES = {True: 32 * MIB, False: 100 * MIB}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _install(bs: BenchStack, name: str, **extra: Any) -> Settings:
    """A fresh installation ``name`` on the bench's servers: its own database and topics."""
    database = f"bench_fed_{name.replace('-', '_')}"
    server = bs.stack.server_dsn("postgres")

    async def create() -> str:
        conn = await pg.connect(server)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()
        dsn = bs.stack.server_dsn(database)
        await pg.migrate(dsn)
        return dsn

    dsn = asyncio.run(create())
    home = cache_dir() / "federation" / name
    if home.exists():
        subprocess.run(["rm", "-rf", str(home)], check=True)
    home.mkdir(parents=True)
    run = uuid.uuid4().hex[:8]
    s = load_settings(
        env={},
        home=home,
        tenant=f"bench-{name}",
        postgres_dsn=Secret(dsn),
        kafka_bootstrap=bs.settings.kafka_bootstrap,
        topic_chunks=f"bench.fed.chunks.{run}",
        topic_events=f"bench.fed.events.{run}",
        topic_deadletter=f"bench.fed.dl.{run}",
        federation_name=name,
        log_level="WARNING",
        **extra,
    )
    bs.stack.ensure_topics(s)
    return s


def _env(s: Settings) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONVAULT_")}
    return {**base, **settings_env(s)}


def _cli(s: Settings, *args: str) -> str:
    proc = subprocess.run(
        [SESSIONVAULT, *args], env=_env(s), capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sessionvault {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


async def _seed_events(s: Settings, n: int) -> None:
    """``n`` command events of ``USERS`` users over one day, inserted as persist does."""
    rows = []
    for i in range(n):
        raw = orjson.dumps(
            {
                "sv_version": 1,
                "tenant": s.tenant,
                "event": "session.command",
                "code": "T4000I",
                "uid": f"{s.federation_name}-{i}",
                "time": f"2026-11-20T{i * 86399 // n // 3600:02d}:{i * 86399 // n // 60 % 60:02d}:"
                f"{i * 86399 // n % 60:02d}.{i % 1000:03d}Z",
                "user": f"user-{i % USERS}",
                "login": "root",
                "server_id": f"{s.federation_name}-node-{i % 20}",
                "command": f"kubectl get pods -n ns-{i % 97} --selector app=web-{i % 13}",
            }
        )
        event = decode_event(raw)
        rows.append(event_row(event, raw))
    conn = await pg.connect(s.postgres_dsn.get())
    try:
        months = {m for m in (month_of(r.time) for r in rows) if m is not None}
        await ensure_partitions(conn, months, set())
        for start in range(0, len(rows), 5000):
            async with conn.transaction():
                await insert_events(conn, rows[start : start + 5000])
    finally:
        await conn.close()


def _token(s: Settings, user: str) -> str:
    async def make() -> str:
        conn = await pg.connect(s.postgres_dsn.get())
        try:
            text, _ = await create_token(conn, s.tenant, scopes=("read",), user=user)
            return text
        finally:
            await conn.close()

    return asyncio.run(make())


@contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as fh:
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _serve(s: Settings, port: int, log: Path) -> Any:
    argv = [SESSIONVAULT, "serve", "--port", str(port)]
    return _process(argv, _env(s), log)


def _wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout_s}s")


def _wait_leaves(base: str, tok: str, names: set[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = httpx.get(
            f"{base}/v1/federation/leaves", headers={"Authorization": f"Bearer {tok}"}, timeout=5
        ).json()
        if names <= {leaf["name"] for leaf in body["leaves"] if leaf["connected"]}:
            return
        time.sleep(0.2)
    raise RuntimeError(f"leaves {names} did not connect: {body}")


def _latencies(
    client: httpx.Client, path: str, queries: list[list[tuple[str, str]]]
) -> list[float]:
    out = []
    for params in queries:
        t0 = time.perf_counter()
        r = client.get(path, params=tuple(params))
        r.raise_for_status()
        body = r.json()
        if body.get("partial"):
            raise RuntimeError(f"a partial answer: {body['leaves']}")
        out.append(time.perf_counter() - t0)
    return out


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) >= 2 else values[0]


def _download(
    client: httpx.Client, path: str, watch: Sequence[int] = ()
) -> tuple[float, int, float]:
    """(seconds, bytes, the largest RSS growth of the ``watch`` processes in MiB) of one export
    read to its end; the RSS is sampled every 20 ms while it runs."""
    procs = [psutil.Process(pid) for pid in watch]
    base = [p.memory_info().rss for p in procs]
    peak = list(base)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            for i, p in enumerate(procs):
                peak[i] = max(peak[i], p.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    n = 0
    try:
        with client.stream("GET", path, params={"format": "raw"}) as r:
            r.raise_for_status()
            for piece in r.iter_raw(1 << 20):
                n += len(piece)
    finally:
        done.set()
        sampler.join()
    growth = max((p - b for p, b in zip(peak, base, strict=True)), default=0)
    return time.perf_counter() - t0, n, growth / MIB


def run(quick: bool) -> list[Figure]:
    figures: list[Figure] = []
    with bench_stack("bench-federation") as bs, ExitStack() as stack:
        logs = cache_dir() / "federation"
        root_port, tunnel_port, leaf_port = _free_port(), _free_port(), _free_port()
        root_settings = _install(bs, "root", federation_listen=f"127.0.0.1:{tunnel_port}")
        leaves = {name: _install(bs, name) for name in ("leaf-a", "leaf-b")}
        print(f"  seeding {EVENTS[quick]:,} events per leaf ...", flush=True)
        for s in leaves.values():
            asyncio.run(_seed_events(s, EVENTS[quick]))
        sid = str(uuid.uuid4())
        leaf_a = leaves["leaf-a"]
        raw_bytes, _ = asyncio.run(
            write_session(
                dataclasses.replace(bs, settings=leaf_a), sid, SESSION_BYTES[quick], leaf_a.tenant
            )
        )
        root = stack.enter_context(_serve(root_settings, root_port, logs / "root.log"))
        root_url = f"http://127.0.0.1:{root_port}"
        _wait_http(f"{root_url}/healthz")
        for name, s in leaves.items():
            tok = _cli(root_settings, "federation", "token", "--leaf", name)
            _cli(s, "federation", "join", "--root", root_url, "--token", tok)
            _cli(s, "federation", "map", "--user", "auditor", "--tenant", s.tenant)
            stack.enter_context(
                _process(
                    [SESSIONVAULT, "worker", "tunnel", "--status-every", "0"],
                    _env(s),
                    logs / f"{name}.log",
                )
            )
        root_token = _token(root_settings, "auditor")
        _wait_leaves(root_url, root_token, set(leaves))
        stack.enter_context(_serve(leaf_a, leaf_port, logs / "leaf-a-api.log"))
        leaf_url = f"http://127.0.0.1:{leaf_port}"
        _wait_http(f"{leaf_url}/healthz")
        leaf_token = _token(leaf_a, "local")

        queries = [
            [("user", f"user-{i % USERS}"), ("limit", "50")]
            if i % 2
            else [("text", f"app=web-{i % 13}"), ("limit", "50")]
            for i in range(QUERIES[quick])
        ]
        auth_leaf = {"Authorization": f"Bearer {leaf_token}"}
        auth_root = {"Authorization": f"Bearer {root_token}"}
        with (
            httpx.Client(base_url=leaf_url, headers=auth_leaf, timeout=60) as leaf_client,
            httpx.Client(base_url=root_url, headers=auth_root, timeout=60) as root_client,
        ):
            _latencies(leaf_client, "/v1/search", queries[:5])  # warm both
            _latencies(root_client, "/v1/federation/search", queries[:5])
            single = _latencies(leaf_client, "/v1/search", queries)
            federated = _latencies(root_client, "/v1/federation/search", queries)
            direct_s, direct_n, _ = _download(leaf_client, f"/v1/sessions/{sid}/export")
            tunnel_s, tunnel_n, root_growth = _download(
                root_client, f"/v1/federation/leaves/leaf-a/v1/sessions/{sid}/export", [root.pid]
            )
        if tunnel_n != direct_n or direct_n < raw_bytes * 0.9:
            raise RuntimeError(f"the exports differ: {direct_n} and {tunnel_n} bytes")
        load = f"load {load_average()}"
        p99_single, p99_fed = _p(single, 99) * 1000, _p(federated, 99) * 1000
        ratio = p99_fed / p99_single
        figures += [
            Figure(NAME, "search p50, one installation", _p(single, 50) * 1000, "ms"),
            Figure(NAME, "search p99, one installation", p99_single, "ms", note=load),
            Figure(NAME, "search p50, root over 2 leaves", _p(federated, 50) * 1000, "ms"),
            Figure(
                NAME,
                "search p99, root over 2 leaves",
                p99_fed,
                "ms",
                note=f"{EVENTS[quick]:,} events per leaf, {len(queries)} queries",
            ),
            Figure(NAME, "search p99 ratio (federated / one)", ratio, "x", "< 2", ratio < 2),
            Figure(
                NAME,
                "replay raw, the leaf's own API",
                direct_n / MIB / direct_s,
                "MB/s",
                note=f"{raw_bytes / MIB:.0f} MB session",
            ),
            Figure(
                NAME,
                "replay raw, through the tunnel and root",
                tunnel_n / MIB / tunnel_s,
                "MB/s",
                ">= 50",
                tunnel_n / MIB / tunnel_s >= 50,
                note=f"{tunnel_s / direct_s:.2f}x the leaf's own time; {load}",
            ),
            Figure(
                NAME,
                "root RSS growth during that replay",
                root_growth,
                "MiB",
                note=f"the whole {tunnel_n / MIB:.0f} MB streamed through the root process",
            ),
        ]
    return figures


def main() -> int:
    return bench_main(run, "federation: search across leaves, replay through the tunnel")


if __name__ == "__main__":
    raise SystemExit(main())
