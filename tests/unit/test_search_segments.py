"""Unit tests of the searchable terminal text: replay.text.TimedTextRenderer (per-character
times) and replay.segments.render_session (segments, state between batches)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import orjson
import pytest

from replay.segments import SessionText, render_session
from replay.text import TimedTextRenderer, render_text
from schemas.models import GENESIS_HASH, Chunk, Frame, Stream
from storage.search.model import (
    SEGMENT_MAX_CHARS,
    SegmentRow,
    decode_times,
    encode_times,
    match_offset_ms,
    norm,
)

STARTED_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z

# -- TimedTextRenderer -----------------------------------------------------------------------


Line = tuple[str, list[int]]


def _feed_all(writes: Sequence[tuple[int, bytes]], max_line_chars: int = 64 * 1024) -> list[Line]:
    r = TimedTextRenderer(max_line_chars=max_line_chars)
    lines: list[Line] = []
    for off, data in writes:
        lines += r.feed_at(data, off)
    return lines + r.finish_lines()


def test_each_character_carries_the_offset_of_the_write_that_put_it_there() -> None:
    lines = _feed_all([(100, b"ab"), (250, b"c"), (900, b"\r\n"), (1000, b"next\n")])
    assert lines == [("abc", [100, 100, 250]), ("next", [1000] * 4)]


def test_colour_escapes_take_no_characters_and_no_times() -> None:
    lines = _feed_all([(5, b"\x1b[01;32muser@h\x1b[00m:\x1b[01;34m~\x1b[00m$ "), (70, b"ls\r\n")])
    assert lines == [("user@h:~$ ls", [5] * 10 + [70, 70])]


def test_carriage_return_overwrite_takes_the_overwriting_writes_time() -> None:
    lines = _feed_all([(0, b"12345"), (300, b"\r"), (500, b"ab"), (800, b"\n")])
    assert lines == [("ab345", [500, 500, 0, 0, 0])]


def test_progress_bar_redrawn_with_cr_keeps_only_the_last_state_and_its_times() -> None:
    writes = [(i * 100, f"\r{i * 10:3d}%".encode()) for i in range(11)] + [(1200, b" done\n")]
    lines = _feed_all(writes)
    assert lines == [("100% done", [1000] * 4 + [1200] * 5)]


@pytest.mark.parametrize("erase", [b"\b \b", b"\b\x1b[K"], ids=["blank", "erase-eol"])
def test_backspace_correction_leaves_the_fixed_command_with_the_fix_time(erase: bytes) -> None:
    writes = [(i * 1000, ch.encode()) for i, ch in enumerate("rm -rg")]
    writes += [(6000, erase), (7000, b"f"), (8000, b"\r\n")]
    [(text, times)] = _feed_all(writes)
    assert text == "rm -rf"
    assert times == [0, 1000, 2000, 3000, 4000, 7000]
    # The hit offset of "rm -rf" is when its last character (the corrected f) appeared.
    assert match_offset_ms(text, _rle(times), [norm("RM -RF")]) == 7000


def test_trailing_blanks_are_dropped_with_their_times() -> None:
    assert _feed_all([(1, b"ab"), (2, b"   "), (3, b"\n")]) == [("ab", [1, 1])]


def test_cursor_movement_padding_gets_the_time_it_was_written() -> None:
    # CSI 5 G: column 5; the gap is padded with blanks written at that time.
    assert _feed_all([(10, b"ab"), (20, b"\x1b[5Gx\n")]) == [("ab  x", [10, 10, 20, 20, 20])]


def test_delete_and_insert_characters_keep_times_aligned_with_text() -> None:
    # "abcdef", cursor to column 2, delete 2 chars (P), insert 1 blank (@), write "Z".
    lines = _feed_all([(1, b"abcdef"), (2, b"\x1b[3G\x1b[2P"), (3, b"\x1b[1@"), (4, b"Z\n")])
    assert lines == [("abZef", [1, 1, 4, 1, 1])]


def test_lines_longer_than_the_limit_are_split_with_their_times() -> None:
    writes = [(i, b"x") for i in range(4500)]
    lines = _feed_all(writes, max_line_chars=SEGMENT_MAX_CHARS)
    assert [len(t) for t, _ in lines] == [2000, 2000, 500]
    assert lines[0][1] == list(range(0, 2000))
    assert lines[1][1] == list(range(2000, 4000))
    assert lines[2][1] == list(range(4000, 4500))


def test_finish_flushes_the_unterminated_last_line() -> None:
    r = TimedTextRenderer()
    assert r.feed_at(b"one\r\ntwo", 7) == [("one", [7, 7, 7])]
    assert r.feed_at(b"!", 9) == []
    assert r.finish_lines() == [("two!", [7, 7, 7, 9])]
    assert r.finish_lines() == []


def test_state_round_trip_mid_escape_and_mid_utf8_continues_identically() -> None:
    data = "\x1b[01;31mGrüße 中文\x1b[0m ok\r\n".encode()
    for cut in range(1, len(data)):
        r = TimedTextRenderer()
        first = r.feed_at(data[:cut], 10)
        r2 = TimedTextRenderer.from_state(orjson.loads(orjson.dumps(r.state())))
        rest = r2.feed_at(data[cut:], 20) + r2.finish_lines()
        [(text, times)] = first + rest
        assert text == "Grüße 中文 ok", cut
        assert len(times) == len(text)


def test_timed_lines_are_the_lines_of_the_plain_text_export() -> None:
    rng = random.Random(7)
    writes = _session_writes(rng)
    timed = [t for t, _ in _feed_all(writes)]
    assert "\n".join(timed) + "\n" == render_text(b"".join(d for _, d in writes))


# -- render_session --------------------------------------------------------------------------


def _rle(times: Sequence[int]) -> tuple[int, ...]:
    return encode_times(times)


def _session_writes(rng: random.Random) -> list[tuple[int, bytes]]:
    """A realistic session as (offset_ms, bytes) writes: coloured prompts, keystroke echoes
    with backspace corrections, UTF-8 and escape-laden output, CR progress, a long line,
    blank lines, and an unterminated last line."""
    out: list[tuple[int, bytes]] = []
    off = 0
    prompt = "\x1b[01;32mørjan@web-1\x1b[00m:\x1b[01;34m~\x1b[00m$ ".encode()
    commands = ["ls -la /tmp", "rm -rf /tmp/x", "echo 'Grüße 中文 100%_done'", "make"]
    for cmd in commands:
        off += rng.randint(100, 3000)
        out.append((off, prompt))
        for ch in cmd:
            off += rng.randint(50, 1500)
            out.append((off, ch.encode()))
            if rng.random() < 0.2:  # a typo, then its correction
                off += rng.randint(50, 500)
                out.append((off, b"q"))
                off += rng.randint(50, 500)
                out.append((off, rng.choice([b"\b \b", b"\b\x1b[K"])))
        off += rng.randint(50, 800)
        out.append((off, b"\r\n"))
        for i in range(rng.randint(1, 4)):
            off += rng.randint(1, 200)
            out.append((off, f"\x1b[33mline {i}\x1b[0m: ok ✓\r\n".encode()))
        off += 5
        out.append((off, b"\r\n"))  # a blank line: no segment
    for pct in range(0, 101, 25):
        off += 100
        out.append((off, f"\rprogress {pct:3d}%".encode()))
    out.append((off + 1, b"\r\n"))
    off += 10
    out.append((off, b"y" * 4321 + b"\r\n"))
    off += 10
    out.append((off, b"\x1b]0;title\x07logout"))  # no line feed: flushed by the final chunk
    return out


def _chunk(seq: int, frames: Sequence[Frame], final: bool = False) -> Chunk:
    return Chunk("acme", "sid-1", seq, tuple(frames), GENESIS_HASH, GENESIS_HASH, final=final)


def _ctx(**kw: object) -> SessionText:
    base: dict[str, object] = {
        "tenant": "acme",
        "sid": "sid-1",
        "started_us": STARTED_US,
        "user": "ørjan",
        "login": "root",
        "server_id": "web-1",
        "cluster_name": "prod-eu",
        "kubernetes_cluster": "",
    }
    base.update(kw)
    return SessionText(**base)  # type: ignore[arg-type]


def _cut_frames(writes: Sequence[tuple[int, bytes]], rng: random.Random) -> list[Frame]:
    """Each write cut at random points (inside escapes and UTF-8 sequences too) into frames
    with the write's offset: the same bytes at the same times."""
    frames = []
    for off, data in writes:
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 3))))
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            frames.append(Frame(off, Stream.OUTPUT, data[a:b]))
    return frames


def _chunks(frames: Sequence[Frame], rng: random.Random) -> list[Chunk]:
    """Chunk 0 without frames, frames grouped at random, the last chunk final."""
    out = [_chunk(0, [])]
    i = 0
    while i < len(frames):
        n = rng.randint(1, 40)
        out.append(_chunk(len(out), frames[i : i + n]))
        i += n
    last = out[-1]
    out[-1] = _chunk(last.seq, last.frames, final=True)
    return out


def _render_in_batches(chunks: Sequence[Chunk], rng: random.Random) -> list[SegmentRow]:
    """Render like the persist worker: batches of chunks, state stored between them."""
    ctx = _ctx()
    segments: list[SegmentRow] = []
    i = 0
    while i < len(chunks):
        n = rng.randint(1, 6)
        batch = list(chunks[i : i + n])
        rng.shuffle(batch)  # a batch's order is not seq order
        done = render_session(ctx, batch)
        segments += done.segments
        ctx = _ctx(state=done.state, seg_next=done.seg_next, text_seq=done.text_seq)
        i += n
    assert ctx.state is None, "the final chunk flushes everything"
    return segments


def test_segments_are_identical_whatever_the_frame_chunk_and_batch_boundaries() -> None:
    writes = _session_writes(random.Random(1))
    one_chunk = [_chunk(0, [Frame(o, Stream.OUTPUT, d) for o, d in writes], final=True)]
    reference = render_session(_ctx(), one_chunk).segments
    assert len(reference) > 10
    for seed in range(40):
        rng = random.Random(seed)
        chunks = _chunks(_cut_frames(writes, rng), rng)
        assert _render_in_batches(chunks, rng) == reference, f"seed {seed}"


def test_segments_carry_text_times_ids_and_the_sessions_who_and_where() -> None:
    writes = _session_writes(random.Random(2))
    done = render_session(
        _ctx(), [_chunk(0, [Frame(o, Stream.OUTPUT, d) for o, d in writes], final=True)]
    )
    texts = [g.text for g in done.segments]
    plain = [line for line in render_text(b"".join(d for _, d in writes)).split("\n") if line]
    # Same lines as the text export, long ones split at the segment limit.
    assert "".join(texts) == "".join(plain)
    assert max(len(t) for t in texts) == SEGMENT_MAX_CHARS
    assert "rm -rf /tmp/x" in texts[3]
    assert texts[-1] == "logout"
    assert [g.seg_no for g in done.segments] == list(range(len(texts)))
    for g in done.segments:
        times = decode_times(g.times)
        assert len(times) == len(g.text)
        assert (g.start_ms, g.end_ms) == (min(times), max(times))
        assert g.time_us == STARTED_US + g.start_ms * 1000
        assert (g.tenant, g.sid, g.user, g.login, g.server_id, g.cluster_name) == (
            "acme",
            "sid-1",
            "ørjan",
            "root",
            "web-1",
            "prod-eu",
        )
        assert g.text_norm == g.text.casefold()
    assert done.state is None
    assert done.seg_next == len(texts)
    assert done.text_seq == 0


def test_long_output_line_becomes_segments_of_at_most_2000_characters() -> None:
    frames = [Frame(i // 100, Stream.OUTPUT, b"0123456789") for i in range(450)] + [
        Frame(9999, Stream.OUTPUT, b"\n")
    ]
    done = render_session(_ctx(), [_chunk(0, frames, final=True)])
    assert [len(g.text) for g in done.segments] == [2000, 2000, 500]
    assert "".join(g.text for g in done.segments) == "0123456789" * 450
    # Frame i holds characters 10i..10i+9, written at i // 100 ms.
    for g in done.segments:
        first_char = g.seg_no * 2000
        assert g.start_ms == (first_char // 10) // 100
        assert g.end_ms == ((first_char + len(g.text) - 1) // 10) // 100


def test_the_unterminated_last_line_waits_for_the_final_chunk() -> None:
    first = render_session(_ctx(), [_chunk(0, []), _chunk(1, [Frame(5, Stream.OUTPUT, b"a\nb")])])
    assert [g.text for g in first.segments] == ["a"]
    assert first.state is not None
    ctx = _ctx(state=first.state, seg_next=first.seg_next, text_seq=first.text_seq)
    more = render_session(ctx, [_chunk(2, [Frame(8, Stream.OUTPUT, b"c")])])
    assert more.segments == []
    ctx = _ctx(state=more.state, seg_next=more.seg_next, text_seq=more.text_seq)
    last = render_session(ctx, [_chunk(3, [], final=True)])
    assert [(g.seg_no, g.text, decode_times(g.times)) for g in last.segments] == [(1, "bc", [5, 8])]
    assert last.state is None


def test_already_rendered_chunks_are_skipped_and_change_nothing() -> None:
    chunks = [_chunk(0, []), _chunk(1, [Frame(5, Stream.OUTPUT, b"one\ntw")])]
    first = render_session(_ctx(), chunks)
    ctx = _ctx(state=first.state, seg_next=first.seg_next, text_seq=first.text_seq)
    again = render_session(ctx, chunks)  # a redelivered batch
    assert again.segments == []
    assert (again.state, again.seg_next, again.text_seq) == (ctx.state, 1, 1)


def test_only_output_and_stderr_are_rendered_not_keystrokes_or_resizes() -> None:
    frames = [
        Frame(1, Stream.INPUT, b"secret typed\r"),
        Frame(2, Stream.RESIZE, b"120x40"),
        Frame(3, Stream.OUTPUT, b"out "),
        Frame(4, Stream.STDERR, b"err\n"),
    ]
    done = render_session(_ctx(), [_chunk(0, frames, final=True)])
    assert [(g.text, decode_times(g.times)) for g in done.segments] == [
        ("out err", [3, 3, 3, 3, 4, 4, 4])
    ]
