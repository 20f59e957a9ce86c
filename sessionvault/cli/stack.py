"""``sessionvault up / down / status``: the local stack from the command line."""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import TYPE_CHECKING, Any

import click
import orjson

from sessionvault.errors import StackError
from sessionvault.settings import Settings

if TYPE_CHECKING:
    # deploy.stack needs the `local` extra; imported inside the commands so that an install
    # without it still has a working CLI.
    from deploy.stack import LocalStack, StackStatus

# A short, non-interactive session with some colour and a pause, so replay shows timing.
DEMO_SCRIPT = (
    "printf '\\033[1;32msessionvault demo\\033[0m\\n'; uname -a; sleep 0.5; "
    "ls -la /; sleep 0.5; printf 'bytes are bytes: \\377\\376\\n'; echo done"
)


def _settings(ctx: click.Context) -> Settings:
    from sessionvault.cli.common import get_settings

    return get_settings(ctx)


def _echo(line: str) -> None:
    click.echo(line, err=True)


def _print_addresses(stack: LocalStack) -> None:
    addr = stack.addresses()
    click.echo(f"PostgreSQL  {addr['postgres']}")
    click.echo(f"Kafka       {addr['kafka']} ({stack.broker_storage} storage)")
    click.echo(
        f"OpenSearch  {addr['opensearch']}"
        if addr["opensearch"]
        else "OpenSearch  off: search answers from PostgreSQL"
        " (SESSIONVAULT_LOCAL_OPENSEARCH=1 starts it)"
    )
    click.echo(f"state       {stack.state_file}")
    click.echo(f"logs        {stack.logs}/")


def _run_demo(ctx: click.Context, stack: LocalStack) -> None:
    from deploy.stack import sessionvault_argv

    group = ctx.find_root().command
    if "record" not in getattr(group, "commands", {}):
        _echo("demo: `sessionvault record` is not available in this build; skipped")
        return
    sid = str(uuid.uuid4())
    _echo(f"recording a demo session ({sid}) ...")
    env = {
        **os.environ,
        "SESSIONVAULT_HOME": str(stack.home),
        "SESSIONVAULT_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "SESSIONVAULT_POSTGRES_DSN": stack.postgres_dsn,
        "SESSIONVAULT_OPENSEARCH_URL": stack.opensearch_url,
    }
    try:
        proc = subprocess.run(
            [*sessionvault_argv(), "record", "--sid", sid, "--", "sh", "-c", DEMO_SCRIPT],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"demo recording failed: {exc}") from exc
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    if proc.returncode != 0:
        raise StackError(f"demo recording exited with {proc.returncode}: {out.strip()[-500:]}")
    click.echo(f"demo session recorded: {sid}")
    if stack.is_running("worker-persist"):
        _echo("waiting for the persist worker to store it ...")
        if not stack.wait_for_session(_settings(ctx).tenant, sid, timeout_s=60):
            _echo(f"not stored after 60 s; check {stack.logs}/worker-persist.log")
    click.echo(f"replay it with:  sessionvault play {sid}")
    click.echo(
        "or in a browser:  sessionvault token create --tenant "
        f"{_settings(ctx).tenant} --scope read; sessionvault serve; open http://127.0.0.1:8470/ui/"
    )


@click.command("up")
@click.option("--demo", is_flag=True, help="Also record a short demo session.")
@click.option("--kafka-port", type=int, default=0, help="Broker port (default: previous/free).")
@click.option("--opensearch-port", type=int, default=0, help="OpenSearch port (default: free).")
@click.option("--no-workers", is_flag=True, help="Start only the servers.")
@click.pass_context
def up_cmd(
    ctx: click.Context, demo: bool, kafka_port: int, opensearch_port: int, no_workers: bool
) -> None:
    """Start the embedded local stack (PostgreSQL, Kafka-protocol broker, OpenSearch-compatible
    server, workers) under $SESSIONVAULT_HOME; idempotent."""
    from deploy.stack import LocalStack

    settings = _settings(ctx)
    stack = LocalStack(
        settings.home, kafka_port=kafka_port, opensearch_port=opensearch_port, echo=_echo
    )
    if stack.is_up():
        _echo(f"local stack already running in {stack.home}")
    else:
        _echo(f"starting the local stack in {stack.home}")
    stack.up(settings, workers=not no_workers)
    _print_addresses(stack)
    if demo:
        _run_demo(ctx, stack)


@click.command("down")
@click.pass_context
def down_cmd(ctx: click.Context) -> None:
    """Stop the local stack (data in PostgreSQL is kept; the broker's topics are not)."""
    from deploy.stack import LocalStack

    stack = LocalStack(_settings(ctx).home, echo=_echo)
    stopped = stack.down()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "local stack was not running")


def format_status(status: StackStatus) -> str:
    """The status as two small text tables."""
    lines = [f"{'server':<16} {'pid':>8}  {'alive':<5}  {'reachable':<9}  address / state"]
    for s in status.servers:
        where = s.address or s.state
        if s.state == "stalled":
            where = f"STALLED: {s.detail}"
        lines.append(
            f"{s.name:<16} {s.pid or '-':>8}  {'yes' if s.alive else 'no':<5}  "
            f"{'yes' if s.reachable else 'no':<9}  {where}"
        )
    lines.append("")
    if status.lag_error:
        lines.append(f"consumer lag: unavailable ({status.lag_error})")
    elif not status.lag:
        lines.append("consumer lag: no consumer group has committed offsets")
    else:
        lines.append(f"{'group':<20} {'topic':<24} {'committed':>10} {'end':>10} {'lag':>8}")
        for row in status.lag:
            lines.append(
                f"{row['group']:<20} {row['topic']:<24} {row['committed']:>10} "
                f"{row['end']:>10} {row['lag']:>8}"
            )
    if status.backlog:
        lines.append("")
        names = {"segment_queue": "sessions to render (segmenter)",
                 "detect_feed": "output batches to detect (detect)",
                 "index_pending": "stored batches to index (search)"}  # fmt: skip
        for key, n in status.backlog.items():
            lines.append(f"{names.get(key, key):<40} {n:>8}")
    if status.sinks:
        lines.append("")
        lines.append(
            f"{'siem sink':<16} {'type':<11} {'lag':>8} {'delivered':>10} {'failed':>7} "
            f"{'dead':>6}  last error"
        )
        for sk in status.sinks:
            lag = "?" if sk["lag"] is None else sk["lag"]
            lines.append(
                f"{sk['sink']:<16} {sk['type']:<11} {lag:>8} {sk['delivered']:>10} "
                f"{sk['failures']:>7} {sk['dead_letters']:>6}  {sk['last_error'][:80]}"
            )
    return "\n".join(lines)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Health of each local server and consumer lag per group and topic."""
    from deploy.stack import LocalStack

    stack = LocalStack(_settings(ctx).home)
    status = stack.status()
    if as_json:
        payload: dict[str, Any] = status.as_dict()
        click.echo(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_status(status))
    if not status.healthy:
        ctx.exit(1)


@click.command("migrate")
@click.option("--no-topics", is_flag=True, help="Only PostgreSQL (topics are managed elsewhere).")
@click.pass_context
def migrate_cmd(ctx: click.Context, no_topics: bool) -> None:
    """Apply the PostgreSQL migrations and create the Kafka topics (idempotent: what the
    Kubernetes migrations Job and the compose `init` service run before the workers)."""
    import asyncio

    from sessionvault.cli.common import get_settings, postgres_dsn
    from storage import pg

    settings = get_settings(ctx)
    applied = asyncio.run(pg.migrate(postgres_dsn(settings)))
    click.echo(f"migrations applied: {', '.join(applied) or 'none (up to date)'}", err=True)
    if not no_topics:
        from ingest.topics import ensure_topics

        ensure_topics(settings)
        topics = (settings.topic_chunks, settings.topic_events, settings.topic_deadletter)
        click.echo(f"topics: {', '.join(topics)}", err=True)


def register(main: click.Group) -> None:
    main.add_command(migrate_cmd)
    main.add_command(up_cmd)
    main.add_command(down_cmd)
    main.add_command(status_cmd)
