"""In-process CLI runner for tests: captures stdout/stderr and the exit code."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    out: str
    err: str


def invoke(*args: str) -> Result:
    from spinectl.main import run_cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())
