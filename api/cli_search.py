"""Compliance commands: ``search``, ``retention set|show|apply`` and ``hold set|release|list``.

Thin click layers over :mod:`storage.search.service`, :mod:`storage.retention`; storage
itself knows nothing of click.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from sessionvault.cli import get_settings, resolve_session_id
from sessionvault.errors import ConfigError
from sessionvault.settings import Settings, require
from sessionvault.timespec import SPAN_HELP

if TYPE_CHECKING:
    from storage.search.model import Page

T = TypeVar("T")


def _dsn(settings: Settings) -> str:
    require(settings, "postgres_dsn")
    return settings.postgres_dsn.get()


def _actor() -> str:
    from ingest.view_audit import cli_viewer

    return cli_viewer()


async def _with_pool(dsn: str, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    from storage.pg import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        return await work(pool)
    finally:
        await pool.close()


def _run(settings: Settings, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(_with_pool(_dsn(settings), work))


def _index_store(settings: Settings, enabled: bool) -> Any:
    """The OpenSearch store retention deletes documents from (None: not configured/wanted)."""
    if not enabled or not settings.opensearch_url:
        return None
    from storage.search.opensearch import OpenSearchStore

    return OpenSearchStore(settings.opensearch_url, prefix=settings.opensearch_index_prefix)


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def register(main: click.Group) -> None:
    """Add ``search``, ``retention`` and ``hold`` to the ``sessionvault`` group."""
    _register_search(main)
    _register_alerts(main)
    _register_retention(main)
    _register_hold(main)


# (option name, Query filter, help): every filter is repeatable, values OR-ed.
_FILTER_OPTIONS = (
    ("--user", "user", "Teleport user"),
    ("--login", "login", "OS login"),
    ("--server", "server_id", "server id"),
    ("--cluster", "cluster_name", "proxy cluster name"),
    ("--kube-cluster", "kubernetes_cluster", "Kubernetes cluster"),
    ("--namespace", "kubernetes_namespace", "Kubernetes namespace (events only)"),
    ("--resource", "kubernetes_resource", "Kubernetes resource kind or name (events only)"),
    (
        "--verb",
        "verb",
        "Kubernetes verb (get, list, watch, create, update, patch, delete, deletecollection)"
        " or subresource (exec, log, ...); events only",
    ),
    ("--event", "event", "event type (events only)"),
    ("--code", "code", "event code (events only)"),
    ("--sid", "sid", "session id"),
)


# api.search_query.BACKENDS, spelled out: importing it here would load the search model at
# every command's start-up.
_backend_option = click.option(
    "--backend",
    type=click.Choice(["auto", "postgres", "opensearch"]),
    default="auto",
    show_default=True,
    help="auto: OpenSearch when configured and up, else PostgreSQL (and says so).",
)


def _register_search(main: click.Group) -> None:
    def filter_options(f: Callable[..., Any]) -> Callable[..., Any]:
        for opt, dest, help_text in reversed(_FILTER_OPTIONS):
            f = click.option(opt, dest, multiple=True, metavar="VALUE", help=help_text)(f)
        return f

    @main.command("search")
    @click.argument("terms", nargs=-1)
    @click.option(
        "--text",
        "texts",
        multiple=True,
        metavar="TERM",
        help="Literal, case-insensitive substring (repeatable: all must occur).",
    )
    @filter_options
    @click.option("--since", default=None, help=f"From (inclusive): {SPAN_HELP}.")
    @click.option("--until", default=None, help=f"To (exclusive; default now): {SPAN_HELP}.")
    @click.option(
        "--kind",
        type=click.Choice(["events", "output", "all"]),
        default="all",
        show_default=True,
        help="Audit events, terminal output, or both.",
    )
    @click.option("--limit", type=int, default=50, show_default=True, help="Hits per page.")
    @click.option("--cursor", default=None, help="Continue after a previous page.")
    @click.option("--all-pages", is_flag=True, help="Follow the cursor to the last page.")
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json", "csv"]),
        default="table",
        show_default=True,
    )
    @_backend_option
    @click.option("--tenant", default=None, help="Tenant (default: SESSIONVAULT_TENANT).")
    @click.pass_context
    def search_cmd(
        ctx: click.Context,
        /,
        terms: tuple[str, ...],
        texts: tuple[str, ...],
        since: str | None,
        until: str | None,
        kind: str,
        limit: int,
        cursor: str | None,
        all_pages: bool,
        fmt: str,
        backend: str,
        tenant: str | None,
        **filters: tuple[str, ...],
    ) -> None:
        """Search audit events and terminal output ("who did what, where, when").

        TERMS and --text are literal substrings (no query syntax), all required. Each hit in
        a session shows the command that replays it from that moment.
        """
        from api.search_format import csv_header, csv_rows, format_table, page_json
        from api.search_query import make_query

        settings = get_settings(ctx)
        query = make_query(
            tenant or settings.tenant,
            filters=filters,
            text=(*terms, *texts),
            kind=kind,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )

        def render(page: Page, first: bool) -> str:
            if fmt == "json":
                return page_json(page)
            if fmt == "csv":
                return (csv_header() if first else "") + csv_rows(page.hits)
            return format_table(page.hits, header=first) if page.hits or first else ""

        total, page = _pages(settings, query, backend, all_pages, render)
        more = "" if page.next_cursor is None else f"; more: --cursor {page.next_cursor}"
        click.echo(f"{total} hits (backend {page.backend}){more}", err=True)


def _register_alerts(main: click.Group) -> None:
    @main.command("alerts")
    @click.option(
        "--since", default="7d", show_default=True, help=f"From (inclusive): {SPAN_HELP}."
    )
    @click.option("--until", default=None, help=f"To (exclusive; default now): {SPAN_HELP}.")
    @click.option("--user", multiple=True, metavar="VALUE", help="Teleport user (repeatable).")
    @click.option("--sid", multiple=True, metavar="SID", help="Session id (repeatable).")
    @click.option(
        "--kube-cluster", multiple=True, metavar="VALUE", help="Kubernetes cluster (repeatable)."
    )
    @click.option("--limit", type=int, default=50, show_default=True, help="Alerts per page.")
    @click.option("--all-pages", is_flag=True, help="Every alert in the window, not one page.")
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="json: one JSON object per page, one per line (the search API's page).",
    )
    @_backend_option
    @click.option("--tenant", default=None, help="Tenant (default: SESSIONVAULT_TENANT).")
    @click.pass_context
    def alerts_cmd(
        ctx: click.Context,
        since: str,
        until: str | None,
        user: tuple[str, ...],
        sid: tuple[str, ...],
        kube_cluster: tuple[str, ...],
        limit: int,
        all_pages: bool,
        fmt: str,
        backend: str,
        tenant: str | None,
    ) -> None:
        """List the alerts detection raised (newest first), with their replay commands.

        Alerts are stored audit events (``alert.*``), so this is a search for them: the same
        tenant scoping, backends and paging as ``search --event alert.sigma``.
        """
        from api.search_format import format_alerts, page_json
        from api.search_query import make_query

        settings = get_settings(ctx)
        query = make_query(
            tenant or settings.tenant,
            filters={
                "event": ("alert.sigma",),
                "user": user,
                "sid": sid,
                "kubernetes_cluster": kube_cluster,
            },
            kind="events",
            since=since,
            until=until,
            limit=limit,
        )

        def render(page: Page, first: bool) -> str:
            if fmt == "json":
                return page_json(page)
            return format_alerts(page.hits, header=first) if page.hits or first else ""

        total, page = _pages(settings, query, backend, all_pages, render)
        more = "" if page.next_cursor is None else "; more: --all-pages"
        click.echo(f"{total} alerts (backend {page.backend}){more}", err=True)


def _pages(
    settings: Settings,
    query: Any,
    backend: str,
    all_pages: bool,
    render: Callable[[Page, bool], str],
) -> tuple[int, Page]:
    """Run ``query`` page by page (all of them with ``all_pages``), echo each page as
    ``render`` makes it, then say on stderr which backend(s) answered and why; (hits, last page)."""
    from api.search_query import open_search

    async def work() -> tuple[int, Page]:
        fe = open_search(settings, backend=backend)
        try:
            q, first, total = query, True, 0
            reasons: dict[str, str] = {}
            while True:
                page = await fe.search(q)
                reasons.setdefault(page.backend, page.reason)
                total += len(page.hits)
                text = render(page, first)
                if text:
                    click.echo(text, nl=not text.endswith("\n"))
                first = False
                if not all_pages or page.next_cursor is None:
                    break
                if sys.stderr.isatty():
                    click.echo(f"\r{total} hits...", err=True, nl=False)
                q = q.with_cursor(page.next_cursor)
            if sys.stderr.isatty() and all_pages:
                click.echo("\r", err=True, nl=False)
            # Every answer says who answered and why (each distinct backend once).
            for name, why in reasons.items():
                click.echo(f"answered by {name}: {why}", err=True)
            return total, page
        finally:
            await fe.close()

    try:
        return asyncio.run(work())
    except BrokenPipeError:
        sys.stderr.close()
        raise SystemExit(1) from None


def _register_retention(main: click.Group) -> None:
    @main.group("retention")
    def retention_group() -> None:
        """Per-tenant retention of audit events and session recordings."""

    @retention_group.command("set")
    @click.option("--tenant", default=None, help="Tenant (default: SESSIONVAULT_TENANT).")
    @click.option("--events-days", type=int, required=True, help="Keep audit events this long.")
    @click.option(
        "--sessions-days", type=int, required=True, help="Keep session recordings this long."
    )
    @click.pass_context
    def retention_set(
        ctx: click.Context, tenant: str | None, events_days: int, sessions_days: int
    ) -> None:
        """Set (or replace) a tenant's retention policy."""
        from storage.retention import set_policy

        settings = get_settings(ctx)
        t = tenant or settings.tenant

        async def work(pool: Any) -> Any:
            return await set_policy(
                pool, t, events_days=events_days, sessions_days=sessions_days, actor=_actor()
            )

        policy = _run(settings, work)
        click.echo(
            f"tenant {policy.tenant}: events kept {policy.events_days} days, sessions kept"
            f" {policy.sessions_days} days"
        )

    @retention_group.command("unset")
    @click.option("--tenant", default=None, help="Tenant (default: SESSIONVAULT_TENANT).")
    @click.pass_context
    def retention_unset(ctx: click.Context, tenant: str | None) -> None:
        """Remove a tenant's policy: it then keeps everything."""
        from storage.retention import delete_policy

        settings = get_settings(ctx)
        t = tenant or settings.tenant

        async def work(pool: Any) -> bool:
            return await delete_policy(pool, t)

        if not _run(settings, work):
            raise ConfigError(f"tenant {t} has no retention policy")
        click.echo(f"tenant {t}: retention policy removed (keeps everything)")

    @retention_group.command("show")
    @click.option("--tenant", default=None, help="Only this tenant (default: every policy).")
    @click.pass_context
    def retention_show(ctx: click.Context, tenant: str | None) -> None:
        """List retention policies."""
        from storage.retention import get_policies

        settings = get_settings(ctx)

        async def work(pool: Any) -> Any:
            return await get_policies(pool, tenant)

        rows = _run(settings, work)
        if not rows:
            click.echo("no retention policies (every tenant keeps everything)")
            return
        table = [("TENANT", "EVENTS DAYS", "SESSIONS DAYS", "UPDATED (UTC)", "BY")]
        table += [
            (
                p.tenant,
                str(p.events_days),
                str(p.sessions_days),
                _when(p.updated_at),
                p.updated_by,
            )
            for p in rows
        ]
        click.echo(_table(table))

    @retention_group.command("apply")
    @click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
    @click.option(
        "--tenant",
        "tenants",
        multiple=True,
        help="Only these tenants (repeatable; default: every tenant with a policy).",
    )
    @click.option(
        "--no-opensearch",
        is_flag=True,
        help="Leave index documents alone (remove them later by a run with OpenSearch).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @click.option(
        "--list-limit",
        type=int,
        default=50,
        show_default=True,
        help="Session ids listed per tenant in the text report (0: all).",
    )
    @click.pass_context
    def retention_apply(
        ctx: click.Context,
        dry_run: bool,
        tenants: tuple[str, ...],
        no_opensearch: bool,
        as_json: bool,
        list_limit: int,
    ) -> None:
        """Delete events, recordings and index documents past each tenant's retention,
        except sessions under legal hold."""
        from storage.retention import RetentionReport, apply_retention

        settings = get_settings(ctx)
        index = _index_store(settings, not no_opensearch)

        async def work(pool: Any) -> RetentionReport:
            return await apply_retention(
                pool,
                tenants=tenants or None,
                dry_run=dry_run,
                index=index,
                actor=_actor(),
                progress=_progress,
            )

        try:
            report = _run(settings, work)
        finally:
            if index is not None:
                index.close()
        if as_json:
            click.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
            return
        click.echo(format_report(report, list_limit))


def format_report(report: Any, list_limit: int = 50) -> str:
    """The text report of a retention run."""
    verb = "would delete" if report.dry_run else "deleted"
    lines = [
        f"retention {'DRY RUN ' if report.dry_run else ''}at {report.now.isoformat()}"
        f" (OpenSearch documents {'included' if report.opensearch else 'not touched'})"
    ]
    if report.partitions:
        lines.append(
            f"event partitions {'droppable' if report.dry_run else 'dropped'}:"
            f" {', '.join(report.partitions)}"
        )
    if not report.tenants:
        lines.append("no tenant has a retention policy: nothing to do")
    for t in report.tenants:
        lines.append(
            f"tenant {t.tenant}: {verb} {t.events} events (before {t.events_cutoff:%Y-%m-%d}),"
            f" {t.sessions} sessions with {t.chunks} chunks and {t.segments} text segments"
            f" (before {t.sessions_cutoff:%Y-%m-%d}), {t.index_documents} index documents;"
            f" kept under legal hold: {len(t.held_session_ids)} sessions, {t.held_events} events"
        )
        shown = t.session_ids if list_limit <= 0 else t.session_ids[:list_limit]
        for sid in shown:
            lines.append(f"  {sid}")
        if len(shown) < len(t.session_ids):
            lines.append(f"  ... and {len(t.session_ids) - len(shown)} more (--list-limit 0)")
        for sid in t.held_session_ids:
            lines.append(f"  {sid} (legal hold: kept)")
    return "\n".join(lines)


def _register_hold(main: click.Group) -> None:
    @main.group("hold")
    def hold_group() -> None:
        """Legal hold: sessions that retention must never delete."""

    @hold_group.command("set")
    @click.argument("sid")
    @click.option("--reason", required=True, help="Why (kept with the decision).")
    @click.option("--tenant", default=None, help="Tenant (default: SESSIONVAULT_TENANT).")
    @click.pass_context
    def hold_set(ctx: click.Context, sid: str, reason: str, tenant: str | None) -> None:
        """Put a session under legal hold."""
        from storage.retention import set_hold

        settings = get_settings(ctx)
        t = tenant or settings.tenant
        sid = resolve_session_id(settings, t, sid)

        async def work(pool: Any) -> Any:
            return await set_hold(pool, t, sid, reason=reason, actor=_actor())

        rec = _run(settings, work)
        click.echo(f"session {sid}: legal hold set by {rec.actor} at {rec.at.isoformat()}")

    @hold_group.command("release")
    @click.argument("sid")
    @click.option("--reason", required=True, help="Why (kept with the decision).")
    @click.option("--tenant", default=None, help="Tenant (default: SESSIONVAULT_TENANT).")
    @click.pass_context
    def hold_release(ctx: click.Context, sid: str, reason: str, tenant: str | None) -> None:
        """Release a session's legal hold."""
        from storage.retention import release_hold

        settings = get_settings(ctx)
        t = tenant or settings.tenant
        sid = resolve_session_id(settings, t, sid)

        async def work(pool: Any) -> Any:
            return await release_hold(pool, t, sid, reason=reason, actor=_actor())

        rec = _run(settings, work)
        click.echo(f"session {sid}: legal hold released by {rec.actor} at {rec.at.isoformat()}")

    @hold_group.command("list")
    @click.option("--tenant", default=None, help="Tenant (default: SESSIONVAULT_TENANT).")
    @click.option("--history", "history_sid", default=None, metavar="SID", help="Show decisions.")
    @click.pass_context
    def hold_list(ctx: click.Context, tenant: str | None, history_sid: str | None) -> None:
        """Sessions under legal hold now (or one session's hold history)."""
        from storage.retention import hold_history, list_holds

        settings = get_settings(ctx)
        t = tenant or settings.tenant

        async def work(pool: Any) -> Any:
            if history_sid:
                return await hold_history(pool, t, history_sid)
            return await list_holds(pool, t)

        rows = _run(settings, work)
        table = [("SID", "ACTION", "AT (UTC)", "BY", "REASON")]
        table += [(r.sid, r.action, _when(r.at), r.actor, r.reason) for r in rows]
        click.echo(_table(table))


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
