"""Mounts: mount/umount2 and the fd-based mount API (Linux 5.12+).

Bind mounts from /persist use ``open_tree`` + ``mount_setattr`` + ``move_mount``: the
source and target are file descriptors resolved with ``openat2`` refusing every
symlink, so nothing a persona planted can redirect a mount.
"""

from __future__ import annotations

import ctypes
import os

from bay0.sys.libc import LIBC, check, syscall

# linux/mount.h (old API flags)
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOSYMFOLLOW = 0x100
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_STRICTATIME = 0x1000000

MNT_DETACH = 0x2

# linux/mount.h (new API)
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_NOSYMFOLLOW = 0x200000

# linux/openat2.h
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
O_PATH = 0o10000000

LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
LIBC.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class mount_attr(ctypes.Structure):  # noqa: N801 - kernel name
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class open_how(ctypes.Structure):  # noqa: N801 - kernel name
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _b(path: str | bytes | None) -> bytes | None:
    return os.fsencode(path) if path is not None else None


def mount(source: str | bytes | None, target: str | bytes, fstype: str | bytes | None,
          flags: int, data: str | bytes | None = None) -> None:
    """mount(2); raises ``OSError``."""
    check(LIBC.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {os.fsdecode(target)}")


def umount2(target: str | bytes, flags: int = 0) -> None:
    """umount2(2); raises ``OSError``."""
    check(LIBC.umount2(_b(target), flags), f"umount {os.fsdecode(target)}")


def openat2(dirfd: int, path: str | bytes, flags: int, resolve: int) -> int:
    """openat2(2) (Linux 5.6) returning a new fd; raises ``OSError`` (ELOOP on a refused symlink)."""
    how = open_how(flags | os.O_CLOEXEC, 0, resolve)
    return syscall("openat2", dirfd, ctypes.c_char_p(_b(path)), ctypes.byref(how), ctypes.sizeof(how))


def open_tree(dirfd: int, path: str | bytes, flags: int) -> int:
    """open_tree(2): a detached copy of the mount at ``dirfd``/``path``; raises ``OSError``."""
    return syscall("open_tree", dirfd, ctypes.c_char_p(_b(path)), flags)


def mount_setattr(fd: int, attr_set: int, attr_clr: int = 0) -> None:
    """mount_setattr(2) on the mount open at ``fd``; raises ``OSError``."""
    attr = mount_attr(attr_set, attr_clr, 0, 0)
    syscall("mount_setattr", fd, ctypes.c_char_p(b""), AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr))


def move_mount(from_fd: int, to_fd: int) -> None:
    """move_mount(2) the detached mount ``from_fd`` onto the inode open at ``to_fd``."""
    syscall("move_mount", from_fd, ctypes.c_char_p(b""), to_fd, ctypes.c_char_p(b""),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)
