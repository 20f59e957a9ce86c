"""Full-screen programs are searchable as they were on screen: a real session recorded by
``sessionvault record`` running vi (text typed in insert mode), less (paging a file), top (its
screens redrawn in place) and tmux (its own scroll region and status line), stored by the real
persist worker, rendered by the segmenter and searched through PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from sessionvault.settings import Settings
from storage.search.model import Query, SegmentHit
from storage.search.pg import PgSearchBackend
from tests.integration.conftest import env_for
from tests.integration.persist_helpers import run_segmenter_until_caught_up, stored_payloads
from tests.integration.test_record_e2e import PtyDriver, running_persist_worker, wait_status

pytestmark = pytest.mark.integration

TYPED = "kubectl delete ns staging --force"

SCRIPT = r"""
seq -f 'alpha-line-%g' 1 120 > "$HOME/pages.txt"
printf 'ready-for-vi\n'
vi -u NONE -c 'set nocompatible' "$HOME/notes.txt"
printf 'ready-for-less\n'
less "$HOME/pages.txt"
printf 'ready-for-top\n'
top -d 1 -n 3 -w 100
printf 'ready-for-tmux\n'
tmux -L "sv-$$" -f /dev/null new-session -x 100 -y 30 \
    "printf 'inside-tmux-%s\n' marker; sleep 1.5"
printf 'all-done\n'
"""


def _search(settings: Settings, text: str) -> list[SegmentHit]:
    async def run() -> list[SegmentHit]:
        backend = PgSearchBackend(settings.postgres_dsn.get())
        try:
            page = await backend.search(Query(tenant=settings.tenant, text=(text,), limit=500))
        finally:
            await backend.close()
        return [h for h in page.hits if isinstance(h, SegmentHit)]

    return asyncio.run(run())


def test_vi_less_top_and_tmux_sessions_are_searchable_row_by_row_as_they_stood(
    settings: Settings, tmp_path: Path
) -> None:
    for program in ("vi", "less", "top", "tmux", "seq"):
        assert shutil.which(program), f"{program} is needed (scripts/system-packages.sh)"
    sv = str(Path(sys.executable).parent / "sessionvault")
    env = env_for(settings)
    env.update(TERM="xterm-256color", LC_ALL="C.UTF-8", HOME=str(tmp_path))
    sid = "fs-" + os.urandom(4).hex()
    with running_persist_worker(settings):
        drv = PtyDriver(
            [sv, "record", "-q", "--sid", sid, "--", "sh", "-c", SCRIPT], env, cols=100, rows=30
        )
        drv.expect(b"ready-for-vi")
        drv.read_for(1.0)
        drv.send(b"i")
        drv.read_for(0.3)
        for ch in TYPED.encode():
            drv.send(bytes([ch]))
            drv.read_for(0.02)
        drv.read_for(0.5)
        drv.send(b"\x1b:q!\r")
        drv.expect(b"ready-for-less")
        drv.read_for(1.0)
        drv.send(b" ")  # the second page
        drv.read_for(0.8)
        drv.send(b"q")
        drv.expect(b"ready-for-top")
        drv.expect(b"ready-for-tmux", timeout=30)
        drv.expect(b"all-done", timeout=30)
        assert drv.wait() == 0
        wait_status(settings.postgres_dsn.get(), sid, "closed")
    asyncio.run(run_segmenter_until_caught_up(settings))

    # vi: what was typed in insert mode is one row, found where it was typed: after vi drew
    # its screen and before it exited (offsets read from the stored frames, not from search).
    frames = asyncio.run(stored_payloads(settings.postgres_dsn.get()))[sid][2]
    vi_from = next(f.offset_ms for f in frames if b"ready-for-vi" in f.data)
    vi_to = next(f.offset_ms for f in frames if b"ready-for-less" in f.data)
    hits = [h for h in _search(settings, TYPED) if h.sid == sid]
    assert len(hits) == 1, [h.text for h in hits]
    assert hits[0].text.strip() == TYPED
    assert hits[0].offset_ms is not None
    assert vi_from + 1000 <= hits[0].offset_ms < vi_to, (vi_from, hits[0].offset_ms, vi_to)
    # Rows are never run together: "--force" and vi's "~" filler never stood on one row.
    assert not [h for h in _search(settings, "force~") if h.sid == sid]
    # less: each line of both pages shown is its own row; the lines never shown are absent.
    for n in (1, 29, 31, 55):
        found = [h.text for h in _search(settings, f"alpha-line-{n}") if h.sid == sid]
        assert f"alpha-line-{n}" in found, (n, found)
    assert not [h for h in _search(settings, "alpha-line-110") if h.sid == sid]
    # top: its header rows are found, and a row never holds two of them.
    load = [h.text for h in _search(settings, "load average") if h.sid == sid]
    assert load
    assert all("PID" not in t and "Tasks:" not in t for t in load), load
    assert [h for h in _search(settings, "PID USER") if h.sid == sid]
    # tmux: the program's output inside tmux's own screen, and tmux's status line.
    inside = [h.text for h in _search(settings, "inside-tmux-marker") if h.sid == sid]
    assert any(t.strip() == "inside-tmux-marker" for t in inside), inside
