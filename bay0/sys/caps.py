"""Capabilities, securebits and no_new_privs (prctl(2), capset(2)).

The order matters and follows minijail: drop the bounding set and ambient set while
CAP_SETPCAP is still held, lock the securebits (so a later uid 0 never regains
anything), switch ids, then clear the effective/permitted/inheritable sets, then
set no_new_privs so the seccomp filter can be loaded and setuid files stay inert.
"""

from __future__ import annotations

import ctypes
import os

from bay0.sys.libc import LIBC, check, syscall

# linux/prctl.h
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_GET_DUMPABLE = 3
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


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); raises ``OSError``."""
    return check(LIBC.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def last_cap() -> int:
    """The highest capability number this kernel knows (read before entering a sandbox)."""
    with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
        return int(f.read())


def drop_bounding_set(last: int) -> None:
    """Drop capabilities 0..``last`` from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)


def clear_ambient() -> None:
    """Empty the ambient set."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def lock_securebits() -> None:
    """Set and lock every securebit but KEEP_CAPS (needs CAP_SETPCAP)."""
    prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN)


_HEADER = cap_user_header(_LINUX_CAPABILITY_VERSION_3, 0)
_EMPTY = (cap_user_data * 2)()  # built at import: the sandbox child only makes the call


def clear_capabilities() -> None:
    """Empty the effective, permitted and inheritable sets of this thread."""
    syscall("capset", ctypes.byref(_HEADER), ctypes.byref(_EMPTY))


def set_no_new_privs() -> None:
    """no_new_privs: execve never grants privileges again (and seccomp may be loaded)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_dumpable(on: bool) -> None:
    """A non-dumpable process keeps its /proc files (exe, fd, environ) from its own uid."""
    prctl(PR_SET_DUMPABLE, 1 if on else 0)


def set_comm(name: bytes) -> None:
    """Name this thread (``/proc/PID/comm``, at most 15 bytes) so ``ps`` on the host says what it is."""
    buffer = ctypes.create_string_buffer(name[:15])
    prctl(PR_SET_NAME, ctypes.addressof(buffer))


def switch_ids(uid: int, gid: int, groups: tuple[int, ...] = ()) -> None:
    """setgroups, setresgid, setresuid, in that order; raises ``OSError``."""
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
