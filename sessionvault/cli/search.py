"""Compliance search: ``search`` (audit events and terminal text) and ``alerts``.

Thin click layers over :mod:`storage.search.service` and :mod:`api.search_query`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from sessionvault.cli.common import get_settings, tenant_option
from sessionvault.settings import Settings
from sessionvault.timespec import SPAN_HELP

if TYPE_CHECKING:
    from storage.search.model import Page


def register(main: click.Group) -> None:
    """Add ``search`` and ``alerts`` to the ``sessionvault`` group."""
    _register_search(main)
    _register_alerts(main)


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


#: ``--leaf`` on the commands a root answers from its leaves (docs/federation.md).
_leaf_option = click.option(
    "--leaf",
    "leaves",
    multiple=True,
    metavar="NAME",
    help="Ask these leaf clusters through the root's API (repeatable; * for every leaf).",
)


def _federated_search(
    settings: Any, params: list[tuple[str, str]], cursor: str | None, all_pages: bool, fmt: str
) -> None:
    """``search --leaf``: the root's federated search, printed with each hit's leaf."""
    from sessionvault.cli.federation import federated_pages, print_federated_hits

    if fmt == "csv":
        raise click.UsageError("--format csv is not available with --leaf")
    pages = federated_pages(
        settings, "/v1/federation/search", params, "hits", cursor=cursor, all_pages=all_pages
    )
    print_federated_hits(pages, fmt)


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
    @_leaf_option
    @tenant_option
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
        leaves: tuple[str, ...],
        tenant: str,
        **filters: tuple[str, ...],
    ) -> None:
        """Search audit events and terminal output ("who did what, where, when").

        TERMS and --text are literal substrings (no query syntax), all required. Each hit in
        a session shows the command that replays it from that moment.
        """
        from api.search_format import csv_header, csv_rows, format_table, page_json
        from api.search_query import make_query

        settings = get_settings(ctx)
        if leaves:
            params = [("leaf", leaf) for leaf in leaves if leaf != "*"]
            params += [("text", t) for t in (*terms, *texts)]
            params += [(name, v) for name, values in filters.items() for v in values]
            params += [(k, v) for k, v in (("since", since), ("until", until)) if v]
            params += [("kind", kind), ("limit", str(limit))]
            _federated_search(settings, params, cursor, all_pages, fmt)
            return
        query = make_query(
            tenant,
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
    @tenant_option
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
        tenant: str,
    ) -> None:
        """List the alerts detection raised (newest first), with their replay commands.

        Alerts are stored audit events (``alert.*``), so this is a search for them: the same
        tenant scoping, backends and paging as ``search --event alert.sigma``.
        """
        from api.search_format import format_alerts, page_json
        from api.search_query import make_query

        settings = get_settings(ctx)
        query = make_query(
            tenant,
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
