"""What every ``sessionvault`` command shares: the error-reporting group, settings from the
click context, shared options and the shell of the long-running ``worker ...`` commands."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from sessionvault.errors import ConfigError, SessionVaultError
from sessionvault.names import TENANT_RULE, is_tenant_name
from sessionvault.settings import Settings, load_settings, read_stack_file, require

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


class Group(click.Group):
    """Errors from the library print as one clear line (no traceback) and exit non-zero (2 when
    retriable); ``SESSIONVAULT_DEBUG=1`` shows the traceback."""

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
        from storage.datakeys import configure

        settings = load_settings()
        configure(settings)  # encrypted recordings open with this installation's key file
        ctx.obj = settings
    return settings


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
    banner: str | Callable[[W], str],
    stopped: Callable[[W], str],
    status_line: Callable[[W, float], Awaitable[str]] | None = None,
    status_every: float = 5.0,
    quiet_loggers: Sequence[str] = ("kafka",),
    home: Path | None = None,
    name: str = "",
    metrics_port: int = 0,
    spool_dir: Path | None = None,
    heap_keep_bytes: int = 0,
) -> None:
    """Run a long-lived asyncio worker until SIGTERM/SIGINT: the shared shell of the
    ``worker ...`` commands.

    With ``metrics_port``, the worker's Prometheus metrics and its probes (``/metrics``,
    ``/livez``, ``/readyz``: :mod:`ingest.metrics`) are served on that port while it runs.

    With ``home`` and ``name``, the worker's health (its ``health`` and ``stats``) is written
    for ``status`` about once a second (:class:`ingest.health.Reporter`), and a stalled worker's
    status lines say ``STALLED`` and why.

    Once the worker is built, the process's heap is settled
    (:func:`ingest.runtime.settle_heap`, keeping ``heap_keep_bytes`` of freed memory).

    Prints ``banner`` (or ``banner(worker)``) on stderr, then every ``status_every`` seconds
    the line ``status_line(worker, seconds since the last line)`` returns (0: no status lines),
    and
    ``stopped(worker)`` at the end. sessionvault's own loggers are raised to INFO (retries and
    dead letters are operator information); ``quiet_loggers`` (drivers' reconnect chatter) are
    lowered to ERROR.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING)
    root_level = logging.getLogger().level
    # (Not `name`: that is the worker's, for its health file and metrics.)
    for logger_name in ("ingest", "storage", "siem"):
        logging.getLogger(logger_name).setLevel(min(root_level, logging.INFO))
    for logger_name in quiet_loggers:
        logging.getLogger(logger_name).setLevel(max(root_level, logging.ERROR))

    from ingest.health import Reporter, status_suffix
    from ingest.runtime import settle_heap

    async def main_task() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        worker = make()
        settle_heap(heap_keep_bytes)  # start-up is over: see its docstring (issue 16)

        async def ticker() -> None:
            assert status_line is not None
            last = time.monotonic()
            while True:
                await asyncio.sleep(status_every)
                now = time.monotonic()
                line = await status_line(worker, max(now - last, 1e-9))
                click.echo(line + status_suffix(worker), err=True)
                last = now

        click.echo(banner(worker) if callable(banner) else banner, err=True)
        task = (
            asyncio.create_task(ticker()) if status_line is not None and status_every > 0 else None
        )
        reporter = Reporter(home, name, worker) if home is not None and name else None
        server = None
        if metrics_port:
            from ingest.metrics import serve_metrics

            # The label the runtime counts under (persist, index, siem-NAME, ...).
            label = getattr(getattr(worker, "rt", None), "name", "") or name.removeprefix("worker-")
            server = serve_metrics(metrics_port, label or "worker", worker, spool_dir=spool_dir)
        try:
            await run(worker, stop)
        finally:
            if task is not None:
                task.cancel()
            if reporter is not None:
                reporter.close()
            if server is not None:
                server.close()
        click.echo(stopped(worker), err=True)

    asyncio.run(main_task())


T = TypeVar("T")


def postgres_dsn(settings: Settings) -> str:
    """The configured PostgreSQL DSN (a one-line ConfigError when there is none)."""
    require(settings, "postgres_dsn")
    return settings.postgres_dsn.get()


def actor() -> str:
    """Who is at this command line, for audit events and retention/hold records."""
    from ingest.view_audit import cli_viewer

    return cli_viewer()


async def with_pool(
    settings: Settings, work: Callable[[Any], Awaitable[T]], *, max_size: int = 2
) -> T:
    """Run ``work(pool)`` with a small PostgreSQL pool opened for it and closed after."""
    from storage.pg import create_pool

    pool = await create_pool(postgres_dsn(settings), min_size=1, max_size=max_size)
    try:
        return await work(pool)
    finally:
        await pool.close()


def run_with_pool(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """:func:`with_pool` from synchronous command code (one event loop per command)."""
    return asyncio.run(with_pool(settings, work))


def index_store(settings: Settings) -> Any:
    """The configured OpenSearch store (None when OpenSearch is not configured)."""
    if not settings.opensearch_url:
        return None
    from storage.search.opensearch import OpenSearchStore

    return OpenSearchStore(settings.opensearch_url, prefix=settings.opensearch_index_prefix)


def check_tenant(name: str) -> str:
    """``name`` when it is a valid tenant name; a one-line ConfigError otherwise."""
    if not is_tenant_name(name):
        raise ConfigError(f"--tenant {name!r}: use {TENANT_RULE}")
    return name


def _default_tenant(ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    return get_settings(ctx).tenant if value is None else check_tenant(value)


#: ``--tenant``: the tenant a command acts in; the command receives the resolved name
#: (``SESSIONVAULT_TENANT`` when not given), never None.
tenant_option = click.option(
    "--tenant",
    default=None,
    callback=_default_tenant,
    help="Tenant (default: SESSIONVAULT_TENANT).",
)


@dataclass(frozen=True)
class StatusFields:
    """What a worker's status line shows of its ``stats``: ``rates`` as (unit, field, divisor)
    per second since the last line, then ``totals`` as (field, label); ``stopped`` is the
    (field, label) of the line printed at the end."""

    rates: tuple[tuple[str, str, float], ...]
    totals: tuple[tuple[str, str], ...]
    stopped: tuple[str, str] = ("records", "records")


def run_worker_command(
    settings: Settings,
    *,
    tag: str,
    name: str,
    make: Callable[[], Any],
    banner: str | Callable[[Any], str],
    fields: StatusFields,
    status_every: float,
    extra: Callable[[Any], Awaitable[str]] | None = None,
    stopped: Callable[[Any], str] | None = None,
    quiet_loggers: Sequence[str] = ("kafka",),
) -> None:
    """:func:`run_async_worker` for a worker command: ``make()`` builds the worker, whose
    ``run(stop=...)`` runs it; the status lines show ``fields`` of its ``stats`` (and
    ``extra(worker)``, such as its lag), each prefixed with ``tag``; the last line says what
    it did (``stopped(worker)`` when given)."""
    last: dict[str, float] = {}

    async def status_line(worker: Any, seconds: float) -> str:
        s = worker.stats
        rates = []
        for unit, field_name, divisor in fields.rates:
            now = float(getattr(s, field_name))
            rates.append(f"{(now - last.get(field_name, 0.0)) / seconds / divisor:,.1f} {unit}")
            last[field_name] = now
        head = " ".join(rates) + (f" {await extra(worker)}" if extra is not None else "")
        totals = ", ".join(f"{getattr(s, f)} {label}" for f, label in fields.totals)
        return f"{tag}: {head} | total {totals}"

    field_name, label = fields.stopped
    run_async_worker(
        make=make,
        run=lambda worker, stop: worker.run(stop=stop),
        banner=(lambda w: f"{tag}: {banner(w)}") if callable(banner) else f"{tag}: {banner}",
        stopped=lambda worker: (
            f"{tag}: "
            + (
                stopped(worker)
                if stopped is not None
                else f"stopped after {getattr(worker.stats, field_name)} {label}"
            )
        ),
        status_line=status_line,
        status_every=status_every,
        quiet_loggers=quiet_loggers,
        home=settings.home,
        name=name,
        metrics_port=settings.metrics_port,
        spool_dir=settings.resolved_spool_dir,
        heap_keep_bytes=settings.worker_heap_keep_bytes,
    )


async def lag_text(worker: Any) -> str:
    """``lag N`` of a Kafka worker (``?`` while unknown)."""
    lag = await worker.lag()
    return f"lag {'?' if lag is None else lag}"


def tombstone_keys(settings: Settings) -> Any:
    """The signing keys a deletion by policy signs its tombstones with; when there is no key
    file, one warning line says the deletion will look like tampering to ``verify``."""
    from sessionvault.errors import ConfigError
    from storage.keyring import key_file_path, load_keys

    try:
        return load_keys(settings)
    except ConfigError:
        click.echo(
            f"warning: no key file at {key_file_path(settings)}: deletions leave no signed"
            " tombstone, and `verify` will report them as deleted",
            err=True,
        )
        return None
