"""The local broker's object store keeps the two promises tansu's offset assignment relies on:
conditional writes are honoured and a write is atomic. A real server on loopback, real HTTP."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.objectstore import Store, StoreServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    store = Store(tmp_path / "objects")
    srv = StoreServer(("127.0.0.1", 0), store)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/b", tmp_path / "objects"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def _request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_put_if_none_match_star_creates_once_and_answers_412_after(
    server: tuple[str, Path],
) -> None:
    base, _ = server
    assert _request("PUT", f"{base}/k.batch", b"first", {"If-None-Match": "*"})[0] == 200
    status, body, _ = _request("PUT", f"{base}/k.batch", b"second", {"If-None-Match": "*"})
    assert status == 412
    assert b"PreconditionFailed" in body
    assert _request("GET", f"{base}/k.batch")[1] == b"first"


def test_put_if_match_is_a_compare_and_swap_on_the_etag(server: tuple[str, Path]) -> None:
    base, _ = server
    etag0 = _request("PUT", f"{base}/watermark.json", b"0")[2]["ETag"]
    ok = _request("PUT", f"{base}/watermark.json", b"1", {"If-Match": etag0})
    assert ok[0] == 200
    assert ok[2]["ETag"] != etag0
    # A second writer that read the old version loses: nothing changes.
    assert _request("PUT", f"{base}/watermark.json", b"1'", {"If-Match": etag0})[0] == 412
    assert _request("GET", f"{base}/watermark.json")[1] == b"1"
    assert _request("PUT", f"{base}/absent", b"x", {"If-Match": etag0})[0] == 412


def test_racing_creates_of_one_key_let_exactly_one_win(server: tuple[str, Path]) -> None:
    base, _ = server
    results: list[int] = []

    def create(i: int) -> None:
        results.append(_request("PUT", f"{base}/race", b"%d" % i, {"If-None-Match": "*"})[0])

    threads = [threading.Thread(target=create, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [412] * 15


def test_an_upload_cut_off_midway_leaves_no_object(server: tuple[str, Path]) -> None:
    base, root = server
    _request("PUT", f"{base}/old", b"kept")
    port = int(base.split(":")[2].split("/")[0])
    for key in ("torn", "old"):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                f"PUT /b/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
                + b"only ten b"
            )
        # the client is gone (as a broker under kill -9): the server reads a short body
    deadline = time.monotonic() + 5
    while any(p.name.startswith(".tmp-") for p in root.rglob("*")):
        assert time.monotonic() < deadline, "temporary file left behind"
        time.sleep(0.05)
    assert _request("GET", f"{base}/torn")[0] == 404
    assert _request("GET", f"{base}/old")[1] == b"kept"


def test_list_objects_v2_pages_in_key_order_with_prefix_and_delimiter(
    server: tuple[str, Path],
) -> None:
    base, _ = server
    keys = [f"t/p/{i:04d}.batch" for i in range(1203)] + ["t/q/x", "t/w.json", "u"]
    for key in keys:
        _request("PUT", f"{base}/{key}", key.encode())
    listed: list[str] = []
    token = ""
    while True:
        query = "list-type=2&prefix=t/p/" + (f"&continuation-token={token}" if token else "")
        xml = _request("GET", f"{base}?{query}")[1].decode()
        listed += [k.split("</Key>")[0] for k in xml.split("<Key>")[1:]]
        if "<IsTruncated>true</IsTruncated>" not in xml:
            break
        token = xml.split("<NextContinuationToken>")[1].split("<")[0]
    assert listed == sorted(k for k in keys if k.startswith("t/p/"))
    xml = _request("GET", f"{base}?list-type=2&prefix=t/&delimiter=/")[1].decode()
    assert "<Prefix>t/p/</Prefix>" in xml
    assert "<Prefix>t/q/</Prefix>" in xml
    assert "<Key>t/w.json</Key>" in xml
    assert "<Key>t/p/0000.batch</Key>" not in xml


def test_ranges_head_and_delete(server: tuple[str, Path]) -> None:
    base, _ = server
    _request("PUT", f"{base}/r", bytes(range(100)))
    status, body, headers = _request("GET", f"{base}/r", headers={"Range": "bytes=10-19"})
    assert status == 206
    assert body == bytes(range(10, 20))
    assert headers["Content-Range"] == "bytes 10-19/100"
    assert _request("GET", f"{base}/r", headers={"Range": "bytes=-5"})[1] == bytes(range(95, 100))
    status, _, headers = _request("HEAD", f"{base}/r")
    assert status == 200
    assert headers["Content-Length"] == "100"
    assert "Last-Modified" in headers
    assert _request("DELETE", f"{base}/r")[0] == 204
    assert _request("HEAD", f"{base}/r")[0] == 404
