"""bay0's own minimal subprocess runner (bay0 cannot import pipeline.run).

argv lists only, never a shell; a fixed minimal environment; stdin closed; a failure
raises ``ToolError`` naming the tool and the command line.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence

from bay0.errors import ToolError

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def run(argv: Sequence[str], *, input: bytes | None = None, timeout: float = 10.0,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (a system tool such as ``ip`` or ``nft``); raises ``ToolError``."""
    argv = [str(a) for a in argv]
    line = shlex.join(argv)
    exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=PATH)
    if exe is None:
        raise ToolError(f"{argv[0]} is not installed", f"the Spine must ship {argv[0]}")
    try:
        proc = subprocess.run([exe, *argv[1:]], input=input, capture_output=True,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              env={"PATH": PATH, "LC_ALL": "C"}, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolError(f"{argv[0]} could not run: {e}", f"check: {line}") from e
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ToolError(f"{argv[0]} failed: {err[-1] if err else proc.returncode}", f"check: {line}")
    return proc
