"""Terminal output -> searchable text segments (PURE: no database).

The segmenter renders each newly stored chunk of a session, in seq order, on a terminal screen
model (:class:`replay.screen.TimedScreen`: main and alternate screens, cursor addressing,
scroll regions, resizes) and stores every row that stood on the screen as a segment
(:class:`SegmentRow`), with the time each character appeared. The screen's state lives in
``session_text`` between rounds, so:

* the same chunks give the same segments whatever the batch boundaries and restarts;
* only chunks with ``seq`` beyond the last rendered one (``text_seq``) are rendered; a late
  chunk filling a hole after later chunks were rendered is stored but not rendered (rendering
  it then would put its text out of order), and a gap is rendered across;
* the output streams are ``o`` and ``e`` (stdout/stderr of kubectl exec share the terminal);
* rows longer than :data:`SEGMENT_MAX_CHARS` (autowrapped rows are joined) are split; empty
  rows make no segment; the rows still on the screen are given when the final chunk is
  rendered;
* each resize and each Enter typed (with the command line it ran) is kept as a
  :class:`Marker` for the player's timeline;
* every ``keyframe_every_bytes`` of output (at the end of the chunk that reaches it) the screen
  is kept as a :class:`replay.keyframe.Keyframe`: the web console's seeks start there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from replay.keyframe import Keyframe, parse_resize
from replay.screen import TimedScreen
from replay.text import TimedTextRenderer
from schemas.models import Chunk, Stream
from storage.search.model import SEGMENT_MAX_CHARS, SegmentRow, encode_times

OUTPUT_STREAMS = frozenset({Stream.OUTPUT, Stream.STDERR})


@dataclass(frozen=True)
class SessionText:
    """A session's text-rendering position: stored in ``sessions`` (``text_state``,
    ``text_seg_next``, ``text_seq``) plus what segments copy from the session."""

    tenant: str
    sid: str
    started_us: int
    state: bytes | None = None
    seg_next: int = 0
    text_seq: int = -1
    user: str = ""
    login: str = ""
    server_id: str = ""
    cluster_name: str = ""
    kubernetes_cluster: str = ""
    # The terminal's size when the session started (later sizes come from resize frames).
    cols: int = 80
    rows: int = 24
    # Output bytes rendered since the session's last keyframe, and how many make a keyframe
    # (0: none are made).
    kf_bytes: int = 0
    keyframe_every_bytes: int = 0


#: Where a typed command line is longest kept as a marker's label.
MARKER_LABEL_MAX_CHARS = 200


@dataclass(frozen=True, slots=True)
class Marker:
    """A moment the player's timeline marks: ``command`` (Enter pressed; the label is the
    row the cursor was on, as the screen showed it: input that was not echoed, such as a
    password, never appears) or ``resize`` (label ``COLSxROWS``)."""

    at_ms: int
    kind: str
    label: str


@dataclass(frozen=True)
class Rendered:
    """What rendering some chunks did: new segments and the position to store."""

    segments: list[SegmentRow]
    state: bytes | None
    seg_next: int
    text_seq: int
    keyframes: list[Keyframe] = field(default_factory=list)
    kf_bytes: int = 0
    markers: list[Marker] = field(default_factory=list)


def _renderer(ctx: SessionText) -> TimedScreen | TimedTextRenderer:
    """The session's screen (new, at the session's starting size, or restored). A state saved
    by the line renderer of earlier versions is continued with it to the session's end."""
    state = ctx.state
    if state is None:
        return TimedScreen(ctx.cols, ctx.rows, max_line_chars=SEGMENT_MAX_CHARS)
    st = orjson.loads(state)
    if TimedScreen.is_state(st):
        return TimedScreen.from_state(st)
    return TimedTextRenderer.from_state(st)


def _enter(data: bytes) -> bool:
    """Whether a keystroke frame presses Enter (CR, or LF from a pasted line)."""
    return b"\r" in data or b"\n" in data


def render_session(ctx: SessionText, chunks: Iterable[Chunk]) -> Rendered:
    """Render the chunks of ``ctx``'s session that come after ``ctx.text_seq`` (any order in,
    seq order applied). The returned ``state`` is None once the session's final chunk was
    rendered (nothing is pending)."""
    todo = sorted((c for c in chunks if c.seq > ctx.text_seq), key=lambda c: c.seq)
    if not todo:
        return Rendered([], ctx.state, ctx.seg_next, ctx.text_seq, [], ctx.kf_bytes)
    r = _renderer(ctx)
    lines: list[tuple[str, list[int]]] = []
    final = False
    keyframes: list[Keyframe] = []
    markers: list[Marker] = []
    kf_bytes = ctx.kf_bytes
    every = ctx.keyframe_every_bytes
    for c in todo:
        for f in c.frames:
            if f.stream in OUTPUT_STREAMS and f.data:
                lines.extend(r.feed_at(f.data, f.offset_ms))
                kf_bytes += len(f.data)
            elif f.stream is Stream.RESIZE and isinstance(r, TimedScreen):
                size = parse_resize(f.data)
                if size is not None:
                    lines.extend(r.resize(*size, f.offset_ms))
                    markers.append(Marker(f.offset_ms, "resize", f"{size[0]}x{size[1]}"))
            elif f.stream is Stream.INPUT and isinstance(r, TimedScreen) and _enter(f.data):
                label = r.cursor_row().strip()[:MARKER_LABEL_MAX_CHARS]
                if label:
                    markers.append(Marker(f.offset_ms, "command", label))
        if c.final:
            lines.extend(r.finish_lines())
            final = True
        elif every > 0 and kf_bytes >= every and c.frames and isinstance(r, TimedScreen):
            # After a whole chunk: a seek then reads chunks from the next one on.
            keyframes.append(Keyframe.of(r, c.seq, c.frames[-1].offset_ms))
            kf_bytes = 0
    seg_no = ctx.seg_next
    out: list[SegmentRow] = []
    for text, times in lines:
        if not text:
            continue
        rle = encode_times(times)
        # From the runs, not the characters: a line is usually one run (written in one read).
        offsets = rle[0::2]
        start, end = min(offsets), max(offsets)
        out.append(
            SegmentRow(
                tenant=ctx.tenant,
                sid=ctx.sid,
                seg_no=seg_no,
                start_ms=start,
                end_ms=end,
                time_us=ctx.started_us + start * 1000,
                text=text,
                times=rle,
                user=ctx.user,
                login=ctx.login,
                server_id=ctx.server_id,
                cluster_name=ctx.cluster_name,
                kubernetes_cluster=ctx.kubernetes_cluster,
            )
        )
        seg_no += 1
    state = None if final else orjson.dumps(r.state())
    return Rendered(out, state, seg_no, todo[-1].seq, keyframes, kf_bytes, markers)


__all__ = ["OUTPUT_STREAMS", "Marker", "Rendered", "SessionText", "render_session"]
