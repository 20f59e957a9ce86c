"""``sessionvault play | export | sessions``: replay commands (thin layer over the API)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import click

from replay.export import FORMAT_CHOICES, export_lists_async, format_name, read_from_ms
from replay.frames import format_offset, parse_offset
from schemas.models import Frame
from sessionvault.cli.common import (
    get_settings,
    postgres_dsn,
    resolve_session_id,
    run_with_pool,
    tenant_option,
)
from sessionvault.errors import ConfigError

T = TypeVar("T")

_PROGRESS_EVERY_BYTES = 8 * 1024 * 1024


def _stdout_closed() -> None:
    """The reader of our stdout went away (``| head``): stop quietly, as Python's docs advise
    (point stdout at /dev/null so the interpreter's final flush does not fail again)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(1)


def _is_cast_file(target: str) -> bool:
    return target.endswith(".cast") or Path(target).is_file()


def _start_at(value: str | None) -> int:
    if value is None:
        return 0
    try:
        return parse_offset(value)
    except ValueError as exc:
        raise ConfigError(f"--start-at: {exc}") from exc


def _db_frames(dsn: str, tenant: str, sid: str) -> AsyncIterator[Frame]:
    async def gen() -> AsyncIterator[Frame]:
        from storage.pg import create_pool
        from storage.reader import iter_frames

        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            async for f in iter_frames(pool, tenant, sid):
                yield f
        finally:
            await pool.close()

    return gen()


def _play_cmd(
    ctx: click.Context,
    target: str,
    speed: float,
    idle_limit: float | None,
    start_at: str | None,
    tenant: str,
) -> None:
    from replay.asciicast import read_cast
    from replay.player import play, tty_keys

    start_ms = _start_at(start_at)
    if speed <= 0:
        raise ConfigError("--speed must be positive")
    out = sys.stdout.buffer
    if _is_cast_file(target):
        path = Path(target)
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise ConfigError(f"cannot open {target}: {exc.strerror}") from exc
        with fh:
            header, frames = read_cast(fh)
            limit = idle_limit if idle_limit is not None else header.idle_time_limit
            with tty_keys() as keys:
                play(frames, out, speed=speed, idle_limit_s=limit, start_at_ms=start_ms, keys=keys)
        return
    settings = get_settings(ctx)
    dsn = postgres_dsn(settings)
    t = tenant
    target = resolve_session_id(settings, t, target)
    with _audited_view(ctx, t, target, "play", start_ms):
        _play_db(dsn, t, target, out, speed, idle_limit, start_ms)


def _audited_view(
    ctx: click.Context, tenant: str, sid: str, fmt: str, start_ms: int
) -> contextlib.AbstractContextManager[object]:
    """Look the session up (NotFoundError before anything is shown) and record the access as
    an audit event (queued; never blocks or fails the viewer)."""
    from ingest.view_audit import cli_view_audit, cli_viewer, view_event
    from storage.reader import SessionRecord, get_session

    settings = get_settings(ctx)

    async def lookup(pool: Any) -> SessionRecord:
        return await get_session(pool, tenant, sid)

    session = run_with_pool(settings, lookup)
    fields = view_event(
        tenant=tenant,
        sid=sid,
        viewer=cli_viewer(),
        access_via="cli",
        fmt=fmt,
        session_type=session.kind,
        session_user=session.user_name,
        start_at_ms=start_ms,
    )
    return cli_view_audit(settings, fields)


def _play_db(
    dsn: str,
    t: str,
    target: str,
    out: BinaryIO,
    speed: float,
    idle_limit: float | None,
    start_ms: int,
) -> None:
    from replay.bridge import iterate_in_thread
    from replay.player import play, tty_keys

    frames_it = iterate_in_thread(lambda: _db_frames(dsn, t, target))
    try:
        # Pull the first frame before touching the terminal: a missing session fails cleanly.
        first = next(frames_it, None)
        if first is None:
            return

        def all_frames() -> Any:
            yield first
            yield from frames_it

        with tty_keys() as keys:
            play(
                all_frames(),
                out,
                speed=speed,
                idle_limit_s=idle_limit,
                start_at_ms=start_ms,
                keys=keys,
            )
    finally:
        frames_it.close()


class _Progress:
    """Counts bytes written and reports every few MB on stderr (export to a file)."""

    def __init__(self, out: BinaryIO, label: str, enabled: bool) -> None:
        self._out = out
        self._label = label
        self._enabled = enabled
        self.written = 0
        self._next = _PROGRESS_EVERY_BYTES

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.written += len(data)
        if self._enabled and self.written >= self._next:
            self._next += _PROGRESS_EVERY_BYTES
            click.echo(f"\r{self._label}: {self.written / 1e6:.0f} MB", err=True, nl=False)
        return len(data)

    def flush(self) -> None:
        self._out.flush()


def register(main: click.Group) -> None:
    """Add the replay commands to the ``sessionvault`` group."""

    @main.command("play")
    @click.argument("target", metavar="SID|FILE.cast")
    @click.option("--speed", type=float, default=1.0, show_default=True, help="Playback speed.")
    @click.option("--idle-limit", type=float, default=None, help="Cap pauses at this many seconds.")
    @click.option("--start-at", default=None, metavar="SECONDS|MM:SS", help="Seek (session time).")
    @click.option(
        "--leaf",
        default=None,
        metavar="NAME",
        help="The session is on this leaf cluster: read it through the root's API.",
    )
    @tenant_option
    @click.pass_context
    def play_cmd(
        ctx: click.Context,
        target: str,
        speed: float,
        idle_limit: float | None,
        start_at: str | None,
        leaf: str | None,
        tenant: str,
    ) -> None:
        """Replay a session in real time (SPACE pause, . step, q quit)."""
        try:
            if leaf:
                _play_leaf(ctx, leaf, target, speed, idle_limit, start_at)
                return
            _play_cmd(ctx, target, speed, idle_limit, start_at, tenant)
        except BrokenPipeError:
            _stdout_closed()

    @main.command("export")
    @click.argument("sid")
    @click.option(
        "--format",
        "fmt",
        type=click.Choice((*FORMAT_CHOICES, "bundle")),
        default="asciicast-v2",
        show_default=True,
        help="ndjson is newline-delimited JSON, one frame per line (json: the same); bundle"
        " is the signed evidence bundle (zip, needs -o; check it with verify-bundle).",
    )
    @click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False, writable=True),
        default=None,
        help="Output file (default: stdout).",
    )
    @click.option(
        "--start-at",
        default=None,
        metavar="SECONDS|MM:SS",
        help="Start here (session time): asciicast formats seek like play --start-at (screen"
        " rebuilt, times rebased); raw, text and json cut.",
    )
    @click.option(
        "--leaf",
        default=None,
        metavar="NAME",
        help="The session is on this leaf cluster: read it through the root's API.",
    )
    @tenant_option
    @click.pass_context
    def export_cmd(
        ctx: click.Context,
        sid: str,
        fmt: str,
        output: str | None,
        start_at: str | None,
        leaf: str | None,
        tenant: str,
    ) -> None:
        """Export a session (binary-safe; raw is byte-exact)."""
        from replay.export import ExportStats, export_raw_async
        from storage.reader import get_session, iter_frame_lists, iter_raw_output

        if leaf:
            _export_leaf(ctx, leaf, sid, fmt, output, start_at)
            return

        t = tenant
        sid = resolve_session_id(get_settings(ctx), t, sid)
        if fmt == "bundle":
            _export_bundle(ctx, t, sid, output, start_at)
            return
        fmt = format_name(fmt)
        start_ms = _start_at(start_at)
        audit = _audited_view(ctx, t, sid, fmt, start_ms)

        async def write(pool: Any, session: Any, out: BinaryIO) -> ExportStats:
            if fmt == "raw":  # straight from the stored chunks (byte for byte the same)
                pieces = iter_raw_output(pool, t, sid, start_ms=start_ms)
                return await export_raw_async(pieces, session, out)
            frames = iter_frame_lists(pool, t, sid, start_ms=read_from_ms(fmt, start_ms))
            return await export_lists_async(frames, session, fmt, out, start_ms)

        async def work(pool: Any) -> None:
            session = await get_session(pool, t, sid)
            if output is None:
                await write(pool, session, sys.stdout.buffer)
                return
            with open(output, "wb") as fh:
                progress = _Progress(fh, f"export {sid}", sys.stderr.isatty())
                stats = await write(pool, session, cast(BinaryIO, progress))
            click.echo(
                f"\rexported {stats.frames} frames ({stats.bytes_in} bytes) of {sid} as {fmt}"
                f" to {output} ({stats.bytes_out} bytes)",
                err=True,
            )

        try:
            with audit:
                run_with_pool(get_settings(ctx), work)
        except BrokenPipeError:
            _stdout_closed()

    @main.command("sessions")
    @click.option("--limit", type=int, default=50, show_default=True)
    @click.option(
        "--leaf",
        "leaves",
        multiple=True,
        metavar="NAME",
        help="List these leaf clusters' sessions through the root's API (repeatable; *: all).",
    )
    @tenant_option
    @click.pass_context
    def sessions_cmd(ctx: click.Context, limit: int, leaves: tuple[str, ...], tenant: str) -> None:
        """List the tenant's recent sessions, newest first."""
        from storage.reader import SessionRecord, list_sessions

        if leaves:
            _sessions_leaves(ctx, leaves, limit)
            return

        t = tenant

        async def work(pool: Any) -> list[SessionRecord]:
            return await list_sessions(pool, t, limit=limit)

        rows = run_with_pool(get_settings(ctx), work)
        click.echo(format_sessions(rows))


def _leaf_export_params(fmt: str, start_at: str | None) -> list[tuple[str, str]]:
    return [("format", format_name(fmt)), ("start_ms", str(_start_at(start_at)))]


def _export_leaf(
    ctx: click.Context,
    leaf: str,
    sid: str,
    fmt: str,
    output: str | None,
    start_at: str | None,
) -> None:
    """``export --leaf``: the leaf's own export, streamed through the root (the leaf audits
    it; the root stores nothing of it)."""
    from sessionvault.cli.federation import leaf_export, stdout, write_stream

    settings = get_settings(ctx)
    if fmt == "bundle":
        raise click.UsageError("--format bundle: ask the leaf's own installation")
    chunks = leaf_export(settings, leaf, sid, _leaf_export_params(fmt, start_at))
    if output is None:
        write_stream(chunks, stdout())
        return
    with open(output, "wb") as fh:
        written = write_stream(chunks, cast(BinaryIO, fh))
    click.echo(f"exported {sid} from leaf {leaf} as {fmt} to {output} ({written} bytes)", err=True)


def _play_leaf(
    ctx: click.Context,
    leaf: str,
    sid: str,
    speed: float,
    idle_limit: float | None,
    start_at: str | None,
) -> None:
    """``play --leaf``: the leaf's asciicast export through the root, played here."""
    import tempfile

    from sessionvault.cli.federation import leaf_export, write_stream

    settings = get_settings(ctx)
    with tempfile.NamedTemporaryFile(suffix=".cast") as fh:
        write_stream(
            leaf_export(settings, leaf, sid, _leaf_export_params("asciicast-v2", start_at)),
            cast(BinaryIO, fh),
        )
        _play_cmd(ctx, fh.name, speed, idle_limit, None, settings.tenant)


def _sessions_leaves(ctx: click.Context, leaves: tuple[str, ...], limit: int) -> None:
    from sessionvault.cli.federation import federated_pages

    params = [("leaf", leaf) for leaf in leaves if leaf != "*"] + [("limit", str(limit))]
    for page in federated_pages(
        get_settings(ctx),
        "/v1/federation/sessions",
        params,
        "sessions",
        cursor=None,
        all_pages=False,
    ):
        for s in page["sessions"]:
            click.echo(
                f"{s['started_at']}\t{s['leaf']}\t{s['sid']}\t{s['kind']}\t{s['user']}\t"
                f"{s['server_id']}\t{s['status']}\t{s['bytes']} bytes"
            )


def _export_bundle(
    ctx: click.Context, tenant: str, sid: str, output: str | None, start_at: str | None
) -> None:
    from sessionvault.cli.evidence import write_bundle

    if output is None or start_at is not None:
        raise ConfigError("--format bundle writes a whole session to a file: give -o FILE")
    with _audited_view(ctx, tenant, sid, "bundle", 0):
        body = write_bundle(get_settings(ctx), tenant, sid, output)
    click.echo(
        f"bundle of {sid} ({body['chunks']} chunks, {body['events']} events) written to"
        f" {output}; check it with: sessionvault verify-bundle {output}",
        err=True,
    )


def format_sessions(rows: Any) -> str:
    """The ``sessions`` table (columns: sid, user, login, server, start, duration, bytes,
    status)."""
    head = ("SID", "USER", "LOGIN", "SERVER", "START (UTC)", "DURATION", "BYTES", "STATUS")
    table = [head]
    for r in rows:
        table.append(
            (
                r.sid,
                r.user_name,
                r.login,
                r.server_id or r.kubernetes_cluster,
                r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                format_offset(r.duration_ms),
                str(r.bytes),
                r.status if r.integrity == "ok" else f"{r.status},{r.integrity}",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )
