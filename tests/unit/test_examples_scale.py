"""The property tests' example counts scale down for the injected-date runs, never to zero."""

from __future__ import annotations

import pytest

from tests.examples import FLOOR, examples


def test_full_depth_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SVTEST_EXAMPLES_SCALE", raising=False)
    assert examples(1500) == 1500
    assert examples(3) == 3


def test_a_small_scale_keeps_at_least_the_floor_and_never_adds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SVTEST_EXAMPLES_SCALE", "0.1")
    assert examples(3000) == 300
    assert examples(150) == FLOOR
    assert examples(10) == 10


def test_a_scale_above_one_deepens_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVTEST_EXAMPLES_SCALE", "2")
    assert examples(500) == 1000


@pytest.mark.parametrize("bad", ["0", "-1", "lots", "nan"])
def test_a_scale_that_is_not_a_positive_number_is_refused(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("SVTEST_EXAMPLES_SCALE", bad)
    with pytest.raises(ValueError, match="SVTEST_EXAMPLES_SCALE"):
        examples(100)
