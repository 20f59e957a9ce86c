"""Terminal output -> searchable text segments (PURE: no database).

The persist worker renders each newly stored chunk of a session, in seq order, with
:class:`replay.text.TimedTextRenderer` (escape sequences stripped, backspace and carriage-return
edits applied) and stores every completed line as a segment (:class:`SegmentRow`), in the same
transaction as the chunks. The renderer's state lives in the session row between batches, so:

* the same chunks give the same segments whatever the batch boundaries and restarts;
* only chunks with ``seq`` beyond the last rendered one (``text_seq``) are rendered; a late
  chunk filling a hole after later chunks were rendered is stored but not rendered (rendering
  it then would put its text out of order), and a gap is rendered across;
* the output streams are ``o`` and ``e`` (stdout/stderr of kubectl exec share the terminal);
* lines longer than :data:`SEGMENT_MAX_CHARS` are split; empty lines make no segment; the
  unterminated last line is flushed when the session's final chunk is rendered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

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


@dataclass(frozen=True)
class Rendered:
    """What rendering some chunks did: new segments and the position to store."""

    segments: list[SegmentRow]
    state: bytes | None
    seg_next: int
    text_seq: int


def _renderer(state: bytes | None) -> TimedTextRenderer:
    if state is None:
        return TimedTextRenderer(max_line_chars=SEGMENT_MAX_CHARS)
    return TimedTextRenderer.from_state(orjson.loads(state))


def render_session(ctx: SessionText, chunks: Iterable[Chunk]) -> Rendered:
    """Render the chunks of ``ctx``'s session that come after ``ctx.text_seq`` (any order in,
    seq order applied). The returned ``state`` is None once the session's final chunk was
    rendered (nothing is pending)."""
    todo = sorted((c for c in chunks if c.seq > ctx.text_seq), key=lambda c: c.seq)
    if not todo:
        return Rendered([], ctx.state, ctx.seg_next, ctx.text_seq)
    r = _renderer(ctx.state)
    lines: list[tuple[str, list[int]]] = []
    final = False
    for c in todo:
        for f in c.frames:
            if f.stream in OUTPUT_STREAMS and f.data:
                lines.extend(r.feed_at(f.data, f.offset_ms))
        if c.final:
            lines.extend(r.finish_lines())
            final = True
    seg_no = ctx.seg_next
    out: list[SegmentRow] = []
    for text, times in lines:
        if not text:
            continue
        start, end = min(times), max(times)
        out.append(
            SegmentRow(
                tenant=ctx.tenant,
                sid=ctx.sid,
                seg_no=seg_no,
                start_ms=start,
                end_ms=end,
                time_us=ctx.started_us + start * 1000,
                text=text,
                times=encode_times(times),
                user=ctx.user,
                login=ctx.login,
                server_id=ctx.server_id,
                cluster_name=ctx.cluster_name,
                kubernetes_cluster=ctx.kubernetes_cluster,
            )
        )
        seg_no += 1
    state = None if final else orjson.dumps(r.state())
    return Rendered(out, state, seg_no, todo[-1].seq)


__all__ = ["OUTPUT_STREAMS", "Rendered", "SessionText", "render_session"]
