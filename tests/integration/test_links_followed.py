"""Every replay link the system emits, followed against the real API.

A recorded session in which ``curl ... | sudo bash`` is typed raises a Sigma alert; the alert,
its rendering in every SIEM format, and the search hits of both backends (PostgreSQL and
OpenSearch) each carry a CLI command (``sessionvault play SID --start-at S``) and an API path.
For every link found:

* the command and the API path name the same whole millisecond;
* ``GET`` of the API path with a read token answers 200 with an asciicast v2 that is the screen
  at that moment: every output frame up to it at time 0, each later one at its offset minus the
  moment, computed here from the frames stored in PostgreSQL (not by the export code);
* the CLI ``export --start-at S`` of the same session gives the same bytes as the API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson

from schemas.models import Frame, Stream
from sessionvault.settings import Settings
from siem.formats import FORMATS
from storage import pg
from storage.reader import iter_frames
from tests.integration.api_support import make_token, serve
from tests.integration.import_support import cli, drain
from tests.integration.search_front_support import _reindex
from tests.integration.test_siem_detect import (
    _record_curl_session,
    run_detect_until_drained,
    stored_alerts,
)

_CMD = re.compile(r"^sessionvault play (\S+) --start-at (\d+)\.(\d{3})$")


@dataclasses.dataclass(frozen=True)
class Link:
    source: str
    command: str
    api: str


def _cef_ext(line: str) -> dict[str, str]:
    """CEF extension ``k=v`` pairs (values unescaped)."""
    ext = line.split("|", 7)[7]
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9]+)=", ext))
    out = {}
    for m, nxt in zip(keys, [*keys[1:], None], strict=True):
        value = ext[m.end() : nxt.start() if nxt else len(ext)]
        out[m.group(1)] = re.sub(r"\\(.)", r"\1", value)
    return out


def links_in_formats(alert: dict[str, Any]) -> list[Link]:
    """The replay links of ``alert`` as each SIEM format renders them."""
    found = []
    for name, render in FORMATS.items():
        payload = render(alert)
        assert payload is not None, f"{name} has no mapping for an alert"
        text = payload.decode()
        if name == "native":
            doc = orjson.loads(text)
            found.append(Link(name, doc["replay"], doc["replay_api"]))
        elif name == "ecs":
            doc = orjson.loads(text)
            found.append(Link(name, doc["sessionvault"]["replay"], doc["event"]["reference"]))
        elif name == "ocsf":
            doc = orjson.loads(text)
            found.append(Link(name, doc["unmapped"]["replay"], doc["finding_info"]["src_url"]))
        elif name == "cef":
            ext = _cef_ext(text)
            assert (ext["cs5Label"], ext["cs6Label"]) == ("replay", "replay_api")
            found.append(Link(name, ext["cs5"], ext["cs6"]))
        else:
            raise AssertionError(f"format {name} is not covered by this test: add it")
    return found


def moment_of(link: Link) -> tuple[str, int]:
    """(sid, ms) named by the link; the command and the API path must agree."""
    m = _CMD.match(link.command)
    assert m, f"{link.source}: {link.command!r}"
    sid, ms = m.group(1), int(m.group(2)) * 1000 + int(m.group(3))
    url = urlsplit(link.api)
    assert url.path == f"/v1/sessions/{sid}/export", link
    query = parse_qs(url.query)
    assert query["format"] == ["asciicast-v2"], link
    assert query["start_ms"] == [str(ms)], f"{link.source}: command and API disagree: {link}"
    return sid, ms


def stored_output(settings: Settings, sid: str) -> list[Frame]:
    async def read() -> list[Frame]:
        pool = await pg.create_pool(settings.postgres_dsn.get())
        try:
            return [
                f
                async for f in iter_frames(pool, settings.tenant, sid)
                if f.stream in (Stream.OUTPUT, Stream.STDERR)
            ]
        finally:
            await pool.close()

    return asyncio.run(read())


def cast_output(body: bytes) -> list[tuple[int, bytes]]:
    """(ms, data) of each output frame of an asciicast v2 document."""
    lines = body.decode().splitlines()
    assert orjson.loads(lines[0])["version"] == 2
    frames = [orjson.loads(line) for line in lines[1:]]
    return [(round(t * 1000), d.encode()) for t, code, d in frames if code == "o"]


def test_every_replay_link_in_alerts_siem_formats_and_search_hits_opens_the_right_moment(
    settings: Settings, sv_env: dict[str, str]
) -> None:
    typed = _record_curl_session(settings)
    assert run_detect_until_drained(settings).stats.output_alerts == 1
    drain(settings, [settings.topic_events])
    (alert,) = stored_alerts(settings)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    asyncio.run(_reindex(settings.postgres_dsn.get(), settings.opensearch_url, prefix))

    links = [Link("alert", alert["replay"], alert["replay_api"]), *links_in_formats(alert)]
    # `sessionvault alerts` lists it with the same replay command (table) and links (json).
    window = ("--since", "2026-03-01T00:00:00Z", "--until", "2026-04-01T00:00:00Z")
    table = cli(sv_env, "alerts", *window).stdout.decode().splitlines()
    assert table[0].split()[:3] == ["TIME", "(UTC)", "LEVEL"]
    assert len(table) == 2, table
    assert table[1].endswith(alert["replay"])
    assert alert["title"] in table[1]
    (page,) = [orjson.loads(line) for line in cli(sv_env, "alerts", *window, "--format", "json")
               .stdout.splitlines()]  # fmt: skip
    (listed,) = page["hits"]
    links.append(Link("alerts CLI", listed["fields"]["replay"], listed["fields"]["replay_api"]))
    token = make_token(settings, scopes=("read",))
    auth = {"Authorization": f"Bearer {token}"}
    backends = {
        "postgres": dataclasses.replace(settings, opensearch_url=""),
        "opensearch": dataclasses.replace(settings, opensearch_index_prefix=prefix),
    }
    for backend, served in backends.items():
        with serve(served) as base:
            hits = []
            # The typed command as terminal output, and the alert as an audit event.
            for query in ({"text": "curl"}, {"event": "alert.sigma"}):
                r = httpx.get(f"{base}/v1/search", params=query, headers=auth, timeout=30)
                assert r.status_code == 200, r.text
                assert r.json()["backend"] == backend
                hits += [h for h in r.json()["hits"] if h.get("sid") == typed.sid]
            assert sorted(h["kind"] for h in hits) == ["event", "output"], hits
            links += [
                Link(f"{backend} {h['kind']} hit", h["replay"], h["replay_api"]) for h in hits
            ]

    frames = stored_output(settings, typed.sid)
    started_ms = int(datetime.fromisoformat(typed.started_at).timestamp() * 1000)
    # The alert opens where the "c" of curl was echoed, in every format.
    assert {moment_of(link) for link in links[:6]} == {(typed.sid, alert["offset_ms"])}
    with serve(settings) as base, httpx.Client(base_url=base, headers=auth, timeout=30) as http:
        for link in links:
            sid, ms = moment_of(link)
            r = http.get(link.api)
            assert r.status_code == 200, f"{link.source}: {link.api} -> {r.status_code} {r.text}"
            assert r.headers["content-type"].startswith("application/x-asciicast")
            want = [(max(0, f.offset_ms - ms), f.data) for f in frames]
            assert cast_output(r.content) == want, link.source
            # Time 0 of the cast is the moment's wall-clock second.
            header = orjson.loads(r.content.splitlines()[0])
            assert header["timestamp"] == (started_ms + ms) // 1000, link.source
            seconds = link.command.rsplit(" ", 1)[1]
            exported = cli(sv_env, "export", sid, "--format", "asciicast-v2", "--start-at", seconds)
            assert exported.stdout == r.content, f"{link.source}: CLI and API differ"
    # The alert's moment is the echo of the "c" of curl: the screen there ends with it.
    ms = alert["offset_ms"]
    assert b"".join(f.data for f in frames if f.offset_ms <= ms).endswith(b"c")
    assert b"".join(f.data for f in frames if f.offset_ms > ms).startswith(b"url")
