"""What runs inside the sandbox: PID 1 of a persona, from clone to the command's exit.

``bay0.persona.launch`` prepares a ``Plan`` (every value as bytes, the seccomp program
loaded into a ctypes buffer) and clones; the child calls ``run_child(plan)``, which
never returns. Nothing here imports lazily or builds what could be built before the
fork: every page the child writes is a copy of bay0's (see
docs/implementation/sandbox.md for each step and why).
"""

from __future__ import annotations

import _signal
import ctypes
import errno as errno_mod
import fcntl
import gc
import os
import resource
import signal
import socket
import struct
import subprocess
from dataclasses import dataclass
from typing import Any

from bay0.sys import caps, netns, ns, rootfs
from bay0.sys.libc import LIBC, check, close_range
from bay0.sys.seccomp import LoadableFilter

SIOCSIFFLAGS = 0x8914
IFF_UP_LOOPBACK_RUNNING = 0x1 | 0x8 | 0x40
FORWARDED = tuple(int(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                                   signal.SIGUSR1, signal.SIGUSR2))
# The C module, not signal.py: its wrappers turn every value into an enum member,
# and each object touched after the fork is a page copied.
SIG_DFL, SIG_IGN, SIG_SETMASK = int(signal.SIG_DFL), int(signal.SIG_IGN), int(signal.SIG_SETMASK)


@dataclass
class Plan:
    """Values computed before the fork so the child does only system calls."""

    spec: Any  # bay0.persona.PersonaSpec
    root: bytes
    persist: bytes
    binds: list[tuple[bytes, bytes, bool, bool]]
    argv: list[bytes]
    env: dict[bytes, bytes]
    filter: LoadableFilter
    last_cap: int
    cgroup_fd: int
    sync_fd: int
    sync_w: int
    report_fd: int
    stdio: tuple[int, int, int]
    sigdef: set[int]
    join_cgroup: bool = False


# ---- parent <-> child report records ---------------------------------------------

def read_record(fd: int) -> tuple | None:
    """The next report from a persona's PID 1, or None at end of file.

    ``("R", pid)`` the command started, ``("X", wait_status)`` it exited,
    ``("E", errno, step, message)`` a setup step failed.
    """
    head = read_exact(fd, 5)
    if len(head) < 5:
        return None
    kind, value = head[:1].decode(), struct.unpack("<i", head[1:])[0]
    if kind != "E":
        return (kind, value)
    size = struct.unpack("<H", read_exact(fd, 2))[0]
    step, _, message = read_exact(fd, size).decode(errors="replace").partition("\0")
    return ("E", value, step, message)


def read_exact(fd: int, size: int) -> bytes:
    """Read ``size`` bytes, fewer only at end of file."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class _Step:
    name = "start"


def run_child(plan: Plan) -> None:
    """Set up the sandbox, spawn the command, reap, exit. Never returns."""
    gc.disable()  # a collection would touch (and copy) every page of the parent's heap
    step = _Step()
    try:
        code = _child_main(plan, step)
    except BaseException as e:  # report every failure as (step, errno, message)
        err = getattr(e, "errno", None) or 0
        text = f"{step.name}\0{e.strerror if isinstance(e, OSError) and e.strerror else e}".encode()[:1000]
        try:
            os.write(plan.report_fd, b"E" + struct.pack("<iH", err, len(text)) + text)
        finally:
            os._exit(127)
    os._exit(code)


def _child_main(plan: Plan, step: _Step) -> int:
    spec = plan.spec
    step.name = "signals"
    caps.set_comm(b"persona-init")
    _signal.pthread_sigmask(SIG_SETMASK, ())
    _signal.set_wakeup_fd(-1)
    if plan.join_cgroup:  # no clone3: move in, then root a cgroup namespace here
        step.name = "cgroup"
        os.write(plan.cgroup_fd, b"0")
        ns.unshare(ns.CLONE_NEWCGROUP)
    if plan.sync_fd >= 0:  # veth: wait for bay0 to move our end in, then configure it
        step.name = "network"
        os.close(plan.sync_w)
        if os.read(plan.sync_fd, 1) != b"g":
            raise OSError(errno_mod.ECANCELED, "bay0 could not set up the host side")
        netns.configure_inside(spec.network)
    _build_root(plan, step)
    step.name = "hostname"
    socket.sethostname(spec.name)
    step.name = "loopback"
    _loopback_up()
    step.name = "rlimits"
    for limit, value in ((resource.RLIMIT_NOFILE, spec.nofile), (resource.RLIMIT_NPROC, spec.nproc),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    step.name = "setsid"
    os.setsid()
    step.name = "fds"
    _arrange_fds(plan)
    _drop_privileges(plan, step)
    step.name = "chdir"
    os.chdir(spec.cwd)
    os.umask(0o077)
    step.name = "exec"
    return _spawn_and_reap(plan, _resolve(plan))


LIBC.socket.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
LIBC.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_IFREQ_LO_UP = ctypes.create_string_buffer(struct.pack("16sH22x", b"lo", IFF_UP_LOOPBACK_RUNNING), 40)


def _loopback_up() -> None:
    """``ip link set lo up`` by ioctl (through ctypes, already warm: no socket object)."""
    fd = check(LIBC.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0), "socket")
    try:
        check(LIBC.ioctl(fd, SIOCSIFFLAGS, _IFREQ_LO_UP), "SIOCSIFFLAGS lo")
    finally:
        os.close(fd)


def _build_root(plan: Plan, step: _Step) -> None:
    root = plan.root
    step.name = "mount-private"
    rootfs.make_private()
    step.name = "root-bind"
    rootfs.bind_root(root)
    os.umask(0)
    step.name = "dev"
    rootfs.setup_dev(root + b"/dev")
    step.name = "proc"
    rootfs.setup_proc(root + b"/proc", root + b"/dev/null")
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for source, target, rw, exec_ in plan.binds:
        step.name = f"bind {target.decode(errors='replace')}"
        rootfs.bind(root_fd, plan.persist, source, target, rw, exec_)
    os.close(root_fd)
    step.name = "pivot-root"
    rootfs.pivot(root)
    step.name = "root-readonly"
    rootfs.seal_root()


def _arrange_fds(plan: Plan) -> None:
    """stdio onto 0-2, the report pipe onto 3 (close-on-exec), everything else closed."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (*plan.stdio, plan.report_fd)]
    for target, fd in enumerate(high[:3]):
        os.dup2(fd, target, inheritable=True)
    os.dup2(high[3], 3, inheritable=False)
    plan.report_fd = 3
    close_range(4)


def _drop_privileges(plan: Plan, step: _Step) -> None:
    spec = plan.spec
    step.name = "bounding-set"
    caps.drop_bounding_set(plan.last_cap)
    caps.clear_ambient()
    step.name = "securebits"
    caps.lock_securebits()
    step.name = "ids"
    caps.switch_ids(spec.uid, spec.gid)
    step.name = "capabilities"
    caps.clear_capabilities()
    caps.set_dumpable(False)
    # after the id change (which clears it): die with the launcher, like bwrap --die-with-parent
    caps.prctl(caps.PR_SET_PDEATHSIG, int(signal.SIGKILL))
    step.name = "no-new-privs"
    caps.set_no_new_privs()
    step.name = "seccomp"
    plan.filter.load()


def _resolve(plan: Plan) -> bytes:
    program = plan.argv[0]
    if b"/" in program:
        return program
    for directory in plan.env.get(b"PATH", b"/usr/sbin:/usr/bin:/sbin:/bin").split(b":"):
        candidate = directory + b"/" + program
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(errno_mod.ENOENT, f"{program.decode(errors='replace')} not found in PATH")


def _spawn_and_reap(plan: Plan, path: bytes) -> int:
    """Start the command as PID 2, report it, reap every child until it exits."""
    child = [0]

    def forward(signum: int, _frame: object) -> None:
        if child[0]:
            os.kill(child[0], signum)

    for signum in plan.sigdef:  # ignored dispositions would survive execve
        if _signal.getsignal(signum) == SIG_IGN:
            _signal.signal(signum, SIG_DFL)
    for signum in FORWARDED:
        _signal.signal(signum, forward)
    child[0] = _start_command(plan, path)
    os.write(plan.report_fd, b"R" + struct.pack("<i", child[0]))
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 127
        if pid == child[0]:
            os.write(plan.report_fd, b"X" + struct.pack("<i", status))
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)


def _start_command(plan: Plan, path: bytes) -> int:
    """vfork + execve through ``subprocess``; raises ``OSError`` if exec fails.

    vfork copies no page tables and takes no copy-on-write faults; CPython's child
    runs only C code, resets handlers and the mask, and reports exec errors. No signal
    is ignored at this point (reset by the caller), so the command starts with every
    default disposition. Not ``os.posix_spawn``: glibc's leaves its internal signals
    (32, 33) ignored in the child, and musl programs need those.
    """
    proc = subprocess.Popen(plan.argv, executable=path, env=plan.env, close_fds=False,
                            restore_signals=False, start_new_session=True)
    _KEEP.append(proc)  # never waited through Popen: the reaper loop collects it
    return proc.pid


_KEEP: list[subprocess.Popen] = []
