"""Ingest commands: ``record`` and ``spool drain`` (producer side), workers (added later).

Each group of commands lives in its own ``_register_*`` function called from :func:`register`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys

import click

from sessionvault.cli import get_settings
from sessionvault.errors import ConfigError
from sessionvault.settings import Settings

_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def register(main: click.Group) -> None:
    """Add the ingest commands to the ``sessionvault`` group."""
    _register_record(main)


def _log_to_file(settings: Settings, verbose: bool) -> None:
    """During a recorded session the terminal belongs to the user: send logs to a file.

    kafka-python logs every failed connection attempt; on a raw-mode terminal those lines would
    corrupt the user's screen. ``-v`` on the record command keeps logs on stderr.
    """
    if verbose:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
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
    @click.option("--tenant", default=None, help="Tenant (default: SESSIONVAULT_TENANT).")
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
        tenant: str | None,
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
        if tenant:
            if not _TENANT_RE.fullmatch(tenant):
                raise ConfigError(f"--tenant {tenant!r}: use 1-63 of [A-Za-z0-9_.-]")
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
