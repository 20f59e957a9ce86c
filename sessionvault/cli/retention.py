"""Retention and legal holds: ``retention set|show|delete|apply`` and ``hold
set|release|list``, thin click layers over :mod:`storage.retention`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click
import orjson

from sessionvault.cli.common import (
    actor,
    get_settings,
    index_store,
    resolve_session_id,
    run_with_pool,
    tenant_option,
    tombstone_keys,
)
from sessionvault.errors import ConfigError


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def register(main: click.Group) -> None:
    """Add ``retention`` and ``hold`` to the ``sessionvault`` group."""
    _register_retention(main)
    _register_hold(main)


def _register_retention(main: click.Group) -> None:
    @main.group("retention")
    def retention_group() -> None:
        """Per-tenant retention of audit events and session recordings."""

    @retention_group.command("set")
    @tenant_option
    @click.option("--events-days", type=int, required=True, help="Keep audit events this long.")
    @click.option(
        "--sessions-days", type=int, required=True, help="Keep session recordings this long."
    )
    @click.pass_context
    def retention_set(
        ctx: click.Context, tenant: str, events_days: int, sessions_days: int
    ) -> None:
        """Set (or replace) a tenant's retention policy."""
        from storage.retention import set_policy

        settings = get_settings(ctx)
        t = tenant

        async def work(pool: Any) -> Any:
            return await set_policy(
                pool, t, events_days=events_days, sessions_days=sessions_days, actor=actor()
            )

        policy = run_with_pool(settings, work)
        click.echo(
            f"tenant {policy.tenant}: events kept {policy.events_days} days, sessions kept"
            f" {policy.sessions_days} days"
        )

    @retention_group.command("unset")
    @tenant_option
    @click.pass_context
    def retention_unset(ctx: click.Context, tenant: str) -> None:
        """Remove a tenant's policy: it then keeps everything."""
        from storage.retention import delete_policy

        settings = get_settings(ctx)
        t = tenant

        async def work(pool: Any) -> bool:
            return await delete_policy(pool, t)

        if not run_with_pool(settings, work):
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

        rows = run_with_pool(settings, work)
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
        index = index_store(settings) if not no_opensearch else None
        keys = None if dry_run else tombstone_keys(settings)

        async def work(pool: Any) -> RetentionReport:
            return await apply_retention(
                pool,
                tenants=tenants or None,
                dry_run=dry_run,
                index=index,
                actor=actor(),
                progress=_progress,
                keys=keys,
            )

        try:
            report = run_with_pool(settings, work)
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
    @tenant_option
    @click.pass_context
    def hold_set(ctx: click.Context, sid: str, reason: str, tenant: str) -> None:
        """Put a session under legal hold."""
        from storage.retention import set_hold

        settings = get_settings(ctx)
        t = tenant
        sid = resolve_session_id(settings, t, sid)

        async def work(pool: Any) -> Any:
            return await set_hold(pool, t, sid, reason=reason, actor=actor())

        rec = run_with_pool(settings, work)
        click.echo(f"session {sid}: legal hold set by {rec.actor} at {rec.at.isoformat()}")

    @hold_group.command("release")
    @click.argument("sid")
    @click.option("--reason", required=True, help="Why (kept with the decision).")
    @tenant_option
    @click.pass_context
    def hold_release(ctx: click.Context, sid: str, reason: str, tenant: str) -> None:
        """Release a session's legal hold."""
        from storage.retention import release_hold

        settings = get_settings(ctx)
        t = tenant
        sid = resolve_session_id(settings, t, sid)
        keys = tombstone_keys(settings)

        async def work(pool: Any) -> Any:
            return await release_hold(pool, t, sid, reason=reason, actor=actor(), keys=keys)

        rec = run_with_pool(settings, work)
        click.echo(f"session {sid}: legal hold released by {rec.actor} at {rec.at.isoformat()}")

    @hold_group.command("list")
    @tenant_option
    @click.option("--history", "history_sid", default=None, metavar="SID", help="Show decisions.")
    @click.pass_context
    def hold_list(ctx: click.Context, tenant: str, history_sid: str | None) -> None:
        """Sessions under legal hold now (or one session's hold history)."""
        from storage.retention import hold_history, list_holds

        settings = get_settings(ctx)
        t = tenant

        async def work(pool: Any) -> Any:
            if history_sid:
                return await hold_history(pool, t, history_sid)
            return await list_holds(pool, t)

        rows = run_with_pool(settings, work)
        table = [("SID", "ACTION", "AT (UTC)", "BY", "REASON")]
        table += [(r.sid, r.action, _when(r.at), r.actor, r.reason) for r in rows]
        click.echo(_table(table))


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
