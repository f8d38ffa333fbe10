"""Capabilities, securebits and no_new_privs (prctl(2), capset(2)).

The order matters and follows minijail: drop the bounding set and ambient set while
CAP_SETPCAP is still held, lock the securebits (so a later uid 0 never regains
anything), switch ids, then clear the effective/permitted/inheritable sets, then
set no_new_privs so the seccomp filter can be loaded and setuid files stay inert.
The sandbox child (``bay0.sys.sandbox._child_main``) makes these calls in that order
with the constants and structures defined here.
"""

from __future__ import annotations

import ctypes

from bay0.sys.libc import LIBC

# linux/prctl.h
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# linux/securebits.h: every bit and its lock, except KEEP_CAPS itself (left off).
SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_NO_SETUID_FIXUP = 1 << 2
SECBIT_NO_SETUID_FIXUP_LOCKED = 1 << 3
SECBIT_KEEP_CAPS_LOCKED = 1 << 5
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7
SECUREBITS_LOCKED_DOWN = (
    SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED
    | SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED
)

# linux/capability.h
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class cap_user_header(ctypes.Structure):  # noqa: N801 - kernel name
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class cap_user_data(ctypes.Structure):  # noqa: N801 - kernel name
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def last_cap() -> int:
    """The highest capability number this kernel knows (read before entering a sandbox)."""
    with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
        return int(f.read())


_HEADER = cap_user_header(_LINUX_CAPABILITY_VERSION_3, 0)
_EMPTY = (cap_user_data * 2)()  # built at import: the sandbox child only makes the call


def capset_args() -> tuple[ctypes.c_long, ctypes.c_long]:
    """capset(2)'s two pointer arguments (header, all-zero data) for a raw syscall."""
    return ctypes.c_long(ctypes.addressof(_HEADER)), ctypes.c_long(ctypes.addressof(_EMPTY))
