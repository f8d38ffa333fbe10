"""The README's two commands exist, and CI runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## The two commands", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_readme_has_exactly_two_commands_that_exist() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    for command in commands:
        script = re.fullmatch(r"bash (scripts/\S+\.sh)", command)
        assert script and (ROOT / script[1]).is_file(), command


def test_ci_runs_the_readme_test_command() -> None:
    test_command = readme_commands()[1]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    ci = [line for line in ci if line and not line.startswith("#")]
    assert ci[-1] == test_command
