"""The command line is one package whose modules are imported by name: every command exists at
start-up, and every worker the local stack starts is a command."""

from __future__ import annotations

import pkgutil

import click

import sessionvault.cli
from deploy.stack import WORKERS
from sessionvault.cli.main import main


def test_every_cli_module_registers_commands_and_none_is_skipped() -> None:
    modules = {m.name for m in pkgutil.iter_modules(sessionvault.cli.__path__)}
    assert modules >= {"stack", "ingest", "replay", "api", "search", "retention", "siem", "detect"}
    names = set(main.commands)
    expected = {
        "up", "down", "status", "record", "import", "export", "play", "sessions", "verify",
        "serve", "token", "search", "alerts", "retention", "hold", "worker", "rules",
        "kube-timeline", "reindex", "deadletter", "spool", "dict", "siem", "config",
    }  # fmt: skip
    assert expected <= names


def test_every_worker_the_local_stack_starts_is_a_command() -> None:
    for path in WORKERS:
        cmd: click.Command | None = main
        for part in path:
            assert isinstance(cmd, click.Group), path
            cmd = cmd.commands.get(part)
        assert cmd is not None, f"`sessionvault {' '.join(path)}` does not exist"
