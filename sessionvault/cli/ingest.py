"""Ingest commands: ``record`` and ``spool drain`` (producer side), workers (added later).

Each group of commands lives in its own ``_register_*`` function called from :func:`register`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Any

import click
import orjson

from sessionvault.cli.common import (
    StatusFields,
    check_tenant,
    get_settings,
    group_option,
    lag_text,
    run_with_pool,
    run_worker_command,
    status_every_option,
    subgroup,
    tenant_option,
)
from sessionvault.errors import SessionVaultError
from sessionvault.settings import Settings
from sessionvault.timespec import SPAN_HELP, parse_when, window

_STOP_HINT = " (Ctrl-C or SIGTERM to stop)"


def register(main: click.Group) -> None:
    """Add the ingest commands to the ``sessionvault`` group."""
    _register_record(main)
    _register_worker(main)
    _register_import(main)
    _register_index(main)
    _register_segments(main)


def _log_to_file(settings: Settings, verbose: bool) -> None:
    """During a recorded session the terminal belongs to the user: send logs to a file.

    kafka-python logs every failed connection attempt; on a raw-mode terminal those lines would
    corrupt the user's screen. ``-v`` on the record command keeps logs on stderr.
    """
    if verbose:
        return
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    try:
        log_dir = settings.home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler: logging.Handler = logging.FileHandler(log_dir / "record.log")
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        )
    except OSError:
        handler = logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def _register_record(main: click.Group) -> None:
    @main.command(
        "record",
        context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    )
    @tenant_option
    @click.option("--sid", default=None, help="Session id (default: a new UUID).")
    @click.option("--user", default=None, help="Identity the proxy authenticated (default: login).")
    @click.option("--cluster-name", default="", help="cluster_name of the audit events.")
    @click.option(
        "--input/--no-input",
        "record_input",
        default=True,
        show_default=True,
        help="Record keystrokes (never those typed at an echo-off prompt such as a password).",
    )
    @click.option("-q", "--quiet", is_flag=True, help="No notice line on stderr at start.")
    @click.option("-v", "--verbose", is_flag=True, help="Keep logs on stderr (debugging).")
    @click.argument("command", nargs=-1, type=click.UNPROCESSED)
    @click.pass_context
    def record_cmd(
        ctx: click.Context,
        tenant: str,
        sid: str | None,
        user: str | None,
        cluster_name: str,
        record_input: bool,
        quiet: bool,
        verbose: bool,
        command: tuple[str, ...],
    ) -> None:
        """Run COMMAND (default: $SHELL, or SSH_ORIGINAL_COMMAND) in a pty and record it.

        Use `--` before a command that has options of its own. Exits with the command's
        status (128+N when killed by signal N). Works as an SSH ForceCommand.
        """
        from ingest.pty_record import RecordOptions, record, stderr_notice

        settings = get_settings(ctx)
        settings = dataclasses.replace(settings, tenant=tenant)
        _log_to_file(settings, verbose)
        options = RecordOptions(
            command=command,
            sid=sid,
            record_input=record_input,
            user=user,
            cluster_name=cluster_name,
            env=dict(os.environ),
        )
        status = record(settings, options, on_start=None if quiet else stderr_notice)
        sys.stdout.flush()
        ctx.exit(status)

    @main.group("spool")
    def spool_group() -> None:
        """The local spool where producers keep records while Kafka is unreachable."""

    @spool_group.command("drain")
    @click.pass_context
    def spool_drain_cmd(ctx: click.Context) -> None:
        """Send spools left by producers that exited before Kafka came back."""
        from ingest.sdk import drain_spool

        settings = get_settings(ctx)

        def progress(segment: str, sent: int) -> None:
            click.echo(f"sent {segment} ({sent} records so far)", err=True)

        report = drain_spool(settings, progress=progress)
        click.echo(
            f"drained {report.directories} spool directories, {report.records} records; "
            f"{report.skipped_live} live producers skipped; {report.remaining} segments remain"
        )


def _register_worker(main: click.Group) -> None:
    """``worker persist``, ``dict train`` and ``deadletter list`` (the persist side)."""
    import asyncio
    from pathlib import Path

    worker_group = subgroup(main, "worker", "Long-running Kafka workers.")

    @worker_group.command("persist")
    @group_option("persist")
    @status_every_option
    @click.pass_context
    def persist_cmd(ctx: click.Context, group_id: str, status_every: float) -> None:
        """Persist chunks and events from Kafka into PostgreSQL until SIGTERM/SIGINT."""
        from ingest.persist import PersistWorker

        settings = get_settings(ctx)
        run_worker_command(
            settings,
            tag=f"persist[{group_id}]",
            name="worker-persist",
            make=lambda: PersistWorker(settings, group_id=group_id),
            banner=f"consuming {settings.topic_chunks}, {settings.topic_events}" + _STOP_HINT,
            fields=StatusFields(
                rates=(("rec/s", "records", 1), ("MB/s", "bytes", 1e6)),
                totals=(
                    ("records", "rec"),
                    ("chunks_inserted", "chunks"),
                    ("events_inserted", "events"),
                    ("dead_letters", "dead letters"),
                    ("db_retries", "db retries"),
                ),
            ),
            status_every=status_every,
            extra=lag_text,
        )

    dict_group = subgroup(main, "dict", "zstd dictionaries for small chunk payloads.")

    @dict_group.command("train")
    @click.option(
        "--size",
        "dict_bytes",
        default=64 * 1024,
        show_default=True,
        help="Dictionary size in bytes.",
    )
    @click.option(
        "--samples",
        "max_samples",
        default=5000,
        show_default=True,
        help="At most this many stored small chunks are sampled.",
    )
    @click.option("--tenant", default=None, help="Sample one tenant's chunks only.")
    @click.pass_context
    def dict_train_cmd(
        ctx: click.Context, dict_bytes: int, max_samples: int, tenant: str | None
    ) -> None:
        """Train a dictionary on stored small payloads (workers pick it up within a minute)."""
        from storage import pg
        from storage.dicts import train_and_store

        settings = get_settings(ctx)

        async def run() -> None:
            conn = await pg.connect(settings.postgres_dsn.get())
            try:
                click.echo("sampling stored chunks and training ...", err=True)
                r = await train_and_store(
                    conn,
                    dict_bytes=dict_bytes,
                    max_samples=max_samples,
                    level=settings.zstd_level,
                    tenant=tenant,
                )
            finally:
                await conn.close()
            click.echo(
                f"dictionary {r.dict_id}: {r.dict_bytes} bytes from {r.samples} samples "
                f"({r.sample_bytes} bytes)\n"
                f"held-out {r.test_samples} payloads, {r.test_raw_bytes} bytes: "
                f"plain zstd {r.test_plain_bytes} bytes (ratio {r.plain_ratio:.2f}), "
                f"with dictionary {r.test_dict_bytes} bytes (ratio {r.dict_ratio:.2f})"
            )

        asyncio.run(run())

    dl_group = subgroup(main, "deadletter", "Inspect the dead-letter topic.")

    @dl_group.command("list")
    @click.option("--reason", default=None, help="Only this reason code.")
    @click.option("--limit", default=0, help="At most this many (0: all).")
    @click.option(
        "--dump",
        "dump_dir",
        default=None,
        type=click.Path(file_okay=False),
        help="Also write each original record's bytes to DIR/<partition>-<offset>.bin.",
    )
    @click.pass_context
    def deadletter_list_cmd(
        ctx: click.Context, reason: str | None, limit: int, dump_dir: str | None
    ) -> None:
        """List dead letters: reason, source topic[partition]@offset, size, message."""
        from ingest.deadletter import format_deadletter, iter_deadletters

        settings = get_settings(ctx)
        out = Path(dump_dir) if dump_dir else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        shown = 0
        counts: dict[str, int] = {}
        for d in iter_deadletters(settings):
            if reason and d.reason != reason:
                continue
            counts[d.reason] = counts.get(d.reason, 0) + 1
            if limit and shown >= limit:
                continue
            click.echo(format_deadletter(d))
            if out is not None:
                (out / f"{d.partition}-{d.offset}.bin").write_bytes(d.value or b"")
            shown += 1
        total = sum(counts.values())
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        click.echo(f"{total} dead letters in {settings.topic_deadletter}: {summary}", err=True)


def _register_import(main: click.Group) -> None:
    """``import FORMAT PATH`` and ``kube-timeline`` (issue 3: kubectl and importers)."""
    from ingest.import_cmd import FORMATS

    @main.command("import")
    @click.argument("fmt", metavar="FORMAT", type=click.Choice(FORMATS))
    @click.argument("path")
    @tenant_option
    @click.option("--cluster", default="", help="kube-audit: the Kubernetes cluster's name.")
    @click.option(
        "--started-at", default=None, help="asciicast/tlog without a start time: RFC 3339."
    )
    @click.pass_context
    def import_cmd(
        ctx: click.Context,
        fmt: str,
        path: str,
        tenant: str,
        cluster: str,
        started_at: str | None,
    ) -> None:
        """Import a recording or audit log made by another tool (PATH '-' reads stdin for
        teleport-json and kube-audit). Re-importing the same input changes nothing. Prints the
        session id."""
        from ingest.import_cmd import Loaded, import_path

        settings = get_settings(ctx)
        if tenant is not None:
            check_tenant(tenant)
        bar: list[Any] = []

        def on_loaded(loaded: Loaded) -> None:
            label = "importing session" if loaded.recording is not None else "importing events"
            bar.append(click.progressbar(length=max(loaded.size, 1), label=label, file=sys.stderr))
            bar[0].__enter__()

        try:
            result = import_path(
                settings,
                fmt,
                path,
                tenant=tenant,
                kubernetes_cluster=cluster,
                started_at=started_at,
                on_loaded=on_loaded,
                progress=lambda n: bar[0].update(n),
            )
        finally:
            if bar:
                bar[0].__exit__(None, None, None)
        if result.sid is not None:
            click.echo(
                f"{result.chunks} chunks ({result.bytes} bytes), {result.events} events",
                err=True,
            )
            click.echo(result.sid)
        else:
            click.echo(f"{result.events} events", err=True)

    @main.command("kube-timeline")
    @tenant_option
    @click.option("--user", default=None, help="Only this user.")
    @click.option("--cluster", default=None, help="Only this Kubernetes cluster.")
    @click.option("--since", required=True, help=f"From (inclusive): {SPAN_HELP}.")
    @click.option("--until", default=None, help=f"To (exclusive; default now): {SPAN_HELP}.")
    @click.option("--group-by", type=click.Choice(["user", "cluster", "session"]), default=None)
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
    @click.option("--limit", default=10_000, show_default=True, type=int)
    @click.pass_context
    def kube_timeline_cmd(
        ctx: click.Context,
        tenant: str,
        user: str | None,
        cluster: str | None,
        since: str,
        until: str | None,
        group_by: str | None,
        fmt: str,
        limit: int,
    ) -> None:
        """What users did in Kubernetes clusters: API requests interleaved with kubectl exec
        sessions (each with its replay command)."""
        from ingest.timeline import kube_timeline

        start, end = window(since, until)
        assert start is not None  # --since is required

        async def work(pool: Any) -> Any:
            return await kube_timeline(
                pool,
                tenant,
                since=start,
                until=end,
                user=user,
                cluster=cluster,
                group_by=group_by,
                limit=limit,
            )

        result = run_with_pool(get_settings(ctx), work)
        if fmt == "json":
            doc = result.to_json(grouped=bool(group_by))
            click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
            return
        if text := result.format_text(group_by):
            click.echo(text)
        if result.truncated:
            click.echo(f"(truncated at {limit} requests; narrow the window)", err=True)


def _register_index(main: click.Group) -> None:
    """``worker index`` and ``reindex`` (issue 4: the OpenSearch side of search)."""
    import asyncio

    worker_group = subgroup(main, "worker", "Long-running Kafka workers.")

    @worker_group.command("index")
    @group_option("index")
    @status_every_option
    @click.pass_context
    def index_cmd(ctx: click.Context, group_id: str, status_every: float) -> None:
        """Index events and terminal text into OpenSearch until SIGTERM/SIGINT.

        Documents are built from PostgreSQL rows (the source of truth); an OpenSearch that
        lost its data is rebuilt from PostgreSQL automatically.
        """
        from ingest.index_worker import IndexWorker

        settings = get_settings(ctx)
        run_worker_command(
            settings,
            tag=f"index[{group_id}]",
            name="worker-index",
            make=lambda: IndexWorker(settings, group_id=group_id),
            banner=f"consuming {settings.topic_chunks}, {settings.topic_events} -> "
            f"{settings.opensearch_url} ({settings.opensearch_index_prefix}-*)" + _STOP_HINT,
            fields=StatusFields(
                rates=(("docs/s", "indexed", 1),),
                totals=(
                    ("records", "rec"),
                    ("indexed", "docs"),
                    ("dead_letters", "dead letters"),
                    ("os_retries", "OpenSearch retries"),
                    ("reindexes", "rebuilds"),
                ),
            ),
            status_every=status_every,
            extra=lag_text,
            quiet_loggers=("kafka", "opensearch"),
        )

    @main.command("reindex")
    @click.option("--tenant", default=None, help="Only this tenant (default: every tenant).")
    @click.option(
        "--since",
        default=None,
        help=f"Only documents from this time on: {SPAN_HELP}.",
    )
    @click.pass_context
    def reindex_cmd(ctx: click.Context, tenant: str | None, since: str | None) -> None:
        """Rebuild OpenSearch from PostgreSQL (events and terminal text). Idempotent."""
        from sessionvault.settings import require
        from storage import pg
        from storage.search.opensearch import OpenSearchStore
        from storage.search.reindex import count_rows, reindex

        settings = get_settings(ctx)
        require(settings, "postgres_dsn", "opensearch_url")
        if tenant is not None:
            check_tenant(tenant)
        since_dt = parse_when("--since", since)

        async def run() -> None:
            conn = await pg.connect(settings.postgres_dsn.get())
            store = OpenSearchStore(
                settings.opensearch_url, prefix=settings.opensearch_index_prefix
            )
            try:
                total = await count_rows(conn, tenant=tenant, since=since_dt)
                with click.progressbar(
                    length=total, label="reindexing", file=sys.stderr, show_pos=True
                ) as bar:
                    report = await reindex(
                        conn, store, tenant=tenant, since=since_dt, progress=bar.update
                    )
            finally:
                store.close()
                await conn.close()
            click.echo(
                f"indexed {report.events} events and {report.segments} segments in "
                f"{report.seconds:.1f} s; {len(report.rejected)} refused by OpenSearch"
                + ("; marked complete" if report.complete else "")
            )
            for doc_id, reason in report.rejected[:20]:
                click.echo(f"  refused {doc_id}: {reason}", err=True)

        asyncio.run(run())


def _register_segments(main: click.Group) -> None:
    """``worker segments``: the segmenter (terminal output -> searchable text segments)."""

    worker_group = subgroup(main, "worker", "Long-running Kafka workers.")

    @worker_group.command("segments")
    @status_every_option
    @click.pass_context
    def segments_cmd(ctx: click.Context, status_every: float) -> None:
        """Render stored terminal output into search segments until SIGTERM/SIGINT.

        Driven by PostgreSQL (LISTEN sv_segments, and a look every 5 s); several may run."""
        from ingest.segmenter import Segmenter

        async def queued(seg: Segmenter) -> str:
            try:
                return f"{await seg.pending()} sessions queued"
            except SessionVaultError:
                return "? sessions queued"

        run_worker_command(
            get_settings(ctx),
            tag="segments",
            name="worker-segments",
            make=lambda: Segmenter(get_settings(ctx)),
            banner="rendering queued sessions" + _STOP_HINT,
            fields=StatusFields(
                rates=(("chunks/s", "chunks", 1), ("segments/s", "segments", 1)),
                totals=(
                    ("chunks", "chunks"),
                    ("segments", "segments"),
                    ("resynced", "re-synced"),
                    ("bad_chunks", "undecodable"),
                    ("db_retries", "db retries"),
                ),
                stopped=("segments", "segments"),
            ),
            status_every=status_every,
            extra=queued,
            quiet_loggers=(),
        )
