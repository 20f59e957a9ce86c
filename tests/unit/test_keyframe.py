"""Keyframes redraw the screen exactly (replay.keyframe's invariant), checked on the screen
model at every cut point of byte streams that use what full-screen programs use."""

from __future__ import annotations

import pytest

from replay.keyframe import Keyframe, Seek, draw, seek
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


def _apply(result: Seek) -> TimedScreen:
    screen = TimedScreen(result.cols, result.rows)
    for f in result.frames:
        if f.stream is Stream.RESIZE:
            cols, rows = (int(v) for v in f.data.split(b"x"))
            screen.resize(cols, rows, f.offset_ms)
        else:
            screen.feed_at(f.data, f.offset_ms)
    return screen


@pytest.mark.parametrize("max_bytes", [0, 40, 10**9], ids=["render-all", "render-late", "frames"])
def test_a_seek_shows_the_screen_at_the_moment_whether_frames_are_sent_or_rendered(
    max_bytes: int,
) -> None:
    data = [*SHELL, *VI, b"\x1b[?1049h", *SHELL]
    frames = [Frame(i * 10, Stream.OUTPUT, d) for i, d in enumerate(data)]
    frames.insert(7, Frame(65, Stream.RESIZE, b"90x20"))
    frames.insert(3, Frame(25, Stream.INPUT, b"typed"))
    chunks = [(seq, frames[seq * 3 : seq * 3 + 3]) for seq in range(0, len(frames) // 3 + 1)]
    kf_screen = TimedScreen(80, 24)
    for f in frames[:6]:
        if f.stream is Stream.OUTPUT:
            kf_screen.feed_at(f.data, f.offset_ms)
    kf = Keyframe.of(kf_screen, 1, frames[5].offset_ms)
    for at in range(0, frames[-1].offset_ms + 20, 5):
        for start in (None, kf):
            if start is not None and at < start.at_ms:
                continue
            after = -1 if start is None else start.after_seq
            got = seek(start, [c for c in chunks if c[0] > after], at, cols=80, rows=24,
                       max_bytes=max_bytes)  # fmt: skip
            want = TimedScreen(80, 24)
            for f in frames:
                if f.offset_ms > at:
                    break
                if f.stream is Stream.RESIZE:
                    want.resize(90, 20, f.offset_ms)
                elif f.stream is Stream.OUTPUT:
                    want.feed_at(f.data, f.offset_ms)
            assert _screen_text(_apply(got)) == _screen_text(want), (at, start)
            if max_bytes == 0:
                assert len(got.frames) == 1  # one drawing, whatever lies before the moment
            # Playing on from (next_seq, skip) gives exactly the frames after the moment.
            rest = [f for seq, fs in chunks if seq >= got.next_seq
                    for f in (fs[got.skip:] if seq == got.next_seq else fs)]  # fmt: skip
            assert rest == [f for f in frames if f.offset_ms > at], at


def test_commands_are_marked_as_the_screen_showed_them_and_unechoed_input_never_is() -> None:
    frames = [
        Frame(0, Stream.OUTPUT, b"$ "),
        Frame(10, Stream.INPUT, b"l"),
        Frame(11, Stream.OUTPUT, b"l"),
        Frame(20, Stream.INPUT, b"s"),
        Frame(21, Stream.OUTPUT, b"s"),
        Frame(30, Stream.INPUT, b"\r"),
        Frame(31, Stream.OUTPUT, b"\r\nfile\r\n$ sudo -k true\r\n[sudo] password for al: "),
        Frame(40, Stream.INPUT, b"hunter2\r"),  # not echoed
        Frame(50, Stream.RESIZE, b"120x40"),
        Frame(60, Stream.INPUT, b"\x1b[A"),  # no Enter: no marker
    ]
    done = render_session(SessionText("t", "s", 0), [Chunk("t", "s", 0, tuple(frames), "", "")])
    assert [(m.at_ms, m.kind, m.label) for m in done.markers] == [
        (30, "command", "$ ls"),
        (40, "command", "[sudo] password for al:"),
        (50, "resize", "120x40"),
    ]
