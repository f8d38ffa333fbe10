"""The C library and raw system calls, the same way on glibc and musl.

``CDLL(None)`` is the already-loaded libc whatever its soname (``libc.so.6`` on glibc,
``libc.musl-x86_64.so.1`` on Alpine), so nothing depends on ``find_library``, which
returns None on musl. Where libc has no wrapper (or musl and glibc differ), call the
kernel directly through ``syscall(NR, ...)`` with every argument passed as ``c_long``
so the upper bits of each register are clean.
"""

from __future__ import annotations

import ctypes
import os
import platform

from bay0.sys.syscalls_x86_64 import SYSCALLS

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long

# A second handle that keeps the GIL across the call. Forking (clone) through it
# means the child starts holding the GIL, so no other thread's GIL state can
# deadlock it; the one place that needs this is ns.clone_process().
PYLIBC = ctypes.PyDLL(None, use_errno=True)
PYLIBC.syscall.restype = ctypes.c_long

MACHINE = platform.machine()

# The few numbers this package calls raw, per architecture (asm/unistd*.h).
_RAW = {
    "x86_64": {
        "clone": 56,
        "clone3": 435,
        "pivot_root": 155,
        "capget": 125,
        "capset": 126,
        "unshare": 272,
        "setns": 308,
        "seccomp": 317,
        "open_tree": 428,
        "move_mount": 429,
        "close_range": 436,
        "openat2": 437,
        "mount_setattr": 442,
    },
    "aarch64": {
        "clone": 220,
        "clone3": 435,
        "pivot_root": 41,
        "capget": 90,
        "capset": 91,
        "unshare": 97,
        "setns": 268,
        "seccomp": 277,
        "open_tree": 428,
        "move_mount": 429,
        "close_range": 436,
        "openat2": 437,
        "mount_setattr": 442,
    },
}


class UnsupportedArchError(OSError):
    """The running architecture has no syscall table here."""


def nr(name: str) -> int:
    """The system call number of ``name`` on this machine; raises ``UnsupportedArchError``."""
    table = _RAW.get(MACHINE)
    if table is None or name not in table:
        if MACHINE == "x86_64" and name in SYSCALLS:
            return SYSCALLS[name]
        raise UnsupportedArchError(f"no syscall number for {name} on {MACHINE}")
    return table[name]


def _arg(value: object) -> object:
    if isinstance(value, int):
        return ctypes.c_long(value)
    return value


def syscall(name: str, *args: object) -> int:
    """Call system call ``name`` with ``args``; raise ``OSError`` from errno, retry on EINTR."""
    number = nr(name)
    cargs = [_arg(a) for a in args]
    while True:
        result = LIBC.syscall(ctypes.c_long(number), *cargs)
        if result != -1:
            return result
        err = ctypes.get_errno()
        if err != 4:  # EINTR
            raise OSError(err, f"{name}: {os.strerror(err)}")


def check(result: int, what: str) -> int:
    """Raise ``OSError`` from errno when a libc call returned -1."""
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def close_range(first: int, last: int = 0xFFFFFFFF) -> None:
    """Close fds ``first..last`` (close_range(2), Linux 5.9; slow fallback otherwise)."""
    try:
        syscall("close_range", first, last, 0)
    except OSError:
        os.closerange(first, min(last, os.sysconf("SC_OPEN_MAX")) + 1)
