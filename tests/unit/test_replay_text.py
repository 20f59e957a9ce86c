"""replay.text: terminal bytes to the text a reader saw."""

from __future__ import annotations

from replay.text import TextRenderer, render_text


def test_colour_prompt_escape_sequences_are_stripped() -> None:
    data = b"\x1b[01;32malice@node-1\x1b[00m:\x1b[01;34m~/src\x1b[00m$ make\r\n"
    assert render_text(data) == "alice@node-1:~/src$ make\n"


def test_backspace_erasure_by_a_line_editor_leaves_the_corrected_command() -> None:
    # Typing "rm -rf /tmpp", then BS SPACE BS to erase the extra p, as readline echoes it.
    data = b"$ rm -rf /tmpp\x08 \x08\r\n"
    assert render_text(data) == "$ rm -rf /tmp\n"


def test_carriage_return_overwrites_progress_lines() -> None:
    data = b"downloading  10%\rdownloading  55%\rdownloading 100%\r\ndone\r\n"
    assert render_text(data) == "downloading 100%\ndone\n"


def test_shorter_overwrite_after_cr_keeps_tail_unless_erased() -> None:
    assert render_text(b"abcdef\rXY\n") == "XYcdef\n"
    assert render_text(b"abcdef\rXY\x1b[K\n") == "XY\n"


def test_line_editing_csi_sequences_are_applied() -> None:
    # cursor left 3, delete 1 char, insert 1 blank, cursor right, column absolute
    assert render_text(b"abcdef\x1b[3D\x1b[P\n") == "abcef\n"
    assert render_text(b"abcdef\x1b[3D\x1b[@Z\n") == "abcZdef\n"
    assert render_text(b"ab\x1b[3Cc\n") == "ab   c\n"
    assert render_text(b"abcdef\x1b[2GX\x1b[2X\n") == "aX  ef\n"
    assert render_text(b"abcdef\x1b[3D\x1b[1K!\n") == "   !ef\n"
    assert render_text(b"abcdef\x1b[2K\n") == "\n"


def test_osc_titles_private_modes_and_charset_escapes_are_dropped() -> None:
    data = (
        b"\x1b]0;alice@node: ~\x07\x1b[?2004h\x1b(B\x1b=ok\x1b]2;t\x1b\\!\x07\n"
        b"\x1bP+q544e\x1b\\done\n"
    )
    assert render_text(data) == "ok!\ndone\n"


def test_tabs_move_to_the_next_multiple_of_eight() -> None:
    assert render_text(b"a\tb\tc\n") == "a       b       c\n"


def test_utf8_split_across_feeds_and_escape_split_across_feeds_are_joined() -> None:
    r = TextRenderer()
    out = r.feed(b"caf\xc3") + r.feed(b"\xa9 \x1b[3") + r.feed(b"1mred\x1b[0m\n") + r.finish()
    assert out == "café red\n"


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert render_text(b"a\xffb\n") == "a\ufffdb\n"


def test_feed_returns_only_completed_lines_and_finish_flushes_the_rest() -> None:
    r = TextRenderer()
    assert r.feed(b"one\ntw") == "one\n"
    assert r.feed(b"o") == ""
    assert r.finish() == "two\n"


def test_very_long_lines_are_broken_to_bound_memory() -> None:
    out = render_text(b"x" * 25, max_line_chars=10)
    assert out == "xxxxxxxxxx\nxxxxxxxxxx\nxxxxx\n"
