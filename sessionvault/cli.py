"""The ``sessionvault`` command: a thin click layer over the library API.

Errors from the library print as one clear line (no traceback) and exit non-zero; set
``SESSIONVAULT_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from sessionvault import __version__
from sessionvault.errors import SessionVaultError
from sessionvault.settings import Settings, load_settings


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SessionVaultError as exc:
            if os.environ.get("SESSIONVAULT_DEBUG"):
                raise
            click.echo(f"sessionvault: error: {exc}", err=True)
            sys.exit(2 if exc.retriable else 1)
        except KeyboardInterrupt:
            click.echo("sessionvault: interrupted", err=True)
            sys.exit(130)


def get_settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    if not isinstance(settings, Settings):
        settings = load_settings()
        ctx.obj = settings
    return settings


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="sessionvault")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Session recording and audit log pipeline."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )


@main.command("config")
@click.pass_context
def config_cmd(ctx: click.Context) -> None:
    """Print the effective settings (secrets redacted)."""
    import orjson

    click.echo(orjson.dumps(get_settings(ctx).public_dict(), option=orjson.OPT_INDENT_2).decode())


# Commands are registered by their modules' `register(main)` so each area owns its CLI code.
def _register_all() -> None:
    import importlib

    for mod in (
        "deploy.cli",
        "ingest.cli",
        "replay.cli",
        "api.cli",
        "api.cli_search",
        "siem.cli",
        "siem.cli_detect",
    ):
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            continue
        module.register(main)


_register_all()
