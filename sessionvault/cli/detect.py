"""Detection commands: ``worker detect``, ``rules list`` and ``rules test FILE EVENTS``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import orjson

from sessionvault.cli.common import (
    StatusFields,
    get_settings,
    group_option,
    lag_text,
    resolve_session_id,
    run_worker_command,
    status_every_option,
    subgroup,
)
from sessionvault.errors import ConfigError
from sessionvault.settings import Settings, require


def register(main: click.Group) -> None:
    """Add ``worker detect`` and the ``rules`` group to the ``sessionvault`` group."""
    _register_worker(main)
    _register_rules(main)


def _register_worker(main: click.Group) -> None:
    worker_group = subgroup(main, "worker", "Long-running Kafka workers.")

    @worker_group.command("detect")
    @group_option("detect")
    @status_every_option
    @click.pass_context
    def detect_cmd(ctx: click.Context, group_id: str, status_every: float) -> None:
        """Run the Sigma rules over the events topic and the segmenter's terminal output and
        produce alert events, until SIGTERM/SIGINT (rules: starter set +
        SESSIONVAULT_SIGMA_RULES)."""
        from siem.detect import DetectWorker

        settings = get_settings(ctx)
        run_worker_command(
            settings,
            tag=f"detect[{group_id}]",
            name="worker-detect",
            make=lambda: DetectWorker(settings, group_id=group_id),
            banner=lambda worker: (
                f"{len(worker.engine.rule_ids)} rules over "
                f"{settings.topic_events} and terminal output (Ctrl-C or SIGTERM to stop)"
            ),
            fields=StatusFields(
                rates=(("rec/s", "records", 1),),
                totals=(
                    ("records", "records"),
                    ("evaluated", "evaluated"),
                    ("output_segments", "output lines"),
                    ("alerts", "alerts"),
                ),
            ),
            status_every=status_every,
            extra=lag_text,
            stopped=lambda worker: (
                f"stopped after {worker.stats.records} records, "
                f"{worker.stats.alerts} alerts ({worker.stats.output_segments} output lines)"
            ),
        )


def _rule_files(sources: list[Path]) -> list[Path]:
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += sorted(src.glob("*.yml")) + sorted(src.glob("*.yaml"))
        else:
            files.append(src)
    return files


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSON-lines file of events: sessionvault events, raw
    Kubernetes audit Events, or EventLists (expanded to their items)."""
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not JSON: {exc}") from exc
            if isinstance(value, dict) and value.get("kind") == "EventList":
                value = value.get("items") or []
            for item in value if isinstance(value, list) else [value]:
                if not isinstance(item, dict):
                    raise ConfigError(f"{path}:{n}: expected a JSON object")
                yield n, item


def _stored_session(settings: Settings, sid: str) -> list[dict[str, Any]]:
    """The records of a stored session of ``settings.tenant`` (events and output lines)."""
    import asyncio

    from storage import pg
    from storage.detect_feed import session_records

    require(settings, "postgres_dsn")

    async def load() -> list[dict[str, Any]]:
        conn = await pg.connect(settings.postgres_dsn.get())
        try:
            return [rec for _, rec in await session_records(conn, settings.tenant, sid)]
        except Exception as exc:
            raise pg.translate(exc, f"cannot read session {sid}") from exc
        finally:
            await conn.close()

    return asyncio.run(load())


def _register_rules(main: click.Group) -> None:
    rules_group = subgroup(main, "rules", "Sigma detection rules.")

    @rules_group.command("list")
    @click.pass_context
    def list_cmd(ctx: click.Context) -> None:
        """The rules the detect worker loads (starter set + SESSIONVAULT_SIGMA_RULES)."""
        from sigma.correlations import SigmaCorrelationRule

        from siem.detect import build_engine, rule_sources
        from siem.rules import load_rules

        settings = get_settings(ctx)
        build_engine(settings)  # the whole set must compile, as in the worker
        click.echo(f"{'id':<36}  {'level':<8} {'type':<11} {'title':<50} file")
        for f in _rule_files(rule_sources(settings)):
            for rule in load_rules([f]).rules:
                kind = "correlation" if isinstance(rule, SigmaCorrelationRule) else "rule"
                level = rule.level.name.lower() if rule.level is not None else "-"
                rid = str(rule.id or rule.name or "-")
                click.echo(f"{rid:<36}  {level:<8} {kind:<11} {rule.title[:50]:<50} {f}")

    @rules_group.command("test")
    @click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
    @click.option(
        "--session",
        "sessions",
        multiple=True,
        metavar="SID",
        help="Also a stored session of your tenant: its audit events and rendered "
        "output lines, as the detect worker sees them (repeatable).",
    )
    @click.option("--with-starter", is_flag=True, help="Also load the starter rule set.")
    @click.option(
        "--business-hours",
        default=None,
        help='e.g. "Europe/Berlin 08-18 mon-fri" (default: SESSIONVAULT_BUSINESS_HOURS).',
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the alert events as JSON lines.")
    @click.pass_context
    def test_cmd(
        ctx: click.Context,
        paths: tuple[Path, ...],
        sessions: tuple[str, ...],
        with_starter: bool,
        business_hours: str | None,
        as_json: bool,
    ) -> None:
        """Evaluate rules against records and print every alert; nothing is produced or stored.

        PATHS are rules (a directory, or a .yml/.yaml file) and records (any other file: JSON
        lines, evaluated in file order), in any order; --with-starter adds the starter rules
        (then no rules path is needed), --session adds a stored session.

        \b
          sessionvault rules test my-rules/ events.jsonl
          sessionvault rules test --with-starter --session SID
        """
        from siem.detect_config import parse_business_hours
        from siem.rules import STARTER_DIR, SigmaEngine

        settings = get_settings(ctx)
        hours = parse_business_hours(
            settings.business_hours if business_hours is None else business_hours
        )
        rule_paths, event_files = split_rule_paths(paths)
        sources = [STARTER_DIR, *rule_paths] if with_starter else rule_paths
        if not sources:
            raise click.UsageError("give a rules file or directory, or --with-starter")
        if not event_files and not sessions:
            raise click.UsageError("give a file of records (JSON lines), --session SID, or both")
        engine = SigmaEngine.from_sources(sources, business_hours=hours)
        inputs: list[tuple[str, dict[str, Any]]] = []
        for events in event_files:
            inputs += [(f"{events.name}:{n}", rec) for n, rec in iter_records(events)]
        for sid in (resolve_session_id(settings, settings.tenant, s) for s in sessions):
            got = _stored_session(settings, sid)
            if not got:
                raise ConfigError(f"session {sid}: nothing stored for tenant {settings.tenant}")
            inputs += [(f"session {sid}", rec) for rec in got]
        alerts = 0
        for where_from, rec in inputs:
            for alert in engine.evaluate(rec):
                alerts += 1
                if as_json:
                    click.echo(orjson.dumps(alert).decode())
                    continue
                where = f" replay: {alert['replay']}" if alert.get("replay") else ""
                click.echo(
                    f"{where_from}: {alert['level'].upper()} {alert['title']} "
                    f"[{alert['rule_id']}] on {alert['matched_event']} "
                    f"{alert['matched_uid']}{where}"
                )
        click.echo(
            f"{len(inputs)} records, {alerts} alerts, {len(engine.rule_ids)} rules", err=True
        )


RULE_SUFFIXES = (".yml", ".yaml")


def split_rule_paths(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(rule sources, record files) of ``rules test``'s PATHS: directories and ``.yml`` /
    ``.yaml`` files are rules, every other file holds records. Order is kept."""
    rules = [p for p in paths if p.is_dir() or p.suffix.lower() in RULE_SUFFIXES]
    return rules, [p for p in paths if p not in rules]


__all__ = ["RULE_SUFFIXES", "iter_records", "register", "split_rule_paths"]
