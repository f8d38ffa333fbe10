"""ctypes wrappers for the system calls bay0's sandbox needs, one module per concern.

Everything here is stdlib-only and works on glibc and musl alike (``CDLL(None)`` plus
raw ``syscall(NR, ...)`` where libc has no wrapper).
"""

from __future__ import annotations

from bay0.errors import SpineError


class SandboxError(SpineError):
    """A persona could not be launched: ``step`` names the setup step, ``errno`` the cause.

    (Local subclass until bay0/errors.py grows a sandbox error class.)
    """

    default_hint = "see docs/implementation/sandbox.md for what each step needs"

    def __init__(self, message: str, hint: str | None = None, *, step: str = "", errno: int = 0) -> None:
        super().__init__(message, hint)
        self.step = step
        self.errno = errno
