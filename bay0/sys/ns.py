"""Namespaces: clone flags, unshare, setns, and a namespace-creating fork.

Python 3.11's ``os`` has no unshare/setns (3.12 adds them), so these go through
ctypes. ``clone_process`` is the sandbox's fork: one raw ``clone(2)`` that creates the
new namespaces and the child at once, so the child is PID 1 of its PID namespace
without the usual intermediate process (bubblewrap and crun do the same in C).
"""

from __future__ import annotations

import ctypes
import os
import signal

from bay0.sys.libc import PYLIBC, nr, syscall

# linux/sched.h
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# Every CLONE_NEW* bit that clone(2) accepts (the seccomp filter denies these).
CLONE_NEW_MASK = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
    | CLONE_NEWPID | CLONE_NEWNET
)

PERSONA_NAMESPACES = (
    CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET
)


def unshare(flags: int) -> None:
    """unshare(2); raises ``OSError``."""
    syscall("unshare", flags)


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2) into the namespace open at ``fd``; raises ``OSError``."""
    syscall("setns", fd, nstype)


def thread_count() -> int:
    """Threads in this process (fork is only safe when it is 1)."""
    return len(os.listdir("/proc/self/task"))


CLONE_PIDFD = 0x00001000
CLONE_INTO_CGROUP = 0x200000000


class clone_args(ctypes.Structure):  # noqa: N801 - kernel name (linux/sched.h, CLONE_ARGS_SIZE_VER2)
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def clone_into_cgroup(flags: int, cgroup_fd: int) -> tuple[int, int]:
    """clone3 into new namespaces and straight into the cgroup open at ``cgroup_fd``.

    Returns ``(pid, pidfd)`` in the parent and ``(0, -1)`` in the child. Starting the
    child inside its cgroup avoids a migration (which waits for an RCU grace period)
    and roots a new cgroup namespace at that cgroup. Same fork caveats as
    ``clone_process``. Raises ``OSError`` (ENOSYS before Linux 5.7).
    """
    pidfd = ctypes.c_int(-1)
    args = clone_args(flags=flags | CLONE_PIDFD | CLONE_INTO_CGROUP, pidfd=ctypes.addressof(pidfd),
                      exit_signal=signal.SIGCHLD, cgroup=cgroup_fd)
    pid = PYLIBC.syscall(ctypes.c_long(nr("clone3")), ctypes.byref(args), ctypes.c_long(ctypes.sizeof(args)))
    if pid == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"clone3: {os.strerror(err)}")
    return pid, (pidfd.value if pid else -1)


def clone_process(flags: int) -> int:
    """Fork into new namespaces: returns the child's pid in the parent and 0 in the child.

    Raw ``clone(flags | SIGCHLD)`` with no new stack behaves like fork(2). It skips
    libc's and Python's after-fork bookkeeping on purpose: that bookkeeping is most of
    Python's fork cost, and the child only makes system calls, then execs or
    ``_exit``s. It must not be used from a threaded process (checked by the caller).
    Raises ``OSError``.
    """
    number = ctypes.c_long(nr("clone"))
    zero = ctypes.c_long(0)
    # PyDLL: the GIL stays held across the call, so the child owns it from the start.
    pid = PYLIBC.syscall(number, ctypes.c_long(flags | signal.SIGCHLD), zero, zero, zero, zero)
    if pid == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid
