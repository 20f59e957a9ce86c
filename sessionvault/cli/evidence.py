"""``sessionvault verify | verify-bundle | keys | evidence | worker evidence``: evidence
commands (a thin layer over :mod:`replay.evidence`, :mod:`ingest.evidence` and
:mod:`storage.keyring`; see docs/evidence.md)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from sessionvault.cli.common import (
    StatusFields,
    get_settings,
    index_store,
    resolve_session_id,
    run_with_pool,
    run_worker_command,
    status_every_option,
    subgroup,
    tenant_option,
)
from sessionvault.errors import ConfigError, IntegrityError
from sessionvault.settings import Settings


def _trusted_keys(settings: Settings, keys_file: str | None) -> dict[str, bytes]:
    """The public keys to trust: a public key document (``keys public`` output, the API's
    ``/v1/keys``) when given, else the key file's."""
    from storage.keyring import load_keys, parse_public_keys

    if keys_file is None:
        return load_keys(settings).public_keys()
    try:
        return parse_public_keys(orjson.loads(Path(keys_file).read_bytes()))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"--keys {keys_file}: not a public key document ({exc})") from exc


def register(main: click.Group) -> None:
    _register_verify(main)
    _register_bundle(main)
    _register_keys(main)
    _register_worker(main)


def _register_verify(main: click.Group) -> None:
    @main.command("verify")
    @click.argument("sid", required=False)
    @click.option(
        "--since",
        default=None,
        metavar="TIME|SPAN",
        help="Check the store against the signed checkpoints made since then (e.g. 7d).",
    )
    @click.option(
        "--checkpoints",
        "checkpoint_dir",
        default=None,
        metavar="DIR",
        help="Outside copies of the checkpoints to compare (default: SESSIONVAULT_CHECKPOINT_DIR).",
    )
    @click.option("--keys", "keys_file", default=None, metavar="FILE", help="Public keys to trust.")
    @click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
    @tenant_option
    @click.pass_context
    def verify_cmd(
        ctx: click.Context,
        sid: str | None,
        since: str | None,
        checkpoint_dir: str | None,
        keys_file: str | None,
        as_json: bool,
        tenant: str,
    ) -> None:
        """Verify one session's hash chain (SID), or the tenant's store against its signed
        checkpoints: names what was deleted, altered or added afterwards, and what policy
        deleted (signed tombstones). Exit 1 on any fault."""
        settings = get_settings(ctx)
        if sid is not None and since is None:
            _verify_session(settings, tenant, sid)
            return
        _verify_store(settings, tenant, since, checkpoint_dir, keys_file, as_json)


def _verify_session(settings: Settings, tenant: str, sid: str) -> None:
    from storage.reader import VerifyResult, verify_session

    sid = resolve_session_id(settings, tenant, sid)

    async def work(pool: Any) -> VerifyResult:
        return await verify_session(pool, tenant, sid)

    result = run_with_pool(settings, work)
    if not result.ok:
        raise IntegrityError(f"session {sid}: hash chain BROKEN: {result.message}")
    click.echo(f"session {sid}: ok, {result.message}")


def _verify_store(
    settings: Settings,
    tenant: str,
    since: str | None,
    checkpoint_dir: str | None,
    keys_file: str | None,
    as_json: bool,
) -> None:
    from ingest.evidence import read_checkpoint_copies
    from replay.evidence import VerifyReport, verify_tenant
    from sessionvault.timespec import parse_when

    when = parse_when("--since", since)
    keys = _trusted_keys(settings, keys_file)
    directory = checkpoint_dir or settings.checkpoint_dir
    external = read_checkpoint_copies(Path(directory), tenant) if directory else None

    async def work(pool: Any) -> VerifyReport:
        return await verify_tenant(
            pool,
            tenant,
            keys,
            since=when,
            external=external,
            progress=lambda m: click.echo(m, err=True),
        )

    report = run_with_pool(settings, work)
    if as_json:
        click.echo(
            orjson.dumps(
                {
                    "tenant": tenant,
                    "ok": report.ok,
                    "checkpoints": report.checkpoints,
                    "checked_from": report.checked_from,
                    "pending": report.pending,
                    "findings": [
                        {"kind": f.kind, "ref": f.ref, "message": f.message}
                        for f in report.findings
                    ],
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    else:
        for f in report.findings:
            click.echo(f"{f.kind.upper():10} {f.message}")
        click.echo(
            f"tenant {tenant}: {report.checkpoints} checkpoints (checked from"
            f" {report.checked_from}), {report.sessions_checked} sessions re-hashed,"
            f" {report.pending} records not yet checkpointed"
            + ("" if directory else "; no outside copy compared")
            + (": ok" if report.ok else f": {sum(f.fault for f in report.findings)} FAULTS")
        )
    if not report.ok:
        sys.exit(1)


def _register_bundle(main: click.Group) -> None:
    @main.command("verify-bundle")
    @click.argument("path", type=click.Path(exists=True, dir_okay=False))
    @click.option(
        "--keys",
        "keys_file",
        default=None,
        metavar="FILE",
        help="Public keys to trust (default: the bundle's own, which the report says).",
    )
    def verify_bundle_cmd(path: str, keys_file: str | None) -> None:
        """Check an evidence bundle offline: no database, no server. Exit 1 on any fault."""
        from replay.evidence import verify_bundle
        from storage.keyring import parse_public_keys

        trusted = None
        if keys_file is not None:
            try:
                trusted = parse_public_keys(orjson.loads(Path(keys_file).read_bytes()))
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(f"--keys {keys_file}: not a public key document") from exc
        report = verify_bundle(Path(path), trusted)
        for line in report.checks:
            click.echo(f"ok      {line}")
        for line in report.problems:
            click.echo(f"FAILED  {line}")
        if report.trusted_from_bundle:
            click.echo(
                "note    keys were taken from the bundle itself: compare their ids with the"
                " installation's published keys (or pass --keys)"
            )
        if not report.ok:
            sys.exit(1)
        click.echo(f"bundle {path}: session {report.sid} (tenant {report.tenant}) verified")


def write_bundle(settings: Settings, tenant: str, sid: str, output: str) -> dict[str, Any]:
    """``export --format bundle``: seal the session (manifest, checkpoint), then write the
    bundle to ``output``."""
    from ingest.evidence import EvidenceWorker
    from replay.evidence import build_bundle

    worker = EvidenceWorker(settings)

    async def work(pool: Any) -> dict[str, Any]:
        try:
            await worker.seal(tenant, sid)
        finally:
            await worker.close()
        with open(output, "wb") as fh:
            return await build_bundle(pool, worker.keys, tenant, sid, fh)

    return run_with_pool(settings, work)


def _register_keys(main: click.Group) -> None:
    keys_group = subgroup(main, "keys", "Signing keys and key-encryption keys.")

    @keys_group.command("init")
    @click.pass_context
    def keys_init(ctx: click.Context) -> None:
        """Create the key file (kept as it is when it exists)."""
        from storage.keyring import KeyFile, key_file_path

        path = key_file_path(get_settings(ctx))
        keys = KeyFile.create(path)
        click.echo(f"key file {path}: signing key {keys.signing_kid}, KEK {keys.kek_id}")

    @keys_group.command("rotate")
    @click.option("--kek", is_flag=True, help="Rotate the key-encryption key instead.")
    @click.pass_context
    def keys_rotate(ctx: click.Context, kek: bool) -> None:
        """Add a new active key; old keys keep verifying (and unwrapping)."""
        from storage.keyring import load_keys

        new = load_keys(get_settings(ctx)).rotate("kek" if kek else "signing")
        click.echo(f"new active {'key-encryption key' if kek else 'signing key'}: {new}")

    @keys_group.command("rotate-data")
    @tenant_option
    @click.pass_context
    def keys_rotate_data(ctx: click.Context, tenant: str) -> None:
        """New data key for the tenant's later recordings (earlier ones keep theirs)."""
        from storage.datakeys import rotate_data_key

        async def work(pool: Any) -> int:
            return await rotate_data_key(pool, tenant)

        click.echo(f"tenant {tenant}: data key {run_with_pool(get_settings(ctx), work)} active")

    @keys_group.command("rewrap")
    @click.pass_context
    def keys_rewrap(ctx: click.Context) -> None:
        """Wrap every data key again under the active KEK (after rotate --kek); no recording
        is rewritten."""
        from storage.datakeys import rewrap

        n = run_with_pool(get_settings(ctx), rewrap)
        click.echo(f"re-wrapped {n} data keys")

    @keys_group.command("shred")
    @click.option("--reason", required=True, help="Why (kept in the signed tombstone).")
    @click.option("--yes", is_flag=True, help="Do it: this cannot be undone.")
    @tenant_option
    @click.pass_context
    def keys_shred(ctx: click.Context, reason: str, yes: bool, tenant: str) -> None:
        """Crypto-shred a tenant: destroy its data keys, so every recording sealed with them
        is unreadable everywhere, and delete the text derived from them."""
        from sessionvault.cli.common import actor
        from storage.datakeys import shred_tenant
        from storage.keyring import load_keys

        if not yes:
            raise ConfigError(f"shredding {tenant} cannot be undone: add --yes")
        settings = get_settings(ctx)
        keys = load_keys(settings)

        async def work(pool: Any) -> list[int]:
            return await shred_tenant(pool, keys, tenant, actor=actor(), reason=reason)

        ids = run_with_pool(settings, work)
        click.echo(f"tenant {tenant}: data keys {ids or 'none'} destroyed; tombstone signed")
        index = index_store(settings)
        if index is not None:
            # Text derived before encryption was on, or for a tenant whose text was kept.
            from storage.retention import tenant_segments_index_query

            try:
                n = index.delete_by_query(tenant_segments_index_query(tenant))
            finally:
                index.close()
            click.echo(f"tenant {tenant}: {n} output segments deleted from OpenSearch")

    @keys_group.command("public")
    @click.pass_context
    def keys_public(ctx: click.Context) -> None:
        """Print the public key document (give it to auditors: verify-bundle --keys)."""
        from storage.keyring import load_keys, public_key_document

        doc = public_key_document(load_keys(get_settings(ctx)))
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())

    evidence_group = subgroup(main, "evidence", "Signed manifests and checkpoints.")

    @evidence_group.command("checkpoint")
    @click.option(
        "--manifest-delay-ms",
        type=int,
        default=None,
        help="Sign manifests of sessions ended this long ago (default: the setting).",
    )
    @click.pass_context
    def evidence_checkpoint(ctx: click.Context, manifest_delay_ms: int | None) -> None:
        """One round now: sign due manifests, checkpoint every tenant, send them out."""
        from ingest.evidence import EvidenceStats, EvidenceWorker

        worker = EvidenceWorker(get_settings(ctx))

        async def run() -> EvidenceStats:
            try:
                return await worker.step(manifest_delay_ms=manifest_delay_ms)
            finally:
                await worker.close()

        stats = asyncio.run(run())
        click.echo(
            f"signed {stats.manifests} manifests and {stats.checkpoints} checkpoints;"
            f" sent {stats.emitted} evidence events"
        )


def _register_worker(main: click.Group) -> None:
    worker_group = subgroup(main, "worker", "Long-running Kafka workers.")

    @worker_group.command("evidence")
    @status_every_option
    @click.pass_context
    def evidence_cmd(ctx: click.Context, status_every: float) -> None:
        """Sign session manifests and per-tenant checkpoints until SIGTERM/SIGINT."""
        from ingest.evidence import EvidenceWorker

        settings = get_settings(ctx)
        run_worker_command(
            settings,
            tag="evidence",
            name="worker-evidence",
            make=lambda: EvidenceWorker(settings),
            banner=f"signing every {settings.checkpoint_interval_ms / 1000:g}s"
            " (SIGTERM/SIGINT to stop)",
            fields=StatusFields(
                rates=(),
                totals=(
                    ("manifests", "manifests"),
                    ("checkpoints", "checkpoints"),
                    ("emitted", "sent"),
                    ("db_retries", "retries"),
                ),
                stopped=("checkpoints", "checkpoints"),
            ),
            status_every=status_every,
        )
