"""Every constitution rule names tests that exist; pending ones are listed."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = sorted((ROOT / "docs" / "constitution").glob("[0-9][0-9]-*.md"))
REF = re.compile(r"^- (?P<path>tests/[\w/]+\.py)::(?P<name>\w+)\s*$")


def enforced_by(rule: Path) -> list[tuple[str, str]]:
    text = rule.read_text()
    if "## Enforced by" not in text:
        return []
    section = text.split("## Enforced by", 1)[1].split("\n## ", 1)[0]
    refs = []
    for line in section.splitlines():
        if line.strip():
            match = REF.match(line.strip())
            assert match, f"{rule.name}: cannot read test reference {line!r}"
            refs.append((match["path"], match["name"]))
    return refs


def find_test(path: str, name: str) -> ast.FunctionDef | None:
    file = ROOT / path
    if not file.is_file():
        return None
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def is_pending(func: ast.FunctionDef) -> bool:
    return any("pending" in ast.unparse(d) for d in func.decorator_list)


def test_there_are_rules() -> None:
    assert len(RULES) >= 12


@pytest.mark.parametrize("rule", RULES, ids=lambda p: p.stem)
def test_rule_names_existing_tests(rule: Path) -> None:
    refs = enforced_by(rule)
    assert refs, f"{rule.name} names no test under '## Enforced by'"
    for path, name in refs:
        assert find_test(path, name) is not None, f"{rule.name}: {path}::{name} does not exist"


def test_pending_enforcement_is_listed(capsys) -> None:
    pending = [
        f"{rule.stem}: {path}::{name}"
        for rule in RULES
        for path, name in enforced_by(rule)
        if (func := find_test(path, name)) is not None and is_pending(func)
    ]
    with capsys.disabled():
        print(f"\nconstitution: {len(pending)} pending enforcement(s)")
        for line in pending:
            print(f"  pending {line}")
    # Every rule must have at least one enforcing test that is not pending.
    for rule in RULES:
        active = [r for r in enforced_by(rule) if (f := find_test(*r)) and not is_pending(f)]
        assert active or rule.stem in PENDING_ALLOWED, f"{rule.name}: every test is pending"


# Rules whose every enforcing test may still be pending (their issue has not landed).
PENDING_ALLOWED: set[str] = set()


def test_the_reference_reader_catches_a_missing_test(tmp_path: Path) -> None:
    rule = tmp_path / "99-x.md"
    rule.write_text("# x\n\n## Enforced by\n- tests/test_nope.py::test_nothing\n")
    (path, name), = enforced_by(rule)
    assert find_test(path, name) is None


SECRET_MARKERS = (
    re.compile(r"untrusted comment:.*secret key", re.I),
    re.compile(r"^RWRTY[A-Za-z0-9+/]{40,}", re.M),  # minisign "EdSc" encrypted secret key
    re.compile(r"^RWQAAEIy[A-Za-z0-9+/]{40,}", re.M),  # minisign unencrypted secret key
    re.compile(r"-----BEGIN (RSA |EC |OPENSSH )?PRIVATE KEY-----"),
)


def test_no_private_key_is_tracked() -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    offenders = []
    for name in files.stdout.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file() or path.stat().st_size > 1_000_000:
            continue
        if name.startswith("tests/test_constitution.py"):
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        if any(m.search(text) for m in SECRET_MARKERS):
            offenders.append(name)
    assert not offenders, f"private key material tracked in git: {offenders}"
    assert not list((ROOT / "keys").glob("*.key")), "keys/ must hold public keys only"
