"""The dependency direction: spinectl -> pipeline -> bay0, never back.

bay0 imports only the standard library and ``cryptography``; pipeline never imports spinectl.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names)


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant):
                roots.add(str(node.args[0].value).split(".")[0])
    return roots


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", sources("bay0"), ids=lambda p: str(p.relative_to(ROOT)))
def test_bay0_imports_only_stdlib_and_cryptography(path: Path) -> None:
    allowed = STDLIB | {"bay0", "cryptography", "__future__"}
    bad = imported_roots(path) - allowed
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sources("pipeline"), ids=lambda p: str(p.relative_to(ROOT)))
def test_pipeline_never_imports_spinectl(path: Path) -> None:
    roots = imported_roots(path)
    assert "spinectl" not in roots, f"{path.relative_to(ROOT)} imports spinectl"
    assert not roots & {"typer", "rich.prompt"}, f"{path.relative_to(ROOT)} imports CLI code"


def test_only_one_module_imports_parted() -> None:
    importers = [
        p.relative_to(ROOT).as_posix()
        for pkg in ("spinectl", "pipeline", "bay0")
        for p in sources(pkg)
        if "parted" in imported_roots(p)
    ]
    assert len(importers) <= 1, f"parted imported from several modules: {importers}"


def test_the_walker_sees_forbidden_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import typer\nfrom spinectl import x\nimport importlib\nimportlib.import_module('parted.x')\n")
    assert {"typer", "spinectl", "parted"} <= imported_roots(probe)
