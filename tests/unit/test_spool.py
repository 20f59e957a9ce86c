"""Spool: round trip, torn tails truncated (never mis-read), order kept across segments."""

from __future__ import annotations

from pathlib import Path

from ingest.spool import (
    Spool,
    SpoolRecord,
    claim_abandoned,
    decode_records,
    encode_record,
    iter_records,
    list_segments,
    read_segment,
)


def recs(start: int, n: int, topic: str = "sv.chunks.v1") -> list[SpoolRecord]:
    return [
        SpoolRecord(i, topic, b"sid-%d" % (i % 3), b"\x00\xff v%d " % i + bytes([i]) * (i % 7))
        for i in range(start, start + n)
    ]


def test_round_trip_keeps_topic_key_value_bytes_and_order(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    written = [*recs(0, 50), SpoolRecord(50, "sv.events.v1", b"", b"{}")]
    for r in written:
        sp.append([r])
    sp.seal()
    assert list(iter_records(sp.dir)) == written


def test_torn_tail_is_truncated_and_earlier_records_survive(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append(recs(0, 10))
    (seg,) = sp.sealed_segments()
    good_size = seg.stat().st_size
    torn = encode_record(recs(10, 1)[0])
    for cut in (1, 5, 8, 20, len(torn) - 1):
        with open(seg, "ab") as f:
            f.write(torn[:cut])
        assert read_segment(seg) == recs(0, 10)
        assert seg.stat().st_size == good_size


def test_corrupted_body_is_detected_by_crc_not_misread(tmp_path: Path) -> None:
    blob = bytearray(b"".join(encode_record(r) for r in recs(0, 3)))
    blob[-3] ^= 0x40  # flip a bit inside the last record's value
    records, valid = decode_records(bytes(blob))
    assert records == recs(0, 2)
    assert valid < len(blob)


def test_segments_roll_and_read_back_in_lsn_order(tmp_path: Path) -> None:
    sp = Spool(tmp_path, segment_max_bytes=300)
    for r in recs(0, 40):
        sp.append([r])
    segs = sp.sealed_segments()
    assert len(segs) > 3
    assert [r.lsn for r in iter_records(sp.dir)] == list(range(40))


def test_put_back_of_older_records_sorts_before_newer_segments(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append(recs(10, 5))  # spooled while 0..9 were in flight
    sp.append(recs(0, 10))  # the in-flight batch failed and is put back
    sp.append(recs(15, 5))
    assert [r.lsn for r in iter_records(sp.dir)] == list(range(20))


def test_delete_segment_updates_size_and_close_removes_empty_dir(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append(recs(0, 5))
    assert sp.size_bytes > 0
    for seg in sp.sealed_segments():
        sp.delete_segment(seg)
    assert sp.size_bytes == 0
    sp.close()
    assert not sp.dir.exists()


def test_full_spool_refuses_appends(tmp_path: Path) -> None:
    import pytest

    from sessionvault.errors import SpoolError

    sp = Spool(tmp_path, max_bytes=200)
    with pytest.raises(SpoolError):
        sp.append(recs(0, 20))


def test_live_owner_directory_cannot_be_claimed_but_abandoned_one_can(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append(recs(0, 1))
    with claim_abandoned(sp.dir) as claimed:
        assert claimed is False
    sp.close(remove_if_empty=True)  # segment left: directory stays, lock released
    assert list_segments(sp.dir)
    with claim_abandoned(sp.dir) as claimed:
        assert claimed is True
