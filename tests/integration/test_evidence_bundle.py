"""Evidence bundles on the real servers: ``export --format bundle`` of a stored session, then
checked offline in clean processes (no database, no settings) by ``verify-bundle`` and by the
standalone verifier in docs/evidence.md; a flipped byte, a removed event and a manifest signed
by an unknown key each fail with a precise message."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.evidence import b64, canonical, key_id, sha256_hex
from schemas.models import Stream
from sessionvault.settings import Settings
from storage.keyring import public_key_document
from tests.integration.evidence_support import keys_for, store

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "sessionvault"


def _standalone_verifier(tmp: Path) -> Path:
    text = (ROOT / "docs" / "evidence.md").read_text()
    block = text.split("<!-- standalone-verifier -->")[1].split("<!-- /standalone-verifier -->")[0]
    code = block.split("```python\n", 1)[1].rsplit("```", 1)[0]
    path = tmp / "verify_bundle.py"
    path.write_text(code)
    return path


def _clean_env(tmp: Path) -> dict[str, str]:
    """No SESSIONVAULT_* and an empty home: nothing can reach a database or a key file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONVAULT_")}
    empty = tmp / "nohome"
    empty.mkdir(exist_ok=True)
    env["HOME"] = str(empty)
    env["SESSIONVAULT_HOME"] = str(empty)
    return env


def _rewrite(src: Path, dst: Path, changes: dict[str, bytes]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, changes.get(name, zin.read(name)))


def _sums(z: zipfile.ZipFile, changes: dict[str, bytes]) -> bytes:
    """SHA256SUMS as a forger would recompute it after ``changes`` (they cannot re-sign it)."""
    out = []
    for line in z.read("SHA256SUMS").decode().splitlines():
        digest, name = line.split("  ", 1)
        if name in changes:
            digest = sha256_hex(changes[name])
        out.append(f"{digest}  {name}\n")
    return "".join(out).encode()


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def test_a_bundle_verifies_offline_and_each_kind_of_tampering_fails_precisely(
    settings: Settings, sv_env: dict[str, str], tmp_path: Path
) -> None:
    sessions = asyncio.run(store(settings, 1, events_per_session=4))
    keys = keys_for(settings)
    bundle = tmp_path / "ev-0.zip"
    done = _run([str(EXE), "export", "ev-0", "--format", "bundle", "-o", str(bundle)], sv_env)
    assert done.returncode == 0, done.stderr
    assert "verify-bundle" in done.stderr
    trusted = tmp_path / "keys.json"
    trusted.write_bytes(orjson.dumps(public_key_document(keys)))
    env = _clean_env(tmp_path)
    verifier = _standalone_verifier(tmp_path)

    ok = _run([str(EXE), "verify-bundle", str(bundle), "--keys", str(trusted)], env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "6 chunks rebuild the hash chain" in ok.stdout
    assert "4 events match the manifest's events_root" in ok.stdout
    alone = _run([sys.executable, str(verifier), str(bundle), str(trusted)], env)
    assert alone.returncode == 0, alone.stderr
    assert "OK: session ev-0" in alone.stdout
    # The recording inside is the session, byte for byte.
    with zipfile.ZipFile(bundle) as z:
        raw = z.read("recording.raw")
        expected = b"".join(
            f.data for f in sessions[0].frames if f.stream in (Stream.OUTPUT, Stream.STDERR)
        )
        assert raw == expected

        # 1. one byte of the recording flipped
        flipped = bytes([raw[0] ^ 0x20]) + raw[1:]
        one = tmp_path / "flipped.zip"
        _rewrite(bundle, one, {"recording.raw": flipped})
        # 2. one event removed, SHA256SUMS recomputed by the forger
        lines = z.read("events.jsonl").splitlines(keepends=True)
        removed_uid = json.loads(lines[1])["uid"]
        fewer = b"".join(lines[:1] + lines[2:])
        two = tmp_path / "event-removed.zip"
        _rewrite(
            bundle, two, {"events.jsonl": fewer, "SHA256SUMS": _sums(z, {"events.jsonl": fewer})}
        )
        # 3. the manifest re-signed by a key the installation never had (and put in keys.json)
        rogue = Ed25519PrivateKey.generate()
        rogue_pub = rogue.public_key().public_bytes_raw()
        manifest = json.loads(z.read("manifest.json"))
        body = {**manifest["body"], "kid": key_id(rogue_pub)}
        forged = orjson.dumps({"body": body, "sig": b64(rogue.sign(canonical(body)))})
        rogue_keys = orjson.dumps(
            {"keys": [{"kid": key_id(rogue_pub), "alg": "Ed25519", "public": b64(rogue_pub)}]}
        )
        three = tmp_path / "rogue.zip"
        changes = {"manifest.json": forged, "keys.json": rogue_keys}
        # A thorough forger re-signs SHA256SUMS with the rogue key too.
        sums = _sums(z, changes)
        sig_body = {**json.loads(z.read("SHA256SUMS.sig"))["body"], "kid": key_id(rogue_pub)}
        sig_body["sha256sums"] = sha256_hex(sums)
        rogue_sig = {"body": sig_body, "sig": b64(rogue.sign(canonical(sig_body)))}
        _rewrite(
            bundle,
            three,
            {**changes, "SHA256SUMS": sums, "SHA256SUMS.sig": orjson.dumps(rogue_sig)},
        )

    cases = (
        (
            one,
            ["recording.raw was altered: its SHA-256 does not match SHA256SUMS"],
            "recording.raw was altered",
        ),
        (
            two,
            [
                "SHA256SUMS was altered: it does not match its signature",
                f"event {removed_uid} (in the signed manifest) is not in events.jsonl",
            ],
            "SHA256SUMS does not match its signature",
        ),
        (
            three,
            [f"manifest: signed by key '{key_id(rogue_pub)}', which is not among the trusted keys"],
            "not among the trusted keys",
        ),
    )
    for path, messages, standalone in cases:
        bad = _run([str(EXE), "verify-bundle", str(path), "--keys", str(trusted)], env)
        assert bad.returncode == 1, (path, bad.stdout)
        for m in messages:
            assert f"FAILED  {m}" in bad.stdout, (path, bad.stdout)
        alone = _run([sys.executable, str(verifier), str(path), str(trusted)], env)
        assert alone.returncode != 0, (path, alone.stdout)
        assert standalone in alone.stderr, (path, alone.stderr)
    # Without --keys the bundle's own keys are used, and the report says so.
    own = _run([str(EXE), "verify-bundle", str(bundle)], env)
    assert own.returncode == 0
    assert "keys were taken from the bundle itself" in own.stdout
    assert base64.b64decode(json.loads(trusted.read_text())["keys"][0]["public"])
