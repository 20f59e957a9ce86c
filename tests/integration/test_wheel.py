"""The wheel built from the tree holds everything a deployment runs (docs/operations.md):
installed into a fresh venv, away from the source tree, it has every package, migration, rule
file, JSON Schema and front-end asset, and `sessionvault --help`, `serve` and a worker run from
it against the suite's servers. The Dockerfile installs the same packages."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx

from sessionvault.settings import Settings
from tests.integration.conftest import env_for

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sessionvault", "schemas", "ingest", "storage", "replay", "deploy", "api", "siem")


def _tree_copy(dest: Path) -> Path:
    """The files git knows (tracked or not ignored), as they are now: building in place would
    leave build/ and egg-info in the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for name in filter(None, listed):
        src = ROOT / name.decode()
        if src.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.get(url, timeout=2)
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode() if proc.stderr else "") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_wheel_in_a_fresh_venv_has_every_file_and_runs_serve_and_a_worker(
    settings: Settings, tmp_path: Path
) -> None:
    src = _tree_copy(tmp_path / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = (tmp_path / "dist").glob("sessionvault-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names if "/" in n and ".dist-info" not in n} == set(PACKAGES)
    for pattern in (
        "storage/migrations/*.sql",
        "siem/rules/starter/*.yml",
        "schemas/json/*.json",
        "api/console/assets/*",
        "deploy/k8s/base/*.yaml",
        "deploy/k8s/overlays/monitoring/grafana-dashboard.json",
    ):
        want = {p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern) if p.is_file()}
        assert want, pattern
        assert want <= names, (pattern, sorted(want - names))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # The dependencies come from the suite's venv (already installed from the lock); the
    # project itself only from the wheel: nothing of the source tree is on the path.
    deps = sysconfig.get_paths()["purelib"]
    env = {**env_for(settings), "PYTHONPATH": deps, "PYTHONSAFEPATH": "1"}
    exe = str(venv / "bin" / "sessionvault")
    where = subprocess.run(
        [str(python), "-c", "import api, storage; print(api.__file__, storage.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert str(venv) in where, where
    assert str(ROOT) not in where, where
    assert (
        subprocess.run([exe, "--help"], env=env, cwd=tmp_path, capture_output=True).returncode == 0
    )

    api_port, metrics_port = _port(), _port()
    serve = subprocess.Popen(
        [exe, "serve", "--port", str(api_port)], env=env, cwd=tmp_path, stderr=subprocess.PIPE
    )
    worker = subprocess.Popen(
        [exe, "worker", "persist", "--status-every", "0"],
        env={**env, "SESSIONVAULT_METRICS_PORT": str(metrics_port)},
        cwd=tmp_path,
        stderr=subprocess.PIPE,
    )
    try:
        assert _wait(f"http://127.0.0.1:{api_port}/healthz", serve).status_code == 200
        base = f"http://127.0.0.1:{api_port}"
        assert httpx.get(f"{base}/ui/", timeout=10).status_code == 200
        assert httpx.get(f"{base}/ui/assets/console.js", timeout=10).status_code == 200
        assert _wait(f"http://127.0.0.1:{metrics_port}/livez", worker).status_code == 200
        # Until it has joined its group and owns partitions (it reports their lag): stopped
        # mid-join, a member can leave the broker's group state behind for the next test.
        deadline = time.monotonic() + 60
        while "sessionvault_consumer_lag{" not in (
            metrics := httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        ):
            assert time.monotonic() < deadline, metrics[-2000:]
            time.sleep(0.3)
        assert 'sessionvault_worker_stalled{worker="persist"} 0.0' in metrics
    finally:
        for proc in (serve, worker):
            proc.terminate()
            proc.wait(30)
    assert os.path.exists(exe)


def test_the_dockerfile_installs_every_package_from_the_lock_as_non_root() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    for package in PACKAGES:
        assert f"COPY {package} {package}" in text, package
    assert "--require-hashes" in text
    assert "requirements/runtime.txt" in text
    assert "USER 10001" in text
