"""A terminal screen model for search: what stood on each row of the screen, and when each
character appeared. Pure, incremental, bounded memory, serialisable.

Why a screen and not lines: full-screen programs (vi, less, top, tmux) draw with cursor
addressing, scroll regions and the alternate screen. Read as a byte stream their output runs
rows together (text that never stood on one row matches) and text typed into them (vi's insert
mode) never ends a "line". So search text is taken from a screen: main and alternate buffers,
cursor addressing (CUP, HVP, CHA, VPA, relative moves), scroll regions (DECSTBM, IND, RI, SU,
SD, IL, DL), erasing (ED, EL, ECH, DCH, ICH), autowrap, tabs, save/restore cursor, resize.

When a row's text is given out (as ``(text, times)``, ``times[i]`` the offset in ms at which
``text[i]`` was written; trailing blanks dropped, empty rows never given):

* the cursor leaves it by a line feed (how shells end a line: searchable at once);
* it leaves the screen: scrolled out of the top (or bottom) of its region, or cut by a resize;
* on the alternate screen (full-screen programs), it is about to be erased (ED, EL, ECH, DL,
  ...) or overwritten by other characters after it stood unchanged for ``stand_ms``, so top's
  screens, redrawn every few seconds, each give theirs while a redraw in progress gives
  nothing; on the main screen (a shell's line editing: typos fixed, progress bars, history)
  only the row as a line feed leaves it counts;
* its screen is left (the alternate screen when the program exits) or the recording ends.

A row given out twice with the same text is given once. A row that autowrapped into the next
one is carried into it, so a long command line is one segment, not two halves.

Line feed on the main screen also returns the carriage (output without a tty, such as kubectl
exec streams, ends lines with a bare LF); on the alternate screen it keeps the column.

Limits: every character is one cell (wide CJK characters too); character sets, insert mode
and origin mode are not modelled; bytes are decoded as UTF-8 with U+FFFD for invalid sequences
(incrementally, across ``feed_at`` calls).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TimedScreen"]

_ESC = "\x1b"
_SPECIAL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CSI_SEQ = re.compile("\x1b\\[([\x30-\x3f]*)([\x20-\x2f]*)([\x40-\x7e])")
_SGR = re.compile("\x1b\\[[0-9;:]*m")
_EL = re.compile("\x1b\\[0?K")
_NORMAL, _ESCAPE, _CSI, _STRING, _STRING_ESC, _ESC_INTER = range(6)
_MAX_PARAMS = 64
_MAX_DIM = 1000  # columns or rows: larger sizes are clamped (memory stays bounded)
_STATE_VERSION = "screen-1"
# What puts a fresh parser in the same state (an OSC/DCS string's opener is not kept: any
# string opener swallows the rest of the string just as well).
_PARSER_REENTRY = {
    _ESCAPE: "\x1b",
    _CSI: "\x1b[",
    _STRING: "\x1b]",
    _STRING_ESC: "\x1b]\x1b",
    _ESC_INTER: "\x1b(",
}

Line = tuple[str, list[int]]


@dataclass
class _Row:
    chars: list[str]
    times: list[int]  # -1: never written
    wrapped: bool = False  # autowrapped into the next row
    stood_since: int = 0  # when its text last changed
    last_given: str | None = None
    carry: str = ""  # text of rows that autowrapped into this one
    carry_times: list[int] = field(default_factory=list)
    consumed: bool = False  # given as part of the line it wrapped into (until it changes)
    dirty: bool = False  # changed since it was last given (a clean row needs no look)


def _blank(cols: int, now: int = 0) -> _Row:
    return _Row([" "] * cols, [-1] * cols, stood_since=now)


class TimedScreen:
    """Feed terminal output with its offsets; get back the rows that stood (module docstring).

    :meth:`feed_at` and :meth:`finish_lines` have :class:`replay.text.TimedTextRenderer`'s
    shape, so the segmenter can use either; :meth:`state` / :meth:`from_state` let rendering
    continue in another process exactly where it stopped.
    """

    def __init__(
        self,
        cols: int = 80,
        rows: int = 24,
        *,
        stand_ms: int = 1000,
        max_line_chars: int = 4096,
        fast_lines: bool = True,
    ) -> None:
        self.cols = max(1, min(cols, _MAX_DIM))
        self.rows = max(1, min(rows, _MAX_DIM))
        self.stand_ms = stand_ms
        self.max_line_chars = max_line_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._main = [_blank(self.cols) for _ in range(self.rows)]
        self._alt = [_blank(self.cols) for _ in range(self.rows)]
        self._alt_on = False
        self._x = 0
        self._y = 0
        self._pending_wrap = False
        self._saved = (0, 0)
        self._top = 0
        self._bottom = self.rows - 1
        self._state = _NORMAL
        self._params: list[str] = []
        self._now = 0
        self._out: list[Line] = []
        self._fast_lines = fast_lines

    # -- public -------------------------------------------------------------------------------

    def feed_at(self, data: bytes, offset_ms: int) -> list[Line]:
        """Process ``data`` written at ``offset_ms``; return the rows it gave out."""
        self._now = offset_ms
        self._run(self._decoder.decode(data))
        return self._take()

    def resize(self, cols: int, rows: int, offset_ms: int) -> list[Line]:
        """The terminal became ``cols`` x ``rows`` (rows cut off the top are given out)."""
        self._now = offset_ms
        cols, rows = max(1, min(cols, _MAX_DIM)), max(1, min(rows, _MAX_DIM))
        for buf_name in ("_main", "_alt"):
            buf: list[_Row] = getattr(self, buf_name)
            while len(buf) > rows:
                # Keep the rows around the cursor: cut from the top (as xterm does).
                self._give(buf.pop(0))
            while len(buf) < rows:
                buf.append(_blank(cols, offset_ms))
            for row in buf:
                if len(row.chars) > cols:
                    if any(c != " " for c in row.chars[cols:]):
                        self._give(row)
                    del row.chars[cols:]
                    del row.times[cols:]
                else:
                    row.chars.extend(" " * (cols - len(row.chars)))
                    row.times.extend([-1] * (cols - len(row.times)))
        self.cols, self.rows = cols, rows
        self._top, self._bottom = 0, rows - 1
        self._x = min(self._x, cols - 1)
        self._y = min(self._y, rows - 1)
        self._pending_wrap = False
        return self._take()

    def finish_lines(self) -> list[Line]:
        """The end of the recording: every row still on either screen."""
        self._run(self._decoder.decode(b"", final=True))
        for buf in (self._alt, self._main) if self._alt_on else (self._main,):
            self._give_all(buf)
        return self._take()

    def cursor_row(self) -> str:
        """The text of the row the cursor is on (with the rows that autowrapped into it): what
        a shell's command line shows when Enter is pressed."""
        return self._text(self._buf[self._y])[0]

    # -- giving rows out ----------------------------------------------------------------------

    @property
    def _buf(self) -> list[_Row]:
        return self._alt if self._alt_on else self._main

    def _take(self) -> list[Line]:
        out, self._out = self._out, []
        return out

    def _text(self, row: _Row) -> Line:
        text = "".join(row.chars).rstrip(" ")
        times = row.times[: len(text)]
        if -1 not in times:
            return row.carry + text, row.carry_times + times
        # Blanks between written characters were never written: they take the time of the
        # character before them (or after, at the start), so every character has a time.
        last = next((t for t in times if t >= 0), 0)
        fixed = []
        for t in times:
            last = t if t >= 0 else last
            fixed.append(last)
        return row.carry + text, row.carry_times + fixed

    def _give(self, row: _Row, *, carry_into: _Row | None = None) -> None:
        """Give ``row``'s text out (or carry it into the next row when it autowrapped there)."""
        if row.consumed or not (row.dirty or row.carry or row.wrapped):
            row.consumed = row.wrapped = False
            row.carry, row.carry_times = "", []
            return
        row.dirty = False
        text, times = self._text(row)
        limit = self.max_line_chars
        if row.wrapped and carry_into is not None:
            # Whole pieces of the limit's size go out; the rest continues on the next row.
            whole = len(text) - len(text) % limit
            for i in range(0, whole, limit):
                self._out.append((text[i : i + limit], times[i : i + limit]))
            carry_into.carry, carry_into.carry_times = text[whole:], times[whole:]
        elif text.strip() and text != row.last_given:
            for i in range(0, len(text), limit):
                part = text[i : i + limit]
                if part.strip():
                    self._out.append((part, times[i : i + limit]))
        row.last_given = text
        row.carry, row.carry_times = "", []
        row.wrapped = False

    def _give_line(self, y: int) -> None:
        """Give the line that ends on row ``y`` (the cursor leaves it by a line feed): the rows
        above that autowrapped into it, then its own text. The rows above are marked consumed
        (they give nothing when they scroll away); row ``y`` remembers its own text as given."""
        buf = self._buf
        top = y
        while top > 0 and buf[top - 1].wrapped and not buf[top - 1].consumed:
            top -= 1
        if top == y:
            self._give(buf[y])
            return
        text, times = "", []
        for row in buf[top : y + 1]:
            t, tt = self._text(row)
            text += t
            times += tt
        limit = self.max_line_chars
        for i in range(0, len(text), limit):
            if text[i : i + limit].strip():
                self._out.append((text[i : i + limit], times[i : i + limit]))
        for row in buf[top:y]:
            row.consumed = True
            row.carry, row.carry_times = "", []
        own = self._text(buf[y])[0]
        buf[y].last_given = own
        buf[y].dirty = False
        buf[y].carry, buf[y].carry_times = "", []

    def _changing(self, row: _Row, cells: range) -> None:
        """``row`` is about to lose the text in ``cells`` (overwritten or erased): give it out
        first if it stood unchanged for ``stand_ms``. The caller changes it and stamps
        ``stood_since``."""
        if not self._alt_on:
            # The main screen is a shell's: its rows are edited in place (a typo fixed, a
            # progress bar, history browsing) and what counts is the line as it stood when a
            # line feed left it, not every state it went through.
            return
        seg = row.chars[cells.start : cells.stop]
        if seg.count(" ") == len(seg):  # nothing but blanks is lost
            return
        if self._now - row.stood_since >= self.stand_ms:
            keep = row.wrapped
            row.wrapped = False
            self._give(row)
            row.wrapped = keep

    def _give_all(self, buf: list[_Row]) -> None:
        """Every row of ``buf``, top to bottom (autowrapped rows carried into the next)."""
        for i, row in enumerate(buf):
            self._give(row, carry_into=buf[i + 1] if i + 1 < len(buf) else None)

    # -- scrolling ----------------------------------------------------------------------------

    def _scroll_up(self, n: int = 1) -> None:
        buf, top, bottom = self._buf, self._top, self._bottom
        for _ in range(min(n, bottom - top + 1)):
            leaving = buf.pop(top)
            nxt = buf[top] if top < bottom else None
            self._give(leaving, carry_into=nxt)
            buf.insert(bottom, _blank(self.cols, self._now))

    def _scroll_down(self, n: int = 1) -> None:
        buf, top, bottom = self._buf, self._top, self._bottom
        for _ in range(min(n, bottom - top + 1)):
            leaving = buf.pop(bottom)
            leaving.wrapped = False
            self._give(leaving)
            buf.insert(top, _blank(self.cols, self._now))

    def _index(self) -> None:
        if self._y == self._bottom:
            self._scroll_up()
        elif self._y < self.rows - 1:
            self._y += 1

    # -- writing ------------------------------------------------------------------------------

    def _put_run(self, run: str) -> None:
        pos, n = 0, len(run)
        while pos < n:
            if self._pending_wrap:
                self._buf[self._y].wrapped = True
                self._x = 0
                self._pending_wrap = False
                self._index()
            row = self._buf[self._y]
            x = self._x
            part = run[pos : pos + self.cols - x]
            k = len(part)
            if row.chars[x : x + k] != list(part):
                self._changing(row, range(x, x + k))
                row.stood_since = self._now
                row.consumed = False
                row.dirty = True
            row.chars[x : x + k] = part
            row.times[x : x + k] = [self._now] * k
            pos += k
            if x + k >= self.cols:
                self._x = self.cols - 1
                self._pending_wrap = True
            else:
                self._x = x + k

    def _erase(self, row: _Row, start: int, end: int) -> None:
        start, end = max(0, start), min(self.cols, end)
        if start >= end:
            return
        self._changing(row, range(start, end))
        row.stood_since = self._now
        row.consumed = False
        row.dirty = True
        row.chars[start:end] = [" "] * (end - start)
        row.times[start:end] = [-1] * (end - start)
        if end >= self.cols:
            row.wrapped = False

    # -- the parser ---------------------------------------------------------------------------

    def _run(self, text: str) -> None:
        i, n = 0, len(text)
        search = _SPECIAL.search
        fast = self._fast_lines
        while i < n:
            if fast and self._state == _NORMAL and self._x == 0:
                j = self._simple_lines(text, i)
                if j > i:
                    i = j
                    continue
                fast = False  # not at a line's start in the state it needs: until the next LF
            if self._state == _NORMAL:
                m = search(text, i)
                j = n if m is None else m.start()
                if j > i:
                    self._put_run(text[i:j])
                    i = j
                    continue
                if text[i] == _ESC:
                    m = _CSI_SEQ.match(text, i)
                    if m is not None:
                        self._csi_final(m.group(3), m.group(1)[:_MAX_PARAMS], m.group(2))
                        i = m.end()
                        continue
            if text[i] == "\n":
                fast = self._fast_lines
            self._char(text[i])
            i += 1

    def _simple_lines(self, text: str, i: int) -> int:
        """The fast path for what bulk output mostly is: whole lines of printable text,
        colours (SGR) and erase-to-end-of-line (EL, as grep and gcc colour with), ending in a
        line feed, written on the main screen's bottom row. Their effect is known without
        feeding them a character at a time: each line is given out as it stands (a line
        longer than the screen is wide wraps onto several rows and is given whole), and the
        screen scrolls up by one row per row written. Only rows that stay on the screen are
        built. Returns where it stopped (``i``: not applicable here).

        Applies only in the state where that is exactly what the character path does (a
        property test holds the two to the same output and the same :meth:`state`): normal
        parser state, main screen, full scroll region, cursor at the start of the bottom row
        with no pending wrap, that row blank and never given, and no row that would give
        text when scrolled out or be joined to a line (``_give``'s own test)."""
        rows, cols = self.rows, self.cols
        if self._alt_on or self._pending_wrap or self._y != rows - 1:
            return i
        if self._top != 0 or self._bottom != rows - 1:
            return i
        end = text.rfind("\n", i)
        if end < 0:
            return i
        buf = self._main
        first = buf[-1]
        if first.last_given is not None or first.carry or first.wrapped or first.dirty:
            return i
        if first.chars.count(" ") != cols:
            return i
        for row in buf:
            if not row.consumed and (row.dirty or row.carry or row.wrapped):
                return i
        now, limit = self._now, self.max_line_chars
        special = _SPECIAL.search
        lines: list[tuple[str, bool]] = []  # (visible text, whether it erased to the end)
        pos = i
        while pos <= end:
            nl = text.index("\n", pos)
            # Only carriage returns at the very end: one before an erase or more text moves
            # the cursor back (left to the character path, as the special character it is).
            line = text[pos:nl].rstrip("\r")
            erased = False
            if "\x1b" in line:
                line = _SGR.sub("", line)
                if "\x1b" in line:
                    line, n = _EL.subn("", line)
                    erased = n > 0
            w = len(line)
            if special(line) is not None:
                break
            # Wider than the screen: it wraps; more rows than the screen has would scroll its
            # own start away mid-line (carried, not joined), and an erase on a full row
            # clears the pending wrap: both left to the character path.
            if w > cols and (erased or w > cols * rows):
                break
            if erased and w >= cols:
                break
            lines.append((line, erased))
            pos = nl + 1
        if not lines:
            return i
        out = self._out
        for vis, _ in lines:
            if len(vis) <= cols:
                shown = vis.rstrip(" ")
            else:
                shown = "".join(vis[k : k + cols].rstrip(" ") for k in range(0, len(vis), cols))
            if shown.strip():
                for k in range(0, len(shown), limit):
                    part = shown[k : k + limit]
                    if part.strip():
                        out.append((part, [now] * len(part)))
        # The rows that stay on the screen: the last ones written, then the blank row the
        # last line feed scrolled in.
        want = rows - 1
        start, have = len(lines), 0
        while start > 0 and have < want:
            start -= 1
            have += max(1, -(-len(lines[start][0]) // cols))
        built: list[_Row] = []
        for idx in range(start, len(lines)):
            vis, erased = lines[idx]
            base = first if idx == 0 else None
            built += self._line_rows(vis, erased, base)
        if have > want:
            del built[: have - want]  # the first line's top rows scrolled away
        built.append(_blank(cols, now))
        buf[:] = (buf[:-1] + built)[-rows:]
        self._x = 0
        return pos

    def _line_rows(self, vis: str, erased: bool, base: _Row | None) -> list[_Row]:
        """The rows one line of :meth:`_simple_lines` leaves, as the character path leaves
        them: written at ``now``, given (the last row remembers its text), rows it wrapped
        from marked consumed. ``base`` is the row it was written on when that row was the
        screen's bottom row before this feed (its older times and stand time carry on)."""
        cols, now = self.cols, self._now
        w = len(vis)
        if w <= cols:
            dirty = erased or bool(vis.strip(" "))
            if base is not None and not erased:
                times = [now] * w + base.times[w:]
            else:
                times = [now] * w + [-1] * (cols - w)
            stood = now if dirty or base is None else base.stood_since
            return [
                _Row(
                    list(vis) + [" "] * (cols - w),
                    times,
                    stood_since=stood,
                    last_given=vis.rstrip(" ") if dirty else None,
                )
            ]
        out = []
        for k in range(0, w - cols, cols):
            piece = vis[k : k + cols]
            dirty = bool(piece.strip(" "))  # blanks written over blanks change nothing
            stood = base.stood_since if k == 0 and base is not None and not dirty else now
            out.append(
                _Row(list(piece), [now] * cols, True, stood, None, consumed=True, dirty=dirty)
            )
        tail = vis[len(out) * cols :]
        t = len(tail)
        out.append(
            _Row(
                list(tail) + [" "] * (cols - t),
                [now] * t + [-1] * (cols - t),
                stood_since=now,
                last_given=tail.rstrip(" "),
            )
        )
        return out

    def _char(self, ch: str) -> None:
        state = self._state
        if state == _NORMAL:
            self._control(ch)
        elif state == _ESCAPE:
            self._escape(ch)
        elif state == _CSI:
            if "\x20" <= ch <= "\x3f":
                if len(self._params) < _MAX_PARAMS:
                    self._params.append(ch)
                return
            self._state = _NORMAL
            if "\x40" <= ch <= "\x7e":
                raw = "".join(self._params)
                inter = "".join(c for c in raw if c < "\x30")
                self._csi_final(ch, "".join(c for c in raw if c >= "\x30"), inter)
            else:
                self._control(ch)
        elif state == _STRING:
            if ch == "\x07":
                self._state = _NORMAL
            elif ch == _ESC:
                self._state = _STRING_ESC
        elif state == _STRING_ESC:
            self._state = _NORMAL
            if ch != "\\":
                self._escape(ch)
        elif state == _ESC_INTER and not ("\x20" <= ch <= "\x2f"):
            self._state = _NORMAL

    def _control(self, ch: str) -> None:
        o = ord(ch)
        if o >= 0x20 and o != 0x7F and not (0x80 <= o < 0xA0):
            self._put_run(ch)
        elif ch in "\n\x0b\x0c":
            # A line feed leaves the row as it stands (how shells end a line): give it now, so
            # text is searchable (and alerts fire) without waiting for it to scroll away.
            if not self._buf[self._y].wrapped:
                self._give_line(self._y)
            self._pending_wrap = False
            self._index()
            if not self._alt_on:
                # On the main screen a line feed also returns the carriage: streams without a
                # tty (kubectl exec, imported logs) end lines with a bare LF. Full-screen
                # programs, which move down with LF and keep the column, use the alternate one.
                self._x = 0
        elif ch == "\r":
            self._x, self._pending_wrap = 0, False
        elif ch == "\b":
            self._x, self._pending_wrap = max(0, self._x - 1), False
        elif ch == "\t":
            self._x = min(self.cols - 1, (self._x // 8 + 1) * 8)
        elif ch == _ESC:
            self._state = _ESCAPE
        elif o == 0x9B:
            self._params = []
            self._state = _CSI
        elif o in (0x90, 0x98, 0x9D, 0x9E, 0x9F):
            self._state = _STRING

    def _escape(self, ch: str) -> None:
        self._state = _NORMAL
        if ch == "[":
            self._params = []
            self._state = _CSI
        elif ch in "]PX^_":
            self._state = _STRING
        elif "\x20" <= ch <= "\x2f":
            self._state = _ESC_INTER
        elif ch == _ESC:
            self._state = _ESCAPE
        elif ch == "7":
            self._saved = (self._x, self._y)
        elif ch == "8":
            self._x, self._y = self._saved
            self._pending_wrap = False
        elif ch == "D":
            self._index()
        elif ch == "E":
            self._x = 0
            self._index()
        elif ch == "M":
            if self._y == self._top:
                self._scroll_down()
            elif self._y > 0:
                self._y -= 1
        elif ch == "c":
            self._full_reset()

    def _full_reset(self) -> None:
        for row in self._buf:
            self._erase(row, 0, self.cols)
        self._alt_on = False
        self._x = self._y = 0
        self._top, self._bottom = 0, self.rows - 1
        self._pending_wrap = False

    def _csi_final(self, final: str, params: str, inter: str) -> None:
        if inter or final == "m":
            return  # colours, DECSCUSR and friends: nothing on the screen moves
        if params[:1] in ("?", ">", "<", "="):
            if params[:1] == "?" and final in "hl":
                self._modes(params[1:], final == "h")
            return
        self._pending_wrap = False
        handler = _CSI_HANDLERS.get(final)
        if handler is None:
            return  # a sequence that changes nothing on the screen (device status, ...)
        nums = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else [0]
        handler(self, nums, max(1, nums[0]), final)

    # -- CSI handlers: (numeric parameters, count = max(1, first parameter), final byte) --

    def _cup(self, nums: list[int], count: int, final: str) -> None:
        col_n = max(1, nums[1]) if len(nums) > 1 else 1
        self._y, self._x = min(self.rows, count) - 1, min(self.cols, col_n) - 1

    def _cuu(self, nums: list[int], count: int, final: str) -> None:
        self._y = max(self._top if self._y >= self._top else 0, self._y - count)

    def _cud(self, nums: list[int], count: int, final: str) -> None:
        lim = self._bottom if self._y <= self._bottom else self.rows - 1
        self._y = min(lim, self._y + count)

    def _cuf(self, nums: list[int], count: int, final: str) -> None:
        self._x = min(self.cols - 1, self._x + count)

    def _cub(self, nums: list[int], count: int, final: str) -> None:
        self._x = max(0, self._x - count)

    def _cnl(self, nums: list[int], count: int, final: str) -> None:
        self._y, self._x = min(self.rows - 1, self._y + count), 0

    def _cpl(self, nums: list[int], count: int, final: str) -> None:
        self._y, self._x = max(0, self._y - count), 0

    def _cha(self, nums: list[int], count: int, final: str) -> None:
        self._x = min(self.cols, count) - 1

    def _vpa(self, nums: list[int], count: int, final: str) -> None:
        self._y = min(self.rows, count) - 1

    def _ed(self, nums: list[int], count: int, final: str) -> None:
        self._erase_display(nums[0])

    def _el(self, nums: list[int], count: int, final: str) -> None:
        row, n = self._buf[self._y], nums[0]
        if n == 0:
            self._erase(row, self._x, self.cols)
        elif n == 1:
            self._erase(row, 0, self._x + 1)
        elif n == 2:
            self._erase(row, 0, self.cols)

    def _ech(self, nums: list[int], count: int, final: str) -> None:
        self._erase(self._buf[self._y], self._x, self._x + count)

    def _dch(self, nums: list[int], count: int, final: str) -> None:
        row, cols = self._buf[self._y], self.cols
        self._changing(row, range(self._x, cols))
        row.stood_since = self._now
        row.dirty = True
        del row.chars[self._x : self._x + count]
        del row.times[self._x : self._x + count]
        row.chars.extend(" " * (cols - len(row.chars)))
        row.times.extend([-1] * (cols - len(row.times)))

    def _ich(self, nums: list[int], count: int, final: str) -> None:
        row, cols = self._buf[self._y], self.cols
        k = min(count, cols - self._x)
        self._changing(row, range(self._x, cols))
        row.stood_since = self._now
        row.dirty = True
        row.chars[self._x : self._x] = [" "] * k
        row.times[self._x : self._x] = [-1] * k
        del row.chars[cols:]
        del row.times[cols:]

    def _il_dl(self, nums: list[int], count: int, final: str) -> None:
        if self._top <= self._y <= self._bottom:
            saved_top = self._top
            self._top = self._y
            if final == "L":
                self._scroll_down(count)
            else:
                self._scroll_up(count)
            self._top = saved_top
            self._x = 0

    def _su(self, nums: list[int], count: int, final: str) -> None:
        self._scroll_up(count)

    def _sd(self, nums: list[int], count: int, final: str) -> None:
        self._scroll_down(count)

    def _decstbm(self, nums: list[int], count: int, final: str) -> None:
        top = max(1, nums[0]) - 1
        bottom = (nums[1] if len(nums) > 1 and nums[1] > 0 else self.rows) - 1
        if top < bottom < self.rows:
            self._top, self._bottom = top, bottom
            self._x = self._y = 0

    def _save_cursor(self, nums: list[int], count: int, final: str) -> None:
        self._saved = (self._x, self._y)

    def _restore_cursor(self, nums: list[int], count: int, final: str) -> None:
        self._x, self._y = self._saved

    def _erase_display(self, n: int) -> None:
        buf, cols = self._buf, self.cols
        if n == 0:
            self._erase(buf[self._y], self._x, cols)
            for row in buf[self._y + 1 :]:
                self._erase(row, 0, cols)
        elif n == 1:
            for row in buf[: self._y]:
                self._erase(row, 0, cols)
            self._erase(buf[self._y], 0, self._x + 1)
        elif n in (2, 3):
            for row in buf:
                self._erase(row, 0, cols)

    def _modes(self, params: str, on: bool) -> None:
        for p in params.split(";"):
            if p in ("1049", "1047", "47"):
                if on == self._alt_on:
                    continue
                if on:
                    if p == "1049":
                        self._saved = (self._x, self._y)
                    self._alt = [_blank(self.cols, self._now) for _ in range(self.rows)]
                    self._alt_on = True
                else:
                    self._give_all(self._alt)  # the program exits: what it last showed stood
                    self._alt_on = False
                    if p == "1049":
                        self._x, self._y = self._saved
                self._pending_wrap = False

    # -- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The screen as JSON-ready values (see :meth:`from_state`); blank rows are left out."""
        pending, flag = self._decoder.getstate()

        def rows(buf: list[_Row]) -> list[list[Any]]:
            out = []
            for i, r in enumerate(buf):
                if r.carry or r.last_given or any(c != " " for c in r.chars):
                    out.append(
                        [i, "".join(r.chars), r.times, r.wrapped, r.stood_since, r.last_given,
                         r.carry, r.carry_times, r.consumed, r.dirty]
                    )  # fmt: skip
            return out

        return {
            "v": _STATE_VERSION,
            "size": [self.cols, self.rows],
            "stand": self.stand_ms,
            "max": self.max_line_chars,
            "dec": pending.hex(),
            "flag": flag,
            "main": rows(self._main),
            "alt": rows(self._alt),
            "alt_on": self._alt_on,
            "cur": [self._x, self._y, self._pending_wrap],
            "saved": list(self._saved),
            "region": [self._top, self._bottom],
            "parser": [self._state, "".join(self._params)],
        }

    def snapshot(self) -> dict[str, Any]:
        """What stands on the screen, for drawing it again (:mod:`replay.keyframe`): size,
        both buffers' rows (text only), which one is shown, cursor, saved cursor and scroll
        region. Much smaller than :meth:`state` (no times, nothing of the search bookkeeping)."""

        def text(buf: list[_Row]) -> list[str]:
            return ["".join(r.chars) for r in buf]

        return {
            "size": [self.cols, self.rows],
            "main": text(self._main),
            "alt": text(self._alt) if self._alt_on else [],
            "alt_on": self._alt_on,
            "cur": [self._x, self._y, self._pending_wrap],
            "saved": list(self._saved),
            "region": [self._top, self._bottom],
            # Bytes cut in the middle by the snapshot: an escape sequence begun and not ended,
            # and the start of a UTF-8 sequence; written after the screen, the bytes that
            # follow complete them as they did in the recording.
            "pending": (
                _PARSER_REENTRY.get(self._state, "")
                + ("".join(self._params) if self._state == _CSI else "")
            )
            .encode()
            .hex()
            + self._decoder.getstate()[0].hex(),
        }

    @classmethod
    def is_state(cls, st: dict[str, Any]) -> bool:
        return st.get("v") == _STATE_VERSION

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> TimedScreen:
        """A screen continuing exactly where the one that made ``st`` stopped."""
        if not cls.is_state(st):
            raise ValueError(f"unknown screen state version {st.get('v')!r}")
        cols, rows = (int(v) for v in st["size"])
        s = cls(cols, rows, stand_ms=int(st["stand"]), max_line_chars=int(st["max"]))
        s._decoder.setstate((bytes.fromhex(str(st["dec"])), int(st["flag"])))
        for name in ("main", "alt"):
            buf: list[_Row] = getattr(s, f"_{name}")
            for i, chars, times, wrapped, stood, given, carry, carry_times, consumed, dirty in st[
                name
            ]:
                buf[int(i)] = _Row(
                    list(str(chars)),
                    [int(t) for t in times],
                    bool(wrapped),
                    int(stood),
                    None if given is None else str(given),
                    str(carry),
                    [int(t) for t in carry_times],
                    bool(consumed),
                    bool(dirty),
                )
        s._alt_on = bool(st["alt_on"])
        s._x, s._y, s._pending_wrap = int(st["cur"][0]), int(st["cur"][1]), bool(st["cur"][2])
        s._saved = (int(st["saved"][0]), int(st["saved"][1]))
        s._top, s._bottom = int(st["region"][0]), int(st["region"][1])
        s._state, s._params = int(st["parser"][0]), list(str(st["parser"][1]))
        return s


_CsiHandler = Callable[[TimedScreen, list[int], int, str], None]

#: The CSI sequences that move the cursor or change the screen, by final byte.
_CSI_HANDLERS: dict[str, _CsiHandler] = {
    "H": TimedScreen._cup,
    "f": TimedScreen._cup,
    "A": TimedScreen._cuu,
    "B": TimedScreen._cud,
    "e": TimedScreen._cud,
    "C": TimedScreen._cuf,
    "a": TimedScreen._cuf,
    "D": TimedScreen._cub,
    "E": TimedScreen._cnl,
    "F": TimedScreen._cpl,
    "G": TimedScreen._cha,
    "`": TimedScreen._cha,
    "d": TimedScreen._vpa,
    "J": TimedScreen._ed,
    "K": TimedScreen._el,
    "X": TimedScreen._ech,
    "P": TimedScreen._dch,
    "@": TimedScreen._ich,
    "L": TimedScreen._il_dl,
    "M": TimedScreen._il_dl,
    "S": TimedScreen._su,
    "T": TimedScreen._sd,
    "r": TimedScreen._decstbm,
    "s": TimedScreen._save_cursor,
    "u": TimedScreen._restore_cursor,
}
