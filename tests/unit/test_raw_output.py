"""The raw export's fast path (storage.codec.raw_output) is byte for byte what joining the
frames would give, for any mix of streams, sizes and cut points."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.frameindex import pack_frames
from schemas.models import Frame, Stream
from storage.codec import raw_output
from tests.examples import examples

frames_st = st.lists(
    st.builds(
        Frame,
        st.integers(min_value=0, max_value=5_000),
        st.sampled_from(list(Stream)),
        st.binary(max_size=64),
    ),
    max_size=60,
).map(lambda fs: sorted(fs, key=lambda f: f.offset_ms))


@settings(max_examples=examples(400), deadline=None)
@given(frames=frames_st, from_ms=st.integers(min_value=0, max_value=5_500))
def test_raw_output_is_the_output_and_stderr_bytes_of_the_frames_from_the_cut(
    frames: list[Frame], from_ms: int
) -> None:
    payload = b"".join(f.data for f in frames)
    got = raw_output(pack_frames(frames), payload, from_ms=from_ms)
    kept = [f for f in frames if f.offset_ms >= from_ms]
    assert got.data == b"".join(f.data for f in kept if f.stream in (Stream.OUTPUT, Stream.STDERR))
    assert got.frames == len(kept)
    assert got.bytes_in == sum(len(f.data) for f in kept)
    assert list(got.errors) == [f for f in kept if f.stream is Stream.ERROR]


def test_an_index_that_does_not_cover_the_payload_is_refused() -> None:
    frames = [Frame(0, Stream.OUTPUT, b"abc")]
    with pytest.raises(ValueError, match="covers 3 bytes"):
        raw_output(pack_frames(frames), b"abcd")
