"""The persona's filesystem view, assembled inside its new mount namespace.

What the view contains (device nodes, /proc masks) and the paths of each, computed
in the parent by ``layout``; the mounts themselves are made by the sandbox child
(``bay0.sys.sandbox._child_main``) in the runc/crun order (see
docs/implementation/sandbox.md): ``/`` private recursively before any mount, bind the
image root, tmpfs /dev with the six nodes (then read-only), a fresh /proc with the
masked and read-only paths, the declared binds (``bind``), then ``pivot_root(".", ".")``
with the old root detached (runc's rootfs_linux.go), and ``/`` remounted read-only.
"""

from __future__ import annotations

import functools
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


DEV_FLAGS = m.MS_NOSUID | m.MS_NOEXEC | m.MS_STRICTATIME
DEV_DATA = b"mode=755,size=64k,nr_inodes=32"


@functools.lru_cache(maxsize=64)
def layout(root: bytes) -> tuple:
    """Every path the child needs under ``root``, built once per root in the parent.

    ``(dev, dev_nodes, dev_links, proc, proc_masked, proc_readonly, dev_null)`` where
    ``dev_nodes`` is ``((path, mode, device), ...)`` and ``dev_links`` is
    ``((target, path), ...)``, all bytes.
    """
    dev, proc = root + b"/dev", root + b"/proc"
    return (
        dev,
        tuple((dev + b"/" + n.encode(), stat.S_IFCHR | 0o666, os.makedev(major, minor))
              for n, major, minor in DEVICES),
        tuple((t.encode(), dev + b"/" + n.encode()) for n, t in DEV_LINKS),
        proc,
        tuple(proc + b"/" + n.encode() for n in PROC_MASKED),
        tuple(proc + b"/" + n.encode() for n in PROC_READONLY),
        dev + b"/null",
    )


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
