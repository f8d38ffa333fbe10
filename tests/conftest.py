"""Shared fixtures. Real tools only: a missing tool skips locally and fails in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.paths import PROJECT_ROOT, alpine_fixtures, shared_dir

IN_CI = os.environ.get("CI") == "true"

# Disk images, squashfs trees and VM scratch are large, and /tmp may be a small
# noexec tmpfs: keep test scratch in /var/tmp unless TMPDIR says otherwise (never in
# the repository: private keys made by tests must not land in the tree).
if "TMPDIR" not in os.environ:
    os.environ["TMPDIR"] = "/var/tmp"
    tempfile.tempdir = None


def require_tool(*tools: str) -> None:
    """Skip (locally) or fail (in CI, where .ci/run installs everything) when a tool is absent."""
    missing = [t for t in tools if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        message = f"missing tools: {', '.join(missing)}"
        if IN_CI:
            pytest.fail(message + " (.ci/run must install them)")
        pytest.skip(message)


def require_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root; this test needs root")
        pytest.skip("needs root")


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if path is None:
        if IN_CI:
            pytest.fail("../shared is missing (set SPINE_SHARED)")
        pytest.skip("../shared is missing (set SPINE_SHARED)")
    return path


@pytest.fixture(scope="session")
def alpine(shared: Path) -> Path:
    path = alpine_fixtures()
    assert path is not None, "shared/fixtures/alpine is missing"
    return path


@pytest.fixture
def spinectl(monkeypatch, tmp_path):
    """Run the CLI in-process: ``spinectl(*args) -> Result(code, out, err)``."""
    from tests.clihelp import invoke

    monkeypatch.delenv("SPINE_DEBUG", raising=False)  # --debug in one test must not leak
    monkeypatch.chdir(tmp_path)
    return invoke


@pytest.fixture
def spinectl_proc(tmp_path):
    """Run the installed CLI as a real subprocess (exit codes, stderr lines)."""

    def run(*args: str, input: bytes | None = None, env: dict | None = None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "spinectl", *args],
            input=input,
            capture_output=True,
            cwd=tmp_path,
            env=full_env,
            check=False,
        )

    return run


__all__ = ["PROJECT_ROOT", "require_tool", "require_root", "IN_CI"]
