"""A command typed inside a recorded session is found by free-text search on PostgreSQL.

The session is recorded through the real SDK recorder (tests/integration/typed_session.py),
persisted by the real persist worker from the real broker, and searched through
SearchService over PgSearchBackend: the corrected command is found, at the time its last
character appeared; the uncorrected typo is not; the hit's replay link seeks there.
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.persist import run_persist_worker
from ingest.segmenter import run_segmenter
from replay.frames import parse_offset
from sessionvault.settings import Settings
from storage.search.model import KIND_OUTPUT, Query, SegmentHit
from storage.search.pg import PgSearchBackend
from storage.search.service import SearchService
from tests.integration.conftest import env_for
from tests.integration.persist_helpers import drained, segments_caught_up
from tests.integration.typed_session import (
    COMMAND,
    ERASE_BLANK,
    ERASE_EOL,
    TYPO,
    TypedSession,
    record_typed_session,
)

pytestmark = pytest.mark.integration


async def _persist_and_search(
    settings: Settings, sessions: list[TypedSession], timeout_s: float = 60.0
) -> dict[str, list[SegmentHit]]:
    """Run the persist worker and the segmenter until the chunks topic is drained and its
    output rendered; return, per session, the output hits of a search for :data:`COMMAND`."""
    stop = asyncio.Event()
    worker = asyncio.create_task(run_persist_worker(settings, stop=stop))
    segmenter = asyncio.create_task(run_segmenter(settings, stop=stop))
    backend = PgSearchBackend(settings.postgres_dsn.get())
    service = SearchService(backend)
    try:
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(drained, settings, [settings.topic_chunks]):
            if worker.done():
                worker.result()
                raise AssertionError("the persist worker stopped by itself")
            if time.monotonic() > deadline:
                raise AssertionError(f"chunks not persisted within {timeout_s}s")
            await asyncio.sleep(0.5)
        await segments_caught_up(settings, timeout_s=timeout_s)
        found: dict[str, list[SegmentHit]] = {}
        for s in sessions:
            query = Query(tenant=settings.tenant, text=(COMMAND,), sid=(s.sid,))
            page = await service.search(query)
            assert page.backend == "postgres"
            assert page.reason == "OpenSearch is not configured"
            found[s.sid] = [h for h in page.hits if isinstance(h, SegmentHit)]
            assert len(found[s.sid]) == len(page.hits), "only output hits expected"
        return found
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(worker, segmenter), 30)
        await backend.close()


def test_typed_command_with_backspace_correction_is_found_at_the_time_it_was_typed(
    settings: Settings,
) -> None:
    sessions = [
        record_typed_session(settings, erase=ERASE_BLANK, seed=1),
        record_typed_session(settings, erase=ERASE_EOL, seed=2),
    ]
    assert len({s.sid for s in sessions}) == 2
    found = asyncio.run(_persist_and_search(settings, sessions))
    for s in sessions:
        hits = found[s.sid]
        assert len(hits) == 1, [h.text for h in hits]
        hit = hits[0]
        assert hit.kind == KIND_OUTPUT
        assert hit.sid == s.sid
        assert hit.tenant == settings.tenant
        # What the reader saw: prompt colours stripped, the typo corrected.
        assert hit.text == f"alice@web-1:~/src$ {COMMAND}"
        assert hit.offset_ms is not None
        assert abs(hit.offset_ms - s.offset_ms) <= 1000, (hit.offset_ms, s.offset_ms)


def test_uncorrected_typo_is_not_found_in_the_output(settings: Settings) -> None:
    s = record_typed_session(settings, seed=3)

    async def go() -> tuple[int, int, int]:
        found = await _persist_and_search(settings, [s])
        service = SearchService(PgSearchBackend(settings.postgres_dsn.get()))
        try:
            typo = await service.search(Query(tenant=settings.tenant, text=(TYPO,)))
            # The same session's other output is searchable (the negative is not vacuous).
            other = await service.search(
                Query(tenant=settings.tenant, text=("removed directory",), sid=(s.sid,))
            )
        finally:
            await service.pg.close()
        return len(found[s.sid]), len(typo.hits), len(other.hits)

    command_hits, typo_hits, other_hits = asyncio.run(go())
    assert command_hits == 1
    assert other_hits == 1
    assert typo_hits == 0


def test_typed_command_hit_links_to_play_at_its_offset_and_the_link_replays(
    settings: Settings,
) -> None:
    s = record_typed_session(settings, seed=5)
    hit = asyncio.run(_persist_and_search(settings, [s]))[s.sid][0]
    assert hit.offset_ms is not None
    link = hit.replay
    assert link is not None
    argv = shlex.split(link)
    assert argv[:4] == ["sessionvault", "play", s.sid, "--start-at"], link
    assert len(argv) == 5, link
    # The link's T is read back with the parser `play` itself uses.
    t_ms = parse_offset(argv[4])
    assert abs(t_ms - hit.offset_ms) <= 1, (argv[4], hit.offset_ms)
    assert abs(t_ms - s.offset_ms) <= 1000, (argv[4], s.offset_ms)
    assert hit.replay_api is not None
    assert f"/v1/sessions/{s.sid}/" in hit.replay_api
    # Follow the link (fast-forwarded): it replays this session's output.
    proc = subprocess.run(
        [str(Path(sys.executable).parent / argv[0]), *argv[1:], "--speed", "1000"],
        env=env_for(settings),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"rm -rg\b \bf /tmp/x\r\n" in proc.stdout
    assert b"removed directory '/tmp/x'" in proc.stdout
