"""The ``sessionvault`` command: a thin click layer over the library API.

Every command module is imported here by name, so a missing module or an import cycle fails
at start-up instead of silently dropping its commands. Errors from the library print as one
clear line (no traceback) and exit non-zero; set ``SESSIONVAULT_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import logging

import click

from sessionvault import __version__
from sessionvault.cli import (
    api,
    detect,
    evidence,
    federation,
    ingest,
    replay,
    retention,
    search,
    siem,
    stack,
)
from sessionvault.cli.common import Group, get_settings


@click.group(cls=Group)
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


for _module in (
    stack,
    ingest,
    replay,
    evidence,
    federation,
    api,
    search,
    retention,
    siem,
    detect,
):
    _module.register(main)
