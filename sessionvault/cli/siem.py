"""SIEM commands: ``worker siem --sink NAME`` (one sink per process) and ``siem sinks``."""

from __future__ import annotations

import click

from sessionvault.cli.common import get_settings, run_async_worker, status_every_option, subgroup


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
        tag = f"siem[{config.name}]"
        last = {"delivered": 0}

        async def status_line(worker: SinkWorker, seconds: float) -> str:
            s = worker.stats
            rate = (s.delivered - last["delivered"]) / seconds
            last["delivered"] = s.delivered
            return (
                f"{tag}: {rate:,.0f} events/s | total {s.delivered} delivered, {s.skipped} "
                f"skipped, {s.failures} failed tries, {s.dead_letters} dead letters"
            )

        run_async_worker(
            make=lambda: SinkWorker(settings, config),
            run=lambda worker, stop: worker.run(stop=stop),
            banner=f"{tag}: {config.type} ({config.format}) consuming {settings.topic_events}"
            f" as group {config.group_id} (Ctrl-C or SIGTERM to stop)",
            stopped=lambda worker: (
                f"{tag}: stopped after {worker.stats.delivered} delivered events"
            ),
            status_line=status_line,
            status_every=status_every,
            home=settings.home,
            name=f"worker-siem-{config.name}",
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
