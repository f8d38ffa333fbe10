"""The persona's filesystem view, assembled inside its new mount namespace.

Runs in the sandbox child between clone and exec, so it imports nothing lazily and
uses only values prepared before the fork. Order (runc/crun recipe, see
docs/implementation/sandbox.md): ``/`` private recursively before any mount, bind the
image root, mount /dev and /proc and the declared binds under it, pivot_root into it,
detach the old root, remount ``/`` read-only.
"""

from __future__ import annotations

import os
import stat

from bay0.sys import mount as m

# The six device nodes every persona gets (runc AllowedDevices, crun needed_devs), 0666.
DEVICES = (
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
    ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
)
DEV_LINKS = (
    ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
)
# Hidden behind an empty read-only tmpfs (dirs) or /dev/null (files): runc/crun's
# list plus Docker's /proc/interrupts and nspawn's kallsyms.
PROC_MASKED = (
    "acpi", "asound", "interrupts", "kallsyms", "kcore", "keys", "latency_stats",
    "sched_debug", "scsi", "timer_list", "timer_stats",
)
PROC_READONLY = ("bus", "fs", "irq", "sys", "sysrq-trigger")

NOSUID_NODEV_NOEXEC = m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC


def make_private() -> None:
    """Stop mount propagation both ways before the first mount (CVE-class: leaking mounts)."""
    m.mount(None, b"/", None, m.MS_REC | m.MS_PRIVATE)


def bind_root(root: bytes) -> None:
    """Bind the image directory onto itself so it is a mount point pivot_root accepts."""
    m.mount(root, root, None, m.MS_BIND)


def setup_dev(dev: bytes) -> None:
    """tmpfs /dev with the six nodes and the fd symlinks, then read-only (umask must be 0)."""
    flags = m.MS_NOSUID | m.MS_NOEXEC | m.MS_STRICTATIME
    m.mount(b"tmpfs", dev, b"tmpfs", flags, b"mode=755,size=64k,nr_inodes=32")
    for name, major, minor in DEVICES:
        path = dev + b"/" + name.encode()
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    for name, target in DEV_LINKS:
        os.symlink(target, dev + b"/" + name.encode())
    m.mount(None, dev, None, m.MS_REMOUNT | m.MS_RDONLY | flags)


def setup_proc(proc: bytes, dev_null: bytes) -> None:
    """A fresh procfs for the new PID namespace with the masked and read-only paths."""
    m.mount(b"proc", proc, b"proc", NOSUID_NODEV_NOEXEC, b"hidepid=2")  # = invisible (5.8+)
    for name in PROC_MASKED:
        path = proc + b"/" + name.encode()
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except FileNotFoundError:
            continue
        if is_dir:
            m.mount(b"tmpfs", path, b"tmpfs", m.MS_RDONLY | NOSUID_NODEV_NOEXEC, b"size=0,nr_inodes=1")
        else:
            m.mount(dev_null, path, None, m.MS_BIND)
    for name in PROC_READONLY:
        path = proc + b"/" + name.encode()
        if not os.path.lexists(path):
            continue
        m.mount(path, path, None, m.MS_BIND | m.MS_REC)
        m.mount(None, path, None, m.MS_REMOUNT | m.MS_BIND | m.MS_RDONLY | NOSUID_NODEV_NOEXEC)


def open_bind_source(persist: bytes, source: bytes) -> int:
    """O_PATH fd of ``source`` (relative) under ``persist``, refusing any symlink (ELOOP)."""
    base = os.open(persist, m.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        # no O_NOFOLLOW: with O_PATH it would open a final symlink itself instead of
        # failing; RESOLVE_NO_SYMLINKS refuses every symlink, the last one included.
        return m.openat2(base, source, m.O_PATH,
                         m.RESOLVE_BENEATH | m.RESOLVE_NO_SYMLINKS | m.RESOLVE_NO_MAGICLINKS)
    finally:
        os.close(base)


def bind(root_fd: int, persist: bytes, source: bytes, target: bytes, rw: bool, exec_: bool) -> None:
    """Attach ``source`` (relative to /persist) at ``target`` inside the root: fds only, no symlinks.

    nodev, nosuid and nosymfollow always; noexec unless ``exec_``; read-only unless ``rw``.
    """
    src = open_bind_source(persist, source)
    try:
        dst = m.openat2(root_fd, target.lstrip(b"/"), m.O_PATH,
                        m.RESOLVE_IN_ROOT | m.RESOLVE_NO_SYMLINKS | m.RESOLVE_NO_MAGICLINKS)
        try:
            tree = m.open_tree(src, b"", m.OPEN_TREE_CLONE | m.OPEN_TREE_CLOEXEC | m.AT_EMPTY_PATH)
            try:
                attrs = m.MOUNT_ATTR_NOSUID | m.MOUNT_ATTR_NODEV | m.MOUNT_ATTR_NOSYMFOLLOW
                attrs |= 0 if exec_ else m.MOUNT_ATTR_NOEXEC
                attrs |= 0 if rw else m.MOUNT_ATTR_RDONLY
                # the clone inherits /persist's own flags (noexec): clear what was declared
                clear = (m.MOUNT_ATTR_NOEXEC if exec_ else 0) | (m.MOUNT_ATTR_RDONLY if rw else 0)
                m.mount_setattr(tree, attrs, clear)
                m.move_mount(tree, dst)
            finally:
                os.close(tree)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def pivot(root: bytes) -> None:
    """pivot_root(".", ".") then detach the old root stacked on top (runc rootfs_linux.go)."""
    os.chdir(root)
    m.pivot_root(b".", b".")
    m.umount2(b".", m.MNT_DETACH)
    os.chdir(b"/")


def seal_root() -> None:
    """Remount the new / read-only, nosuid, nodev."""
    m.mount(None, b"/", None, m.MS_REMOUNT | m.MS_BIND | m.MS_RDONLY | m.MS_NOSUID | m.MS_NODEV)
