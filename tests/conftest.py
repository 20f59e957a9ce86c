"""Shared test configuration.

Tests under tests/integration/ are marked ``integration`` automatically (they may also say so
explicitly); their server fixtures live in tests/integration/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionvault.settings import Settings, load_settings

_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def offline_settings(tmp_path: Path) -> Settings:
    """Settings for pure tests: home and spool in tmp_path, no server addresses at all."""
    home = tmp_path / "home"
    return load_settings(
        env={"SESSIONVAULT_HOME": str(home)}, home=home, spool_dir=tmp_path / "spool"
    )
