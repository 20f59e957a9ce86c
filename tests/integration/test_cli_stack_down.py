"""Commands run against a stopped local stack say so in one line, whatever they do."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest

from deploy.stack import free_port
from sessionvault.cli import STACK_DOWN
from tests.integration.import_support import SESSIONVAULT

COMMANDS = [
    ["sessions"],
    ["search", "rm -rf"],
    ["export", "some-sid", "--format", "raw"],
    ["play", "some-sid"],
    ["verify", "some-sid"],
    ["kube-timeline", "--since", "24h"],
    ["alerts"],
]


def stopped_stack(home: Path) -> dict[str, str]:
    """A home whose stack.json is what `sessionvault down` leaves: addresses of servers that
    no longer listen, ``running: false``; the environment names no server."""
    pg, kafka, search = free_port(), free_port(), free_port()
    home.mkdir(parents=True, exist_ok=True)
    (home / "stack.json").write_bytes(
        orjson.dumps(
            {
                "pids": {},
                "created": {},
                "logs": {},
                "ports": {"kafka": kafka, "opensearch": search},
                "postgres_dsn": f"postgresql://sessionvault@127.0.0.1:{pg}/sessionvault",
                "kafka_bootstrap": f"127.0.0.1:{kafka}",
                "opensearch_url": f"http://127.0.0.1:{search}",
                "running": False,
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONVAULT_")}
    env["SESSIONVAULT_HOME"] = str(home)
    return env


@pytest.mark.parametrize("args", COMMANDS, ids=[a[0] for a in COMMANDS])
def test_a_command_on_a_stopped_local_stack_says_run_sessionvault_up(
    tmp_path: Path, args: list[str]
) -> None:
    env = stopped_stack(tmp_path / "home")
    proc = subprocess.run(
        [SESSIONVAULT, *args], env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.count("\n") == 1, err  # one line, no traceback
    assert err.startswith(f"sessionvault: error: {STACK_DOWN} ("), err


def test_servers_named_in_the_environment_get_their_own_error_not_the_stack_hint(
    tmp_path: Path,
) -> None:
    env = stopped_stack(tmp_path / "home")
    env["SESSIONVAULT_POSTGRES_DSN"] = f"postgresql://x@127.0.0.1:{free_port()}/x"
    proc = subprocess.run([SESSIONVAULT, "sessions"], env=env, capture_output=True, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "cannot connect to PostgreSQL" in err
    assert "local stack" not in err
