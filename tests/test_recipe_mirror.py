"""Without the shared fixtures, recipes take Alpine packages from a mirror through the
same reader: proven with a local mirror laid out like the official one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.paths import PROJECT_ROOT
from pipeline.recipe import load_recipe
from tests.conftest import require_tool

RECIPES = PROJECT_ROOT / "pipeline" / "recipes"


@pytest.fixture
def no_fixtures(monkeypatch, tmp_path: Path) -> Path:
    empty = tmp_path / "no-shared"
    empty.mkdir()
    monkeypatch.setenv("SPINE_SHARED", str(empty))
    return empty


@pytest.fixture
def local_mirror(alpine: Path, tmp_path: Path) -> Path:
    """``<mirror>/v3.19/main/x86_64/`` holding the ISO repository's index and packages."""
    mirror = tmp_path / "mirror"
    repo = mirror / "v3.19" / "main" / "x86_64"
    repo.mkdir(parents=True)
    for entry in (alpine / "v3.19" / "iso-repo" / "x86_64").iterdir():
        os.symlink(entry, repo / entry.name)
    return mirror


def test_fallback_names_the_official_mirror(no_fixtures: Path, monkeypatch) -> None:
    monkeypatch.delenv("SPINE_ALPINE_MIRROR", raising=False)
    recipe = load_recipe(RECIPES / "spine-test.toml")
    assert recipe.alpine.mirror == "https://dl-cdn.alpinelinux.org/alpine"
    assert [r.name for r in recipe.alpine.repositories] == ["main"]
    assert recipe.alpine.keys == RECIPES / "alpine-keys"


def test_env_overrides_the_mirror(no_fixtures: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPINE_ALPINE_MIRROR", str(tmp_path))
    assert load_recipe(RECIPES / "personas" / "httpd.toml").alpine.mirror == str(tmp_path)


def test_with_fixtures_the_fallback_is_unused(alpine: Path, monkeypatch) -> None:
    monkeypatch.delenv("SPINE_ALPINE_MIRROR", raising=False)
    recipe = load_recipe(RECIPES / "personas" / "httpd.toml")
    assert recipe.alpine.repositories[0].index is not None


def test_pod_builds_from_a_mirror_when_fixtures_are_absent(
    alpine: Path, local_mirror: Path, no_fixtures: Path, monkeypatch, tmp_path: Path, spinectl
) -> None:
    require_tool("mksquashfs")
    monkeypatch.setenv("SPINE_ALPINE_MIRROR", str(local_mirror))
    monkeypatch.setenv("SPINE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "httpd.img"
    r = spinectl("build", "pod", "--recipe", str(RECIPES / "personas" / "httpd.toml"),
                 "-o", str(out), "--json")
    assert r.code == 0, r.err
    assert out.stat().st_size > 0
