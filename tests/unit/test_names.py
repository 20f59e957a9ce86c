"""One tenant naming rule, enforced the same way by every front end."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sessionvault.cli import main
from sessionvault.names import is_tenant_name


@pytest.mark.parametrize("name", ["acme", "a", "t-0123", "Acme.prod_2", "x" * 63])
def test_valid_tenant_names(name: str) -> None:
    assert is_tenant_name(name)


@pytest.mark.parametrize(
    "name", ["", "-acme", ".acme", "a b", "a/b", "x" * 64, "ünï", "a\nb", None, 7]
)
def test_invalid_tenant_names(name: object) -> None:
    assert not is_tenant_name(name)


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "x"],
        ["sessions"],
        ["export", "abcd"],
        ["retention", "unset"],
        ["hold", "list"],
        ["kube-timeline"],
    ],
)
def test_every_command_refuses_a_bad_tenant_in_one_line_before_touching_a_server(
    argv: list[str], tmp_path: object
) -> None:
    result = CliRunner().invoke(
        main,
        [*argv, "--tenant", "a/b"],
        env={
            "SESSIONVAULT_HOME": str(tmp_path),
            "SESSIONVAULT_POSTGRES_DSN": "postgresql://x@127.0.0.1:9/x",
        },
    )
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("sessionvault: error: --tenant 'a/b': use 1-63 of")
