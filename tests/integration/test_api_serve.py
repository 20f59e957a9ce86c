"""``sessionvault serve`` as a user runs it: ``--port 0`` takes a free port and announces the
URL that answers; a port already in use is one clear error line and no URL."""

from __future__ import annotations

import re
import subprocess
import time

import httpx

from tests.integration.import_support import SESSIONVAULT


def test_serve_port_zero_announces_the_listening_url_and_a_taken_port_is_one_error_line(
    sv_env: dict[str, str],
) -> None:
    proc = subprocess.Popen(
        [SESSIONVAULT, "serve", "--port", "0"], env=sv_env, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        m = re.fullmatch(r"sessionvault API on (http://127\.0\.0\.1:(\d+))\n", line)
        assert m, line
        url, port = m.group(1), m.group(2)
        assert port != "0"
        assert proc.stderr.readline().decode() == f"web console on {url}/ui/\n"
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the announced URL never answered"
                time.sleep(0.2)
        # The console's page and bundle come from the installed package, under a strict CSP.
        page = httpx.get(f"{url}/ui/", timeout=10)
        assert page.status_code == 200
        assert '<script type="module" src="/ui/assets/console.js">' in page.text
        assert "script-src 'self';" in page.headers["content-security-policy"]
        bundle = httpx.get(f"{url}/ui/assets/console.js", timeout=10)
        assert bundle.headers["content-type"].startswith("text/javascript")
        assert httpx.get(f"{url}/ui/assets/..%2Fbuild_info.py", timeout=10).status_code == 404
        taken = subprocess.run(
            [SESSIONVAULT, "serve", "--port", port],
            env=sv_env,
            capture_output=True,
            timeout=60,
        )
        assert taken.returncode == 1
        err = taken.stderr.decode()
        assert "API on" not in err
        assert "console on" not in err
        assert err.count("\n") == 1, err
        assert f"cannot listen on 127.0.0.1:{port}" in err
    finally:
        proc.terminate()
        proc.wait(timeout=30)
