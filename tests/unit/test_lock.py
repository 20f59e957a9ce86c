"""The lock is what gets installed, and it agrees with pyproject.toml: every dependency of
every extra is pinned (with hashes) at a version its range admits, the exported requirement
files and uv.lock name the same versions, and the build backend is locked too."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$")


def pins(name: str) -> dict[str, str]:
    """{package: version} of requirements/NAME.txt; each pin must carry sha256 hashes."""
    lines = (ROOT / "requirements" / f"{name}.txt").read_text().splitlines()
    out: dict[str, str] = {}
    for i, line in enumerate(lines):
        m = _PIN.match(line)
        if not m:
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        assert "--hash=sha256:" in following, f"{line}: no hash"
        out[str(canonicalize_name(m.group(1)))] = m.group(2)
    assert out, f"requirements/{name}.txt pins nothing"
    return out


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(*extras: str) -> list[Requirement]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if canonicalize_name(r.name) != "sessionvault"]


@pytest.mark.parametrize(
    ("lock", "extras"), [("dev", ("dev", "local")), ("local", ("local",)), ("runtime", ())]
)
def test_every_declared_dependency_is_pinned_at_a_version_its_range_admits(
    lock: str, extras: tuple[str, ...]
) -> None:
    pinned = pins(lock)
    for req in requirements(*extras):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req} is not in requirements/{lock}.txt: run make lock"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"requirements/{lock}.txt pins {name}=={pinned[name]} outside {req.specifier}"
        )


def test_the_build_backend_is_locked_so_an_editable_install_fetches_nothing_unpinned() -> None:
    build = pyproject()["build-system"]
    assert isinstance(build, dict)
    for lock in ("dev", "local", "runtime"):
        pinned = pins(lock)
        for spec in build["requires"]:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            assert name in pinned, f"build requirement {name} missing from {lock}.txt"
            assert req.specifier.contains(pinned[name])


def test_exported_requirement_files_name_the_versions_of_uv_lock() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked: dict[str, str] = {
        str(canonicalize_name(p["name"])): p["version"]
        for p in lock["package"]
        if p.get("source", {}).get("editable") is None and "version" in p
    }
    for name in ("dev", "local", "runtime"):
        for package, version in pins(name).items():
            assert locked.get(package) == version, (
                f"requirements/{name}.txt has {package}=={version}, uv.lock"
                f" {locked.get(package)}: run make export-lock"
            )
    # dev installs everything local and runtime do, at the same versions.
    dev = pins("dev")
    assert pins("local").items() <= dev.items()
    assert pins("runtime").items() <= pins("local").items()
