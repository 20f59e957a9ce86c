"""SIEM commands: ``worker siem --sink NAME`` (one sink per process) and ``siem sinks``."""

from __future__ import annotations

import click

from sessionvault.cli.common import (
    StatusFields,
    get_settings,
    run_worker_command,
    status_every_option,
    subgroup,
)


def register(main: click.Group) -> None:
    """Add ``worker siem`` and ``siem sinks`` to the ``sessionvault`` group."""
    worker_group = subgroup(main, "worker", "Long-running Kafka workers.")

    @worker_group.command("siem")
    @click.option("--sink", "sink_name", required=True, help="Sink name from the SIEM config.")
    @click.option(
        "--config",
        "config_path",
        default=None,
        help="SIEM configuration file (default: SESSIONVAULT_SIEM_CONFIG).",
    )
    @status_every_option
    @click.pass_context
    def siem_worker_cmd(
        ctx: click.Context, sink_name: str, config_path: str | None, status_every: float
    ) -> None:
        """Forward events to one SIEM sink (consumer group siem-NAME) until SIGTERM/SIGINT."""
        from siem.config import load_siem_config
        from siem.worker import SinkWorker

        settings = get_settings(ctx)
        config = load_siem_config(settings, config_path).sink(sink_name)
        run_worker_command(
            settings,
            tag=f"siem[{config.name}]",
            name=f"worker-siem-{config.name}",
            make=lambda: SinkWorker(settings, config),
            banner=f"{config.type} ({config.format}) consuming {settings.topic_events} as group "
            f"{config.group_id} (Ctrl-C or SIGTERM to stop)",
            fields=StatusFields(
                rates=(("events/s", "delivered", 1),),
                totals=(
                    ("delivered", "delivered"),
                    ("skipped", "skipped"),
                    ("failures", "failed tries"),
                    ("dead_letters", "dead letters"),
                ),
                stopped=("delivered", "delivered events"),
            ),
            status_every=status_every,
        )

    siem_group = subgroup(main, "siem", "SIEM sinks.")

    @siem_group.command("sinks")
    @click.option("--config", "config_path", default=None, help="SIEM configuration file.")
    @click.pass_context
    def sinks_cmd(ctx: click.Context, config_path: str | None) -> None:
        """List the configured sinks (secrets never shown) with their last known counters."""
        from siem.config import load_siem_config
        from siem.state import read_states

        settings = get_settings(ctx)
        config = load_siem_config(settings, config_path)
        states = {s["sink"]: s for s in read_states(settings.home)}
        click.echo(
            f"{'sink':<16} {'type':<11} {'format':<7} {'group':<22} {'delivered':>10} "
            f"{'failed':>7} {'dead':>6}"
        )
        for sink in config.sinks:
            st = states.get(sink.name, {})
            click.echo(
                f"{sink.name:<16} {sink.type:<11} {sink.format:<7} {sink.group_id:<22} "
                f"{st.get('delivered', '-'):>10} {st.get('failures', '-'):>7} "
                f"{st.get('dead_letters', '-'):>6}"
            )


__all__ = ["register"]
