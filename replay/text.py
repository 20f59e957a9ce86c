"""Terminal output as the plain text a reader saw. Pure, incremental, bounded memory.

Used by ``export --format text`` and (later) by search indexing of terminal output.

Model: a line-oriented terminal. Escape sequences (CSI, OSC, DCS/SOS/PM/APC strings, two- and
three-byte ESC sequences) are removed; the ones that edit the current line are applied, since
shells' line editors rely on them: carriage return (back to column 0, later characters
overwrite), backspace, TAB (to the next multiple of 8), CSI ``K`` (erase in line), ``C``/``D``
(cursor right/left), ``G`` (column), ``P`` (delete characters), ``@`` (insert blanks), ``X``
(erase characters). Line feed ends the line. Other C0 controls (BEL, ...) are dropped.

Limits: there is no screen, so cursor addressing (full-screen programs such as vim or top) is
not rendered faithfully; every character is one cell (wide CJK characters too). Bytes are
decoded as UTF-8 with U+FFFD for invalid sequences (incrementally, so characters split across
``feed`` calls are joined). Trailing spaces of a line are dropped; a line longer than
``max_line_chars`` is broken there, which bounds memory for output without line feeds.
"""

from __future__ import annotations

import codecs
import re

_ESC = "\x1b"
# Everything _normal does not simply put: C0 controls, DEL, C1 controls (ESC is a C0 control).
_SPECIAL = re.compile("[\x00-\x1f\x7f-\x9f]")
# A complete CSI sequence: ESC [, parameter and intermediate bytes, final byte.
_CSI_SEQ = re.compile("\x1b\\[([\x20-\x3f]*)([\x40-\x7e])")
_NORMAL, _ESCAPE, _CSI, _STRING, _STRING_ESC, _ESC_INTER = range(6)
_MAX_PARAMS = 64
# The CSI final bytes _apply acts on.
_EDITING = frozenset("KCDGP@X")


class TextRenderer:
    """Feed terminal bytes, get back completed lines (each ending in ``\\n``).

    Runs of printable characters (the bulk of real output) are put in one step
    (:meth:`_put_run`) instead of one character at a time; ``_fast = False`` forces the
    character-by-character path, which is the reference the fast path is tested against.
    """

    _fast = True

    def __init__(self, *, max_line_chars: int = 64 * 1024, tab_width: int = 8) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._line: list[str] = []
        self._col = 0
        self._state = _NORMAL
        self._params: list[str] = []
        self._max = max_line_chars
        self._tab = tab_width
        self._out: list[str] = []

    def feed(self, data: bytes) -> str:
        """Process ``data``; return the lines it completed."""
        self._run(self._decoder.decode(data))
        return self._take()

    def finish(self) -> str:
        """Flush: the last, unterminated line (if any) with a ``\\n``."""
        self._run(self._decoder.decode(b"", final=True))
        if self._line:
            self._end_line()
        return self._take()

    def _take(self) -> str:
        out = "".join(self._out)
        self._out.clear()
        return out

    def _end_line(self) -> None:
        self._out.append("".join(self._line).rstrip(" ") + "\n")
        self._line = []
        self._col = 0

    def _put(self, ch: str) -> None:
        if self._col >= self._max:
            self._end_line()
        line = self._line
        if self._col < len(line):
            line[self._col] = ch
        else:
            if self._col > len(line):
                line.extend(" " * (self._col - len(line)))
            line.append(ch)
        self._col += 1

    def _put_run(self, run: str) -> None:
        """``_put`` of every character of ``run`` (printable characters only), in slices."""
        pos, n = 0, len(run)
        while pos < n:
            if self._col >= self._max:
                self._end_line()
            col = self._col
            part = run[pos : pos + max(1, self._max - col)]
            pos += len(part)
            line = self._line
            if col > len(line):
                line.extend(" " * (col - len(line)))
            line[col : col + len(part)] = part
            self._col = col + len(part)

    def _run(self, text: str) -> None:
        if not self._fast:
            self._run_chars(text)
            return
        i, n = 0, len(text)
        search = _SPECIAL.search
        while i < n:
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
                        # The whole sequence at once, as _escape/_csi would take it.
                        params = m.group(1)[:_MAX_PARAMS]
                        self._params = list(params)
                        self._csi_final(m.group(2), params)
                        i = m.end()
                        continue
            # A control character, or a character of an escape sequence: the reference path.
            self._run_chars(text[i])
            i += 1

    def _run_chars(self, text: str) -> None:
        for ch in text:
            state = self._state
            if state == _NORMAL:
                self._normal(ch)
            elif state == _ESCAPE:
                self._escape(ch)
            elif state == _CSI:
                self._csi(ch)
            elif state == _STRING:
                if ch == "\x07":
                    self._state = _NORMAL
                elif ch == _ESC:
                    self._state = _STRING_ESC
            elif state == _STRING_ESC:
                # ESC \ is the string terminator; any other ESC also ends the string and starts
                # a new sequence (what terminals do on a malformed string).
                self._state = _NORMAL
                if ch != "\\":
                    self._escape(ch)
            elif state == _ESC_INTER and not ("\x20" <= ch <= "\x2f"):
                self._state = _NORMAL

    def _normal(self, ch: str) -> None:
        o = ord(ch)
        if o >= 0x20 and o != 0x7F and not (0x80 <= o < 0xA0):
            self._put(ch)
        elif ch == "\n":
            self._end_line()
        elif ch == "\r":
            self._col = 0
        elif ch == "\b":
            self._col = max(0, self._col - 1)
        elif ch == "\t":
            self._col = min(self._max, (self._col // self._tab + 1) * self._tab)
        elif ch == _ESC:
            self._state = _ESCAPE
        elif o == 0x9B:  # C1 CSI
            self._params = []
            self._state = _CSI
        elif o in (0x90, 0x98, 0x9D, 0x9E, 0x9F):  # C1 DCS, SOS, OSC, PM, APC
            self._state = _STRING

    def _escape(self, ch: str) -> None:
        if ch == "[":
            self._params = []
            self._state = _CSI
        elif ch in "]PX^_":
            self._state = _STRING
        elif "\x20" <= ch <= "\x2f":
            self._state = _ESC_INTER
        elif ch == _ESC:
            self._state = _ESCAPE
        else:
            self._state = _NORMAL

    def _csi(self, ch: str) -> None:
        if "\x20" <= ch <= "\x3f":
            if len(self._params) < _MAX_PARAMS:
                self._params.append(ch)
            return
        self._state = _NORMAL
        if not ("\x40" <= ch <= "\x7e"):
            # A control character aborts the sequence; process it normally.
            self._normal(ch)
            return
        self._csi_final(ch, "".join(self._params))

    def _csi_final(self, ch: str, params: str) -> None:
        if ch not in _EDITING:
            return  # colours (SGR) and everything else that does not edit the line
        if params[:1] in ("?", ">", "<", "=") or any("\x20" <= c <= "\x2f" for c in params):
            return  # private modes and intermediates never edit the line
        self._apply(ch, params)

    def _apply(self, final: str, params: str) -> None:
        first = params.split(";", 1)[0]
        n = int(first) if first.isdigit() else 0
        count = max(1, n)
        line, col = self._line, self._col
        if final == "K":
            if n == 0:
                del line[col:]
            elif n == 1:
                for i in range(min(col + 1, len(line))):
                    line[i] = " "
            elif n == 2:
                line.clear()
        elif final == "C":
            self._col = min(self._max, col + count)
        elif final == "D":
            self._col = max(0, col - count)
        elif final == "G":
            self._col = min(self._max, count - 1)
        elif final == "P":
            del line[col : col + count]
        elif final == "@":
            if col < len(line):
                line[col:col] = [" "] * min(count, self._max)
                del line[self._max :]
        elif final == "X":
            for i in range(col, min(col + count, len(line))):
                line[i] = " "


def render_text(data: bytes, *, max_line_chars: int = 64 * 1024) -> str:
    """All of ``data`` as text (see the module docstring for the rules)."""
    r = TextRenderer(max_line_chars=max_line_chars)
    return r.feed(data) + r.finish()


class TimedTextRenderer(TextRenderer):
    """A :class:`TextRenderer` that also knows WHEN each character of a line was written.

    For search: :meth:`feed_at` takes the frame's offset (ms) and returns the lines it completed
    as ``(text, times)``, ``times[i]`` being the offset at which ``text[i]`` was last written.
    Lines are the same as :class:`TextRenderer` gives, without the ``\\n``. The state can be
    saved and restored (:meth:`state` / :meth:`from_state`), so rendering can continue in
    another process exactly where it stopped.
    """

    def __init__(self, *, max_line_chars: int = 64 * 1024, tab_width: int = 8) -> None:
        super().__init__(max_line_chars=max_line_chars, tab_width=tab_width)
        self._times: list[int] = []
        self._now = 0
        self._lines: list[tuple[str, list[int]]] = []

    def feed_at(self, data: bytes, offset_ms: int) -> list[tuple[str, list[int]]]:
        """Process ``data`` written at ``offset_ms``; return the lines it completed."""
        self._now = offset_ms
        self._run(self._decoder.decode(data))
        return self._take_lines()

    def finish_lines(self) -> list[tuple[str, list[int]]]:
        """Flush the last, unterminated line (if any)."""
        self._run(self._decoder.decode(b"", final=True))
        if self._line:
            self._end_line()
        return self._take_lines()

    def _take_lines(self) -> list[tuple[str, list[int]]]:
        out, self._lines = self._lines, []
        self._out.clear()
        return out

    def _end_line(self) -> None:
        text = "".join(self._line).rstrip(" ")
        self._lines.append((text, self._times[: len(text)]))
        self._line = []
        self._times = []
        self._col = 0

    def _put(self, ch: str) -> None:
        if self._col >= self._max:
            self._end_line()
        line, times = self._line, self._times
        if self._col < len(line):
            line[self._col] = ch
            times[self._col] = self._now
        else:
            if self._col > len(line):
                pad = self._col - len(line)
                line.extend(" " * pad)
                times.extend([self._now] * pad)
            line.append(ch)
            times.append(self._now)
        self._col += 1

    def _put_run(self, run: str) -> None:
        pos, n, now = 0, len(run), self._now
        while pos < n:
            if self._col >= self._max:
                self._end_line()
            col = self._col
            part = run[pos : pos + max(1, self._max - col)]
            k = len(part)
            pos += k
            line, times = self._line, self._times
            if col > len(line):
                pad = col - len(line)
                line.extend(" " * pad)
                times.extend([now] * pad)
            line[col : col + k] = part
            times[col : col + k] = [now] * k
            self._col = col + k

    def _apply(self, final: str, params: str) -> None:
        first = params.split(";", 1)[0]
        n = int(first) if first.isdigit() else 0
        count = max(1, n)
        col, times, now = self._col, self._times, self._now
        if final == "K":
            if n == 0:
                del times[col:]
            elif n == 1:
                for i in range(min(col + 1, len(times))):
                    times[i] = now
            elif n == 2:
                times.clear()
        elif final == "P":
            del times[col : col + count]
        elif final == "@":
            if col < len(times):
                times[col:col] = [now] * min(count, self._max)
                del times[self._max :]
        elif final == "X":
            for i in range(col, min(col + count, len(times))):
                times[i] = now
        super()._apply(final, params)

    def state(self) -> dict[str, object]:
        """The renderer's state as JSON-ready values (see :meth:`from_state`)."""
        pending, flag = self._decoder.getstate()
        return {
            "v": 1,
            "max": self._max,
            "tab": self._tab,
            "dec": pending.hex(),
            "flag": flag,
            "line": "".join(self._line),
            "times": self._times,
            "col": self._col,
            "state": self._state,
            "params": "".join(self._params),
        }

    @classmethod
    def from_state(cls, st: dict[str, object]) -> TimedTextRenderer:
        """A renderer continuing exactly where the one that made ``st`` stopped."""
        if st.get("v") != 1:
            raise ValueError(f"unknown text renderer state version {st.get('v')!r}")
        r = cls(max_line_chars=int(st["max"]), tab_width=int(st["tab"]))  # type: ignore[call-overload]
        r._decoder.setstate((bytes.fromhex(str(st["dec"])), int(st["flag"])))  # type: ignore[call-overload]
        r._line = list(str(st["line"]))
        r._times = [int(t) for t in st["times"]]  # type: ignore[attr-defined]
        r._col = int(st["col"])  # type: ignore[call-overload]
        r._state = int(st["state"])  # type: ignore[call-overload]
        r._params = list(str(st["params"]))
        return r
