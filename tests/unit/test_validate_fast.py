"""The plain-Python schema check (schemas.validate._fast_check) never accepts what the JSON
Schema validator rejects, and accepts ordinary valid events (so the fast path is the one taken)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.validate import _fast_check, _validator, load_schema
from tests.examples import examples

FIELDS = [*load_schema("event")["properties"], "extra", "addr.local"]
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.floats(allow_nan=False, allow_infinity=False, width=16),
    st.text(max_size=4),
    st.text(min_size=60, max_size=140),
    st.sampled_from(["acme", "a-b.c_d", "-bad", "x" * 63, "x" * 64, "2026-11-20T10:00:00Z", ""]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
events = st.dictionaries(st.sampled_from(FIELDS), values, max_size=len(FIELDS))


def _valid(**extra: Any) -> dict[str, Any]:
    return {
        "sv_version": 1,
        "tenant": "acme",
        "event": "session.command",
        "uid": "u-1",
        "time": "2026-11-20T10:00:00.123Z",
        "ei": 3,
        "user": "alice",
        **extra,
    }


@settings(max_examples=examples(3000), deadline=None)
@given(data=events, base=st.booleans())
def test_the_fast_check_accepts_only_what_the_validator_accepts(
    data: dict[str, Any], base: bool
) -> None:
    check = _fast_check("event")
    assert check is not None
    candidate = {**_valid(), **data} if base else data
    if check(candidate):
        assert list(_validator("event").iter_errors(candidate)) == [], candidate


def test_ordinary_events_take_the_fast_path_and_broken_ones_do_not() -> None:
    check = _fast_check("event")
    assert check is not None
    assert check(_valid())
    assert check(_valid(**{"addr.remote": "10.0.0.1:22", "response_code": 200, "extra": [1]}))
    for broken in (
        {"sv_version": 2},
        {"tenant": "-x"},
        {"ei": -1},
        {"ei": 1.5},
        {"uid": ""},
        {"code": "x" * 33},
    ):
        assert not check(_valid(**broken)), broken
    assert not check({k: v for k, v in _valid().items() if k != "uid"})
