"""The exit-code table is complete, documented, and errors are one line without tracebacks."""

from __future__ import annotations

import re
from pathlib import Path

from bay0 import errors
from spinectl.errors import EXIT_CODES, EXIT_TABLE, exit_code_for

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "implementation" / "cli.md"


def documented_codes() -> dict[int, str]:
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", DOC.read_text(), re.M)
    return {int(code): meaning for code, meaning in rows}


def test_every_exit_code_is_documented() -> None:
    documented = documented_codes()
    assert documented == dict(EXIT_TABLE)
    assert set(EXIT_CODES.values()) <= set(documented)


def test_every_error_class_has_a_code() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.SpineError)]
    for cls in classes:
        assert cls in EXIT_CODES, f"{cls.__name__} has no exit code"
    assert exit_code_for(errors.RollbackError("x")) == 4
    assert exit_code_for(errors.ValidationError("x")) == 3
    assert exit_code_for(ValueError("x")) == 1


def test_errors_are_one_line_with_hint_and_no_traceback(spinectl, tmp_path: Path) -> None:
    r = spinectl("image", "info", str(tmp_path / "missing.img"))
    assert r.code == 6
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spinectl: error: ") and "hint:" in lines[0]
    assert "Traceback" not in r.err


def test_debug_shows_the_traceback(spinectl, tmp_path: Path, monkeypatch) -> None:
    # --debug sets SPINE_DEBUG for the tools it runs; recording it as "" here makes
    # monkeypatch remove it again at teardown, so it cannot leak into later tests.
    monkeypatch.setenv("SPINE_DEBUG", "")
    r = spinectl("--debug", "image", "info", str(tmp_path / "missing.img"))
    assert r.code == 6 and "Traceback" in r.err


def test_usage_error_exit_code(spinectl) -> None:
    r = spinectl("no-such-command")
    assert r.code == 2 and "spinectl: error:" in r.err


def test_disk_full_is_a_storage_error(spinectl, monkeypatch, tmp_path: Path) -> None:
    import errno
    import os

    from pipeline import image

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "pod.img"))

    monkeypatch.setattr(image, "build_image", full)
    r = spinectl("image", "build", str(tmp_path), "-o", str(tmp_path / "pod.img"))
    assert r.code == 12, r.err
    assert "No space left" in r.err and len(r.err.strip().splitlines()) == 1
