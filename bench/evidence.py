"""What signing and encryption cost the persist worker, measured in one run.

The same corpus is persisted by one fresh persist worker per phase, alternating:

* **off**: no evidence ledger, no encryption (``SESSIONVAULT_EVIDENCE_LEDGER=0``);
* **on**: the ledger in every persist transaction, every payload sealed with AES-256-GCM
  (``SESSIONVAULT_ENCRYPT_AT_REST=1``), and an evidence worker beside it signing manifests
  and checkpoints every second.

Each phase has its own tenant and fresh records on the same topic. The rate is the persist
worker's steady rate after its group join (as in :mod:`bench.persist`), and its MB per CPU
second, which is steadier on a shared machine. After the last "on" phase, ``verify`` checks
the tenant against its checkpoints (and must find nothing).

Target: "on" persists at >= 90% of "off" (issue 13: < 10% slower).
"""

from __future__ import annotations

import asyncio
import subprocess
import time

from bench._common import MIB, SESSIONVAULT, Figure, bench_main
from bench.compression import MB
from bench.corpus import build_corpus
from bench.persist import produce, run_worker
from bench.servers import BenchStack, WorkerProcess, bench_stack
from replay.evidence import verify_tenant
from storage import pg
from storage.datakeys import configure
from storage.keyring import KeyFile

NAME = "evidence"
TENANT = "bench-evidence"

OFF = {"SESSIONVAULT_EVIDENCE_LEDGER": "0", "SESSIONVAULT_ENCRYPT_AT_REST": "0"}
ON = {"SESSIONVAULT_EVIDENCE_LEDGER": "1", "SESSIONVAULT_ENCRYPT_AT_REST": "1"}


def _evidence_worker(bs: BenchStack) -> subprocess.Popen[bytes]:
    env = {
        **bs.worker_env(),
        **ON,
        "SESSIONVAULT_CHECKPOINT_INTERVAL_MS": "1000",
        "SESSIONVAULT_MANIFEST_DELAY_MS": "0",
    }
    log = open(bs.home / "logs" / "bench-evidence-worker.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [SESSIONVAULT, "worker", "evidence", "--status-every", "0"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def _clear(dsn: str, tenants: list[str]) -> None:
    conn = await pg.connect(dsn)
    try:
        for table in (
            "chunks",
            "sessions",
            "events",
            "ledger",
            "checkpoints",
            "session_manifests",
            "tombstones",
        ):
            await conn.execute(f"DELETE FROM {table} WHERE tenant = ANY($1::text[])", tenants)
        await conn.execute("DELETE FROM tenant_data_keys WHERE tenant = ANY($1::text[])", tenants)
    finally:
        await conn.close()


async def _verify(bs: BenchStack, tenant: str, keys: KeyFile) -> tuple[list[str], int, float]:
    pool = await pg.create_pool(bs.dsn, min_size=1, max_size=2)
    try:
        deadline = time.monotonic() + 60
        while True:  # the evidence worker checkpoints every second
            pending = await pool.fetchval("SELECT count(*) FROM ledger WHERE tenant = $1", tenant)
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        t = time.perf_counter()
        report = await verify_tenant(pool, tenant, keys.public_keys())
        faults = [f"{f.kind}: {f.message}" for f in report.findings if f.fault]
        return faults, report.checkpoints, time.perf_counter() - t
    finally:
        await pool.close()


def _drain_manifests(bs: BenchStack, tenant: str, sessions: int) -> None:
    """Run a persist worker (ledger on) until the tenant's manifests are stored as events."""
    worker = WorkerProcess(bs, logname="bench-evidence-drain.log", env=ON)
    deadline = time.monotonic() + 120
    try:
        while asyncio.run(_manifest_events(bs.dsn, tenant)) < sessions:
            worker.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"manifests of {tenant} not stored after 120 s")
            time.sleep(0.2)
    finally:
        worker.stop()


async def _manifest_events(dsn: str, tenant: str) -> int:
    conn = await pg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM events WHERE tenant = $1 AND event = 'session.manifest'",
                tenant,
            )
        )
    finally:
        await conn.close()


def run(quick: bool) -> list[Figure]:
    corpus = build_corpus(8 * MIB if quick else 32 * MIB)
    total = 40 * MIB if quick else 150 * MIB
    sessions = 16
    rounds = 1 if quick else 2
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    tenants = [f"{TENANT}-{mode}-{i}" for i in range(rounds) for mode in ("off", "on")]
    figures: list[Figure] = []
    faults: list[str] = []
    checkpoints = 0
    verify_s = float("nan")
    with bench_stack(TENANT) as bs:
        keys = KeyFile.create(bs.home / "keys.json")
        configure(bs.settings, keys)  # verify here opens sealed chunks
        asyncio.run(_clear(bs.dsn, tenants))
        for i in range(rounds):
            for mode, env in (("off", OFF), ("on", ON)):
                tenant = f"{TENANT}-{mode}-{i}"
                # The evidence worker runs only beside the "on" worker: its CPU is the cost.
                signer = _evidence_worker(bs) if mode == "on" else None
                try:
                    produced = produce(bs, corpus, sessions, total // sessions, tenant)
                    tl = run_worker(bs, produced, timeout_s=900, tenant=tenant, env=env)
                    if signer is not None:
                        # Not timed: the manifests go out as events; a persist worker (ledger
                        # on) stores them and the signer checkpoints them, then verify.
                        _drain_manifests(bs, tenant, sessions)
                        faults, checkpoints, verify_s = asyncio.run(_verify(bs, tenant, keys))
                finally:
                    if signer is not None:
                        signer.terminate()
                        signer.wait(30)
                steady = tl.t_rows - tl.t_first
                rate = (tl.raw - tl.raw_first) / steady / MB
                rates[mode].append(rate)
                cpu[mode].append((tl.raw - tl.raw_first) / tl.worker_cpu_s / MB)
                print(f"  {mode} #{i}: {rate:.1f} MB/s", flush=True)
        asyncio.run(_clear(bs.dsn, tenants))
    off, on = max(rates["off"]), max(rates["on"])
    figures += [
        Figure(
            NAME,
            "persist rate, signing and encryption off (best)",
            off,
            "MB/s",
            note=f"{total / MB:.0f} MB per phase, {sessions} sessions, 64 KiB chunks; "
            f"phases {', '.join(f'{r:.1f}' for r in rates['off'])}",
        ),
        Figure(
            NAME,
            "persist rate, signing and encryption on (best)",
            on,
            "MB/s",
            note=f"phases {', '.join(f'{r:.1f}' for r in rates['on'])}; evidence worker "
            "checkpointing every 1 s beside it",
        ),
        Figure(NAME, "on / off, persist rate", on / off, "x", ">= 0.90", on / off >= 0.90),
        Figure(
            NAME,
            "on / off, MB per worker CPU-second",
            max(cpu["on"]) / max(cpu["off"]),
            "x",
            note=f"off {max(cpu['off']):.1f}, on {max(cpu['on']):.1f} MB/cpu-s",
        ),
        Figure(
            NAME,
            "verify of the last 'on' tenant (after its manifests)",
            verify_s,
            "s",
            note=f"{checkpoints} checkpoints; "
            + (f"{len(faults)} FAULTS: {'; '.join(faults[:3])}" if faults else "no faults"),
        ),
    ]
    return figures


def main() -> int:
    return bench_main(run, "evidence: persist with signing and encryption on vs off")


if __name__ == "__main__":
    raise SystemExit(main())
