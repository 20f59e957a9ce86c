"""Frame indexes are stored compressed when that is smaller (storage.codec.store_index) and
read back exactly (load_index); a raw index, as written before, reads as it is."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.frameindex import pack_frames
from schemas.models import Frame, Stream
from storage.codec import INDEX_ZSTD_MARK, load_index, store_index
from tests.examples import examples

frames = st.lists(
    st.builds(
        Frame,
        st.integers(min_value=0, max_value=2**63 - 1),
        st.sampled_from(list(Stream)),
        st.binary(max_size=3),
    ),
    max_size=300,
)


@settings(max_examples=examples(500), deadline=None)
@given(fs=frames)
def test_a_stored_index_reads_back_exactly_and_a_raw_one_is_never_taken_for_compressed(
    fs: list[Frame],
) -> None:
    index = pack_frames(fs)
    stored = store_index(index)
    assert load_index(stored) == index
    assert len(stored) <= len(index)
    # Offsets are at most 2^63-1, so a raw index never starts with the marker byte.
    assert not index.startswith(INDEX_ZSTD_MARK)
    assert load_index(index) == index


def test_a_keystroke_heavy_index_is_stored_much_smaller() -> None:
    fs = [Frame(1000 + 150 * i, Stream.INPUT if i % 2 else Stream.OUTPUT, b"k") for i in range(240)]
    index = pack_frames(fs)
    assert len(store_index(index)) * 3 < len(index)
