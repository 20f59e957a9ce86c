"""Keyframes redraw the screen exactly (replay.keyframe's invariant), checked on the screen
model at every cut point of byte streams that use what full-screen programs use."""

from __future__ import annotations

import pytest

from replay.keyframe import Keyframe, draw
from replay.screen import TimedScreen
from replay.segments import SessionText, render_session
from schemas.models import Chunk, Frame, Stream

SHELL = [
    b"$ ls -l\r\n",
    b"total 0\r\n-rw-r--r-- 1 root root 0 f\xc3",  # UTF-8 split across frames
    b"\xa9.txt\r\n$ echo '",
    b"x" * 85,  # autowraps at 80
    b"'\r\n$ ",
]
VI = [
    b"\x1b[?1049h\x1b[1;23r\x1b[H\x1b[2J",
    b"\x1b[1;1Hline one\x1b[2;1H~\x1b[3;1H~",
    b'\x1b[24;1H"f.txt" 1L\x1b[1;9H',
    b"\x1b[2;1Hinserted text",
    b"\x1b[23;1H\x1bM",  # reverse index at the region's top
    b"\x1b[5;80HZ",  # last column: autowrap pending
    b"\x1b[",  # an escape sequence cut in two
    b"3;4Hmid\x1b7\x1b[10;10Hsaved",
    b"\x1b8!",
    b"\x1b[?1049l\r\n$ ",
]


def _screen_text(s: TimedScreen) -> dict[str, object]:
    snap = s.snapshot()
    return {k: snap[k] for k in ("main", "alt", "alt_on", "cur", "size")}


@pytest.mark.parametrize("stream", [SHELL, VI, SHELL + VI + SHELL], ids=["shell", "vi", "mixed"])
def test_drawing_a_keyframe_then_the_rest_gives_the_same_screen_at_every_cut(
    stream: list[bytes],
) -> None:
    for cut in range(len(stream) + 1):
        whole = TimedScreen(80, 24)
        for i, data in enumerate(stream):
            whole.feed_at(data, i)
        before = TimedScreen(80, 24)
        for i, data in enumerate(stream[:cut]):
            before.feed_at(data, i)
        kf = Keyframe.from_bytes(0, cut, Keyframe.of(before, 0, cut).to_bytes())
        again = TimedScreen(*kf.size)
        again.feed_at(draw(kf), 0)
        for i, data in enumerate(stream[cut:], start=cut):
            again.feed_at(data, i)
        assert _screen_text(again) == _screen_text(whole), f"cut after frame {cut}"


def test_the_segmenter_keeps_a_keyframe_each_time_the_output_reaches_the_interval() -> None:
    frames = [Frame(i * 10, Stream.OUTPUT, b"%04d " % i + b"y" * 95 + b"\r\n") for i in range(40)]
    chunks = [
        Chunk("t", "s", seq, tuple(frames[seq * 4 : seq * 4 + 4]), "", "") for seq in range(10)
    ]
    ctx = SessionText("t", "s", 0, keyframe_every_bytes=1000)
    first = render_session(ctx, chunks[:5])
    # 4 frames of 102 bytes per chunk: 408, 816, 1224 -> a keyframe after chunk 2.
    assert [k.after_seq for k in first.keyframes] == [2]
    assert first.kf_bytes == 816
    ctx2 = SessionText(
        "t",
        "s",
        0,
        state=first.state,
        seg_next=first.seg_next,
        text_seq=first.text_seq,
        kf_bytes=first.kf_bytes,
        keyframe_every_bytes=1000,
    )
    second = render_session(ctx2, chunks)
    assert [k.after_seq for k in second.keyframes] == [5, 8]
    assert second.keyframes[0].at_ms == frames[23].offset_ms
    none = render_session(SessionText("t", "s", 0), chunks)
    assert none.keyframes == []
