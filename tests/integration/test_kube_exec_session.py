"""A kubectl exec session recorded through the SDK's channel API (every channel, resizes,
non-zero exit) -> Kafka -> persist worker -> replay: byte-exact per channel, exit code
reported; the kube timeline (CLI and API) shows it next to the cluster's API requests."""

from __future__ import annotations

import base64
from collections import defaultdict
from pathlib import Path

import httpx
import orjson

from ingest.sdk import SessionRecorder
from replay.kube import status_for_exit_code
from schemas.models import SessionInfo
from sessionvault.settings import Settings
from tests.integration.api_support import make_token, serve
from tests.integration.conftest import env_for
from tests.integration.import_support import cli, drain, export

EXEC_EVENT = Path("/work/shared/fixtures/k8s-audit/exec_pod.json")

# (clock seconds since start, channel, payload): what a proxy would see on the WebSocket.
MESSAGES: list[tuple[float, int, bytes]] = [
    (0.010, 4, b'{"Width":120,"Height":40}'),
    (0.050, 1, b"root@nginx:/# "),
    (0.300, 0, b"ls /nope; printf '\\377\\376'\r"),
    (0.310, 1, b"ls /nope; printf '\\377\\376'\r\n"),
    (0.320, 2, b"ls: cannot access '/nope': No such file or directory\r\n"),
    (0.330, 1, b"\xff\xfe\x1b[31mred\x1b[0m\r\n"),
    (0.900, 4, b'{"Width":80,"Height":24}'),
    (1.000, 0, b"exit 3\r"),
    (1.010, 2, b"\x00stderr with NUL and bad utf8 \xc3\x28\r\n"),
    (1.020, 1, b"exit\r\n"),
    (1.500, 3, status_for_exit_code(3)),
    (1.510, 255, b"\x01"),
]
STREAM = {0: "i", 1: "o", 2: "e", 3: "x"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(settings: Settings, clock: FakeClock) -> str:
    info = SessionInfo(
        "2018-10-26T13:38:34.500Z",
        80,
        24,
        kind="kube",
        user="minikube-user",
        kubernetes_cluster="minikube",
        command="bash",
    )
    rec = SessionRecorder(settings, info, clock=clock)
    for t, channel, payload in MESSAGES:
        clock.now = 1000.0 + t
        rec.kube_message(bytes([channel]) + payload)
    assert rec.close(flush_timeout_s=30)  # exit code from the error channel's Status
    return rec.sid


def test_kubectl_exec_session_replays_byte_exact_per_channel_with_its_exit_code(
    settings: Settings,
) -> None:
    sid = record(settings, FakeClock())
    drain(settings, [settings.topic_chunks])

    session, js = export(settings, sid, "json")
    assert session.kind == "kube"
    assert session.kubernetes_cluster == "minikube"
    assert session.exit_code == 3
    lines = [orjson.loads(x) for x in js.splitlines()]
    assert lines[0]["exit_code"] == 3
    assert lines[-1]["exit_code"] == 3
    got: dict[str, bytes] = defaultdict(bytes)
    offsets = []
    for line in lines[1:-1]:
        got[line["stream"]] += base64.b64decode(line["data_b64"])
        offsets.append(line["t_ms"])
    want: dict[str, bytes] = defaultdict(bytes)
    for _t, channel, payload in MESSAGES:
        if channel in STREAM:
            want[STREAM[channel]] += payload
    assert got["o"] == want["o"]
    assert got["e"] == want["e"]
    assert got["i"] == want["i"]
    assert got["x"] == want["x"]
    assert got["r"] == b"120x4080x24"
    assert offsets == sorted(offsets)
    assert offsets[-1] == 1500

    # raw = stdout and stderr interleaved in the order they happened.
    _, raw = export(settings, sid, "raw")
    assert raw == b"".join(p for _t, c, p in MESSAGES if c in (1, 2))


def test_kube_timeline_interleaves_requests_and_exec_sessions_with_replay_links(
    settings: Settings,
) -> None:
    sid = record(settings, FakeClock())
    token = make_token(settings, clusters=["minikube"])
    other = make_token(settings, clusters=["elsewhere"])
    auth = {"Authorization": f"Bearer {token}"}
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        body = orjson.dumps(
            {
                "kind": "EventList",
                "apiVersion": "audit.k8s.io/v1",
                "items": [orjson.loads(EXEC_EVENT.read_bytes())],
            }
        )
        assert http.post("/v1/kube/audit/minikube", content=body, headers=auth).status_code == 200
        drain(settings)
        window = {"since": "2018-10-26T00:00:00Z", "until": "2018-10-27T00:00:00Z"}
        resp = http.get("/v1/kube/timeline", params={**window, "group_by": "session"}, headers=auth)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        assert [e["kind"] for e in doc["entries"]] == ["session", "request"]
        sess, req = doc["entries"]
        assert sess["sid"] == sid
        assert sess["exit_code"] == 3
        # A session entry replays from its start, spelled as every other link is.
        assert sess["replay"]["command"] == f"sessionvault play {sid} --start-at 0.000"
        assert (req["verb"], req["subresource"], req["response_code"]) == ("create", "exec", 101)
        assert req["name"] == "nginx-deployment-7998647bdf-phvq7"
        # The exec request happened inside the session: grouped under it.
        assert [(g["key"], len(g["entries"])) for g in doc["groups"]] == [(sid, 2)]
        # The replay link works and returns the session.
        replay = http.get(sess["replay"]["url"], headers=auth)
        assert replay.status_code == 200
        assert b"root@nginx:/# " in replay.content
        # A token bound to another cluster sees neither the requests nor the session.
        blind = http.get(
            "/v1/kube/timeline", params=window, headers={"Authorization": f"Bearer {other}"}
        )
        assert blind.json()["entries"] == []
        hidden = http.get(sess["replay"]["url"], headers={"Authorization": f"Bearer {other}"})
        assert hidden.status_code == 404

    table = cli(
        env_for(settings),
        "kube-timeline",
        "--since",
        window["since"],
        "--until",
        window["until"],
        "--user",
        "minikube-user",
    ).stdout.decode()
    lines = table.splitlines()
    assert len(lines) == 2
    assert f"exec session {sid} bash" in lines[0]
    assert f"sessionvault play {sid}" in lines[0]
    assert "create pods/exec default/nginx-deployment-7998647bdf-phvq7 -> 101" in lines[1]
