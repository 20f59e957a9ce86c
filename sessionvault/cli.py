"""The ``sessionvault`` command: a thin click layer over the library API.

Errors from the library print as one clear line (no traceback) and exit non-zero; set
``SESSIONVAULT_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from sessionvault import __version__
from sessionvault.errors import SessionVaultError
from sessionvault.settings import Settings, load_settings, read_stack_file

STACK_DOWN = "the local stack is not running: run `sessionvault up`"


def local_stack_down() -> bool:
    """True when the settings point at the embedded local stack (its addresses come from
    ``stack.json``, not from ``SESSIONVAULT_*``) and that stack is not up (stopped by
    ``down``, or its servers died). False when in doubt."""
    try:
        settings = load_settings()
        stack = read_stack_file(settings.home)
    except SessionVaultError:
        return False
    if not stack.get("postgres_dsn"):
        return False
    if stack.get("postgres_dsn") != settings.postgres_dsn.get():
        return False  # pointed at other servers: their errors are theirs
    if stack.get("running") is False:
        return True
    from deploy.stack import LocalStack

    return not LocalStack(settings.home).is_up()


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SessionVaultError as exc:
            if os.environ.get("SESSIONVAULT_DEBUG"):
                raise
            # A server that cannot be reached because the local stack is down: say that,
            # not the driver's connection error.
            if exc.retriable and local_stack_down():
                click.echo(f"sessionvault: error: {STACK_DOWN} ({exc})", err=True)
                sys.exit(2)
            click.echo(f"sessionvault: error: {exc}", err=True)
            sys.exit(2 if exc.retriable else 1)
        except KeyboardInterrupt:
            click.echo("sessionvault: interrupted", err=True)
            sys.exit(130)


def resolve_session_id(settings: Settings, tenant: str, sid: str) -> str:
    """The full id of the session ``sid`` names in ``tenant`` (the id, or a unique prefix of
    it: :func:`storage.reader.resolve_sid`); for commands a person types a SID into."""
    from storage.pg import connect
    from storage.reader import resolve_sid

    async def work() -> str:
        conn = await connect(settings.postgres_dsn.get())
        try:
            return await resolve_sid(conn, tenant, sid)
        finally:
            await conn.close()

    return asyncio.run(work())


def get_settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    if not isinstance(settings, Settings):
        settings = load_settings()
        ctx.obj = settings
    return settings


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="sessionvault")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Session recording and audit log pipeline."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )
    if verbose == 0:
        # opensearch-py logs every failed request with a traceback; the error it raises is
        # translated and reported as one line (-v shows the driver's log again).
        logging.getLogger("opensearch").setLevel(logging.ERROR)


@main.command("config")
@click.pass_context
def config_cmd(ctx: click.Context) -> None:
    """Print the effective settings (secrets redacted)."""
    import orjson

    click.echo(orjson.dumps(get_settings(ctx).public_dict(), option=orjson.OPT_INDENT_2).decode())


W = TypeVar("W")
FC = TypeVar("FC", bound=Callable[..., Any])


def group_option(default: str) -> Callable[[FC], FC]:
    """``--group``: the worker's Kafka consumer group (``group_id`` parameter)."""
    return click.option(
        "--group", "group_id", default=default, show_default=True, help="Kafka consumer group."
    )


def status_every_option(fn: FC) -> FC:
    """``--status-every``: seconds between a worker's status lines on stderr."""
    return click.option(
        "--status-every",
        default=5.0,
        show_default=True,
        help="Seconds between status lines on stderr (0: none).",
    )(fn)


def subgroup(main: click.Group, name: str, help_text: str) -> click.Group:
    """The subgroup ``name`` of ``main``, created on first use (several areas add workers)."""
    existing = main.commands.get(name)
    if isinstance(existing, click.Group):
        return existing
    group = click.Group(name, help=help_text)
    main.add_command(group)
    return group


def run_async_worker(
    *,
    make: Callable[[], W],
    run: Callable[[W, asyncio.Event], Awaitable[None]],
    banner: str,
    stopped: Callable[[W], str],
    status_line: Callable[[W, float], Awaitable[str]] | None = None,
    status_every: float = 5.0,
    quiet_loggers: Sequence[str] = ("kafka",),
    home: Path | None = None,
    name: str = "",
) -> None:
    """Run a long-lived asyncio worker until SIGTERM/SIGINT: the shared shell of the
    ``worker ...`` commands.

    With ``home`` and ``name``, the worker's health (its ``health`` and ``stats``) is written
    for ``status`` about once a second (:class:`ingest.health.Reporter`), and a stalled worker's
    status lines say ``STALLED`` and why.

    Prints ``banner`` on stderr, then every ``status_every`` seconds the line
    ``status_line(worker, seconds since the last line)`` returns (0: no status lines), and
    ``stopped(worker)`` at the end. sessionvault's own loggers are raised to INFO (retries and
    dead letters are operator information); ``quiet_loggers`` (drivers' reconnect chatter) are
    lowered to ERROR.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING)
    root_level = logging.getLogger().level
    for name in ("ingest", "storage", "siem"):
        logging.getLogger(name).setLevel(min(root_level, logging.INFO))
    for name in quiet_loggers:
        logging.getLogger(name).setLevel(max(root_level, logging.ERROR))

    from ingest.health import Reporter, status_suffix

    async def main_task() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        worker = make()

        async def ticker() -> None:
            assert status_line is not None
            last = time.monotonic()
            while True:
                await asyncio.sleep(status_every)
                now = time.monotonic()
                line = await status_line(worker, max(now - last, 1e-9))
                click.echo(line + status_suffix(worker), err=True)
                last = now

        click.echo(banner, err=True)
        task = (
            asyncio.create_task(ticker()) if status_line is not None and status_every > 0 else None
        )
        reporter = Reporter(home, name, worker) if home is not None and name else None
        try:
            await run(worker, stop)
        finally:
            if task is not None:
                task.cancel()
            if reporter is not None:
                reporter.close()
        click.echo(stopped(worker), err=True)

    asyncio.run(main_task())


# Commands are registered by their modules' `register(main)` so each area owns its CLI code.
def _register_all() -> None:
    import importlib

    for mod in (
        "deploy.cli",
        "ingest.cli",
        "replay.cli",
        "api.cli",
        "api.cli_search",
        "siem.cli",
        "siem.cli_detect",
    ):
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            continue
        module.register(main)


_register_all()
