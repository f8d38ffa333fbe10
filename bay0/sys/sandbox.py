"""What runs inside the sandbox: PID 1 of a persona, from clone to the command's exit.

``bay0.persona.launch`` prepares a ``Plan`` (every value as bytes, the seccomp program
loaded into a ctypes buffer) and clones; the child calls ``run_child(plan)``, which
never returns. Nothing here imports lazily or builds what could be built before the
fork: every page the child writes is a copy of bay0's (see
docs/implementation/sandbox.md for each step and why).
"""

from __future__ import annotations

import _posixsubprocess
import _signal
import ctypes
import errno as errno_mod
import fcntl
import gc
import os
import resource
import signal
import socket
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from bay0.sys import caps, netns, ns, rootfs
from bay0.sys import mount as m
from bay0.sys.libc import LIBC, close_range, nr
from bay0.sys.seccomp import SECCOMP_SET_MODE_FILTER, LoadableFilter

SIOCSIFFLAGS = 0x8914
IFF_UP_LOOPBACK_RUNNING = 0x1 | 0x8 | 0x40
FORWARDED = tuple(int(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                                   signal.SIGUSR1, signal.SIGUSR2))
# The C module, not signal.py: its wrappers turn every value into an enum member,
# and each object touched after the fork is a page copied.
SIG_DFL, SIG_IGN, SIG_SETMASK = int(signal.SIG_DFL), int(signal.SIG_IGN), int(signal.SIG_SETMASK)
SIGKILL = int(signal.SIGKILL)
# ``ip link set lo up`` by ioctl on a ctypes socket (no socket object)
_IFREQ_LO_UP = ctypes.create_string_buffer(struct.pack("16sH22x", b"lo", IFF_UP_LOOPBACK_RUNNING), 40)

# What the child calls, bound here once: a global name is one dict lookup, while
# ``module.attr`` in never-warmed code also misses the type cache (a write, so a
# copied page) every time. See run_child().
# Private function objects without argtypes (LIBC.x would be the shared, typed ones):
# every argument here is a small int, bytes, None or a ctypes buffer, which ctypes
# converts in place, where an argtype's from_param allocates an object per argument
# (about half the cost of each call; libffi widens an int to the full register).
# 48 prctl and ~20 mount calls per launch.
_prctl, _mount, _umount2, _sethostname, _socket, _ioctl = (
    LIBC["prctl"], LIBC["mount"], LIBC["umount2"], LIBC["sethostname"], LIBC["socket"], LIBC["ioctl"])
_syscall = LIBC.syscall
_sigmask, _set_wakeup_fd, _signal_set = _signal.pthread_sigmask, _signal.set_wakeup_fd, _signal.signal
_umask, _mknod, _symlink, _lstat, _access, F_OK = os.umask, os.mknod, os.symlink, os.lstat, os.access, os.F_OK
_chdir, _setsid, _dup2, _close, _write, _read, _pipe = (
    os.chdir, os.setsid, os.dup2, os.close, os.write, os.read, os.pipe)
_setgroups, _setresgid, _setresuid, _kill, _waitpid, _exit = (
    os.setgroups, os.setresgid, os.setresuid, os.kill, os.waitpid, os._exit)
_WIFSIGNALED, _WTERMSIG, _WEXITSTATUS = os.WIFSIGNALED, os.WTERMSIG, os.WEXITSTATUS
_S_ISDIR, _setrlimit, _fcntl = stat.S_ISDIR, resource.setrlimit, fcntl.fcntl
_pack_i = struct.Struct("<i").pack
F_DUPFD_CLOEXEC = fcntl.F_DUPFD_CLOEXEC
RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_CORE = resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC, resource.RLIMIT_CORE
AF_INET, SOCK_DGRAM_CLOEXEC = int(socket.AF_INET), int(socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
PR_SET_NAME, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = (
    caps.PR_SET_NAME, caps.PR_CAPBSET_DROP, caps.PR_CAP_AMBIENT, caps.PR_CAP_AMBIENT_CLEAR_ALL)
PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN = caps.PR_SET_SECUREBITS, caps.SECUREBITS_LOCKED_DOWN
PR_SET_DUMPABLE, PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = (
    caps.PR_SET_DUMPABLE, caps.PR_SET_PDEATHSIG, caps.PR_SET_NO_NEW_PRIVS)
NR_CAPSET, NR_SECCOMP = ctypes.c_long(nr("capset")), ctypes.c_long(nr("seccomp"))
NR_PIVOT_ROOT, NR_CLOSE_RANGE = ctypes.c_long(nr("pivot_root")), ctypes.c_long(nr("close_range"))
_DOT, MNT_DETACH = ctypes.c_char_p(b"."), m.MNT_DETACH
FD_4, FD_MAX = ctypes.c_long(4), ctypes.c_long(0xFFFFFFFF)
ZERO, SECCOMP_SET_MODE_FILTER = ctypes.c_long(0), ctypes.c_long(SECCOMP_SET_MODE_FILTER)
_CAP_HEADER, _CAP_EMPTY = caps.capset_args()
_COMM = ctypes.create_string_buffer(b"persona-init")
# mount flags of each step (bay0.sys.rootfs explains the choices)
MS_REC_PRIVATE, MS_BIND, MS_BIND_REC = m.MS_REC | m.MS_PRIVATE, m.MS_BIND, m.MS_BIND | m.MS_REC
NOSUID_NODEV_NOEXEC = rootfs.NOSUID_NODEV_NOEXEC
DEV_FLAGS, DEV_DATA = rootfs.DEV_FLAGS, rootfs.DEV_DATA
DEV_REMOUNT = m.MS_REMOUNT | m.MS_RDONLY | DEV_FLAGS
MASK_FLAGS = m.MS_RDONLY | NOSUID_NODEV_NOEXEC
RO_REMOUNT = m.MS_REMOUNT | m.MS_BIND | m.MS_RDONLY | NOSUID_NODEV_NOEXEC
ROOT_REMOUNT = m.MS_REMOUNT | m.MS_BIND | m.MS_RDONLY | m.MS_NOSUID | m.MS_NODEV
# _posixsubprocess.fork_exec where its signature is the one this module was written
# against (CPython 3.11's, as subprocess.Popen._execute_child calls it); else Popen.
_FORK_EXEC = _posixsubprocess.fork_exec if sys.version_info[:2] == (3, 11) else None


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
    sigdef: frozenset[int]
    join_cgroup: bool = False
    args: tuple = ()  # child_args(self), the child's common path


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


def run_child(plan: Plan) -> None:
    """Set up the sandbox, spawn the command, reap, exit. Never returns.

    Written for a copy-on-write child: every page it writes is copied from bay0's,
    and code that only ever runs here is never warm (no specialised bytecode, no
    type-cache entries). So the common path is one function working on locals
    unpacked from ``plan.args`` (built by ``child_args`` before the fork), calling
    C functions bound at import: no attribute lookups, no method calls, no
    formatting unless a step fails. Binds, veth networking and the no-clone3
    fallback take the slower general helpers.
    """
    gc.disable()  # a collection would touch (and copy) every page of the parent's heap
    step = ["start"]
    try:
        code = _child_main(plan, plan.args, step)
    except BaseException as e:  # report every failure as (step, errno, message)
        err = getattr(e, "errno", None) or 0
        text = f"{step[0]}\0{e.strerror if isinstance(e, OSError) and e.strerror else e}".encode()[:1000]
        try:
            os.write(plan.report_fd, b"E" + struct.pack("<iH", err, len(text)) + text)
        finally:
            os._exit(127)
    _exit(code)


def child_args(plan: Plan) -> tuple:
    """Everything the child's common path needs, flattened (computed in the parent)."""
    spec = plan.spec
    program = plan.argv[0]
    return (
        plan.root, rootfs.layout(plan.root), plan.binds, spec.name.encode(),
        ((RLIMIT_NOFILE, (spec.nofile, spec.nofile)), (RLIMIT_NPROC, (spec.nproc, spec.nproc)),
         (RLIMIT_CORE, (0, 0))),
        plan.stdio + (plan.report_fd,), range(plan.last_cap + 1), spec.uid, spec.gid,
        os.fsencode(spec.cwd), plan.argv, program if b"/" in program else None,
        [k + b"=" + v for k, v in plan.env.items()], plan.filter.prog_ref,
        tuple(s for s in plan.sigdef if _signal.getsignal(s) == SIG_IGN),
    )


def _fail(what: bytes) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what.decode(errors='replace')}: {os.strerror(err)}")


def _child_main(plan: Plan, args: tuple, step: list[str]) -> int:
    (root, layout, binds, name, limits, fds, caps_range, uid, gid, cwd, argv, path, env,
     seccomp_prog, ignored) = args
    (dev, dev_nodes, dev_links, proc, proc_masked, proc_readonly, dev_null) = layout
    step[0] = "signals"
    _prctl(PR_SET_NAME, _COMM, 0, 0, 0)
    _sigmask(SIG_SETMASK, ())
    _set_wakeup_fd(-1)
    if plan.join_cgroup:  # no clone3: move in, then root a cgroup namespace here
        step[0] = "cgroup"
        os.write(plan.cgroup_fd, b"0")
        ns.unshare(ns.CLONE_NEWCGROUP)
    if plan.sync_fd >= 0:  # veth: wait for bay0 to move our end in, then configure it
        step[0] = "network"
        os.close(plan.sync_w)
        if os.read(plan.sync_fd, 1) != b"g":
            raise OSError(errno_mod.ECANCELED, "bay0 could not set up the host side")
        netns.configure_inside(plan.spec.network)
    # the filesystem view (bay0.sys.rootfs explains each step; its layout() precomputes the paths)
    step[0] = "mount-private"
    if _mount(None, b"/", None, MS_REC_PRIVATE, None) < 0:
        raise _fail(b"mount /")
    step[0] = "root-bind"
    if _mount(root, root, None, MS_BIND, None) < 0:
        raise _fail(b"mount " + root)
    _umask(0)
    step[0] = "dev"
    if _mount(b"tmpfs", dev, b"tmpfs", DEV_FLAGS, DEV_DATA) < 0:
        raise _fail(b"mount " + dev)
    for node, mode, device in dev_nodes:
        _mknod(node, mode, device)
    for target, link in dev_links:
        _symlink(target, link)
    if _mount(None, dev, None, DEV_REMOUNT, None) < 0:
        raise _fail(b"mount " + dev)
    step[0] = "proc"
    if _mount(b"proc", proc, b"proc", NOSUID_NODEV_NOEXEC, b"hidepid=2") < 0:
        raise _fail(b"mount " + proc)
    for entry in proc_masked:  # access() answers absence without raising (an exception costs pages)
        if not _access(entry, F_OK, follow_symlinks=False):
            continue
        if _S_ISDIR(_lstat(entry).st_mode):
            if _mount(b"tmpfs", entry, b"tmpfs", MASK_FLAGS, b"size=0,nr_inodes=1") < 0:
                raise _fail(b"mount " + entry)
        elif _mount(dev_null, entry, None, MS_BIND, None) < 0:
            raise _fail(b"mount " + entry)
    for entry in proc_readonly:
        if not _access(entry, F_OK, follow_symlinks=False):
            continue
        if _mount(entry, entry, None, MS_BIND_REC, None) < 0 or _mount(None, entry, None, RO_REMOUNT, None) < 0:
            raise _fail(b"mount " + entry)
    if binds:
        _binds(plan, root, step)
    step[0] = "pivot-root"  # arguments built at import: no Python wrapper runs cold here
    _chdir(root)
    if _syscall(NR_PIVOT_ROOT, _DOT, _DOT) < 0:
        raise _fail(b"pivot_root")
    if _umount2(b".", MNT_DETACH) < 0:  # the old root, stacked on top of the new one
        raise _fail(b"umount the old root")
    _chdir(b"/")
    step[0] = "root-readonly"
    if _mount(None, b"/", None, ROOT_REMOUNT, None) < 0:
        raise _fail(b"mount /")
    step[0] = "hostname"
    if _sethostname(name, len(name)) < 0:
        raise _fail(b"sethostname")
    step[0] = "loopback"
    sock = _socket(AF_INET, SOCK_DGRAM_CLOEXEC, 0)
    if sock < 0 or _ioctl(sock, SIOCSIFFLAGS, _IFREQ_LO_UP) < 0:
        raise _fail(b"SIOCSIFFLAGS lo")
    _close(sock)
    step[0] = "rlimits"
    for limit, value in limits:
        _setrlimit(limit, value)
    step[0] = "setsid"
    _setsid()
    step[0] = "fds"  # stdio onto 0-2, the report pipe onto 3 (close-on-exec), the rest closed
    high = [_fcntl(fd, F_DUPFD_CLOEXEC, 10) for fd in fds]
    _dup2(high[0], 0)
    _dup2(high[1], 1)
    _dup2(high[2], 2)
    _dup2(high[3], 3, False)
    plan.report_fd = 3
    if _syscall(NR_CLOSE_RANGE, FD_4, FD_MAX, ZERO) < 0:
        close_range(4)  # before Linux 5.9: the slow fallback
    step[0] = "bounding-set"  # minijail's order, see bay0.sys.caps
    for cap in caps_range:
        if _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            raise _fail(b"prctl(PR_CAPBSET_DROP)")
    if _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0:
        raise _fail(b"prctl(PR_CAP_AMBIENT)")
    step[0] = "securebits"
    if _prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN, 0, 0, 0) < 0:
        raise _fail(b"prctl(PR_SET_SECUREBITS)")
    step[0] = "ids"
    _setgroups(())
    _setresgid(gid, gid, gid)
    _setresuid(uid, uid, uid)
    step[0] = "capabilities"
    if _syscall(NR_CAPSET, _CAP_HEADER, _CAP_EMPTY) < 0:
        raise _fail(b"capset")
    # non-dumpable; then (after the id change, which clears it) die with the launcher
    if _prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 or _prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0:
        raise _fail(b"prctl")
    step[0] = "no-new-privs"
    if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
        raise _fail(b"prctl(PR_SET_NO_NEW_PRIVS)")
    step[0] = "seccomp"
    if _syscall(NR_SECCOMP, SECCOMP_SET_MODE_FILTER, ZERO, seccomp_prog) < 0:
        raise _fail(b"seccomp")
    step[0] = "chdir"
    _chdir(cwd)
    _umask(0o077)
    step[0] = "exec"
    return _spawn_and_reap(plan, argv, path or _resolve(plan), env, ignored)


def _binds(plan: Plan, root: bytes, step: list[str]) -> None:
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for source, target, rw, exec_ in plan.binds:
        step[0] = f"bind {target.decode(errors='replace')}"
        rootfs.bind(root_fd, plan.persist, source, target, rw, exec_)
    os.close(root_fd)


def _resolve(plan: Plan) -> bytes:
    program = plan.argv[0]
    for directory in plan.env.get(b"PATH", b"/usr/sbin:/usr/bin:/sbin:/bin").split(b":"):
        candidate = directory + b"/" + program
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(errno_mod.ENOENT, f"{program.decode(errors='replace')} not found in PATH")


def _spawn_and_reap(plan: Plan, argv: list[bytes], path: bytes, env: list[bytes],
                    ignored: tuple[int, ...]) -> int:
    """Start the command as PID 2, report it, reap every child until it exits."""
    for signum in ignored:  # ignored dispositions would survive execve
        _signal_set(signum, SIG_DFL)
    for signum in FORWARDED:
        _signal_set(signum, _forward)
    pid = _COMMAND[0] = _start_command(plan, argv, path, env)
    _write(3, b"R" + _pack_i(pid))
    while True:
        try:
            reaped, status = _waitpid(-1, 0)
        except ChildProcessError:
            return 127
        if reaped == pid:
            _write(3, b"X" + _pack_i(status))
            if _WIFSIGNALED(status):
                return 128 + _WTERMSIG(status)
            return _WEXITSTATUS(status)


_COMMAND = [0]  # PID 1's command once started (a module-level handler: no closure to build)


def _forward(signum: int, _frame: object) -> None:
    if _COMMAND[0]:
        _kill(_COMMAND[0], signum)


def _start_command(plan: Plan, argv: list[bytes], path: bytes, env: list[bytes]) -> int:
    """vfork + execve in C (``_posixsubprocess``, what ``subprocess`` uses); raises ``OSError``.

    vfork copies no page tables and takes no copy-on-write faults; the child runs
    only C code, resets handlers and the mask, starts a session and reports an
    exec error on a pipe. No signal is ignored at this point (reset by the caller),
    so the command starts with every default disposition. Called directly where
    its signature is known (3.11, as ``subprocess`` calls it), because
    ``subprocess.Popen``'s Python layer is cold code in this child and cost more
    than the exec; other versions go through ``Popen``. Not ``os.posix_spawn``:
    glibc's leaves its internal signals (32, 33) ignored in the child, and musl
    programs need those.
    """
    if _FORK_EXEC is None:
        proc = subprocess.Popen(argv, executable=path, env=plan.env, close_fds=False,
                                restore_signals=False, start_new_session=True)
        _KEEP.append(proc)  # never waited through Popen: the reaper loop collects it
        return proc.pid
    errpipe_read, errpipe_write = _pipe()
    try:
        pid = _FORK_EXEC(argv, (path,), False, (errpipe_write,), None, env, -1, -1, -1, -1, -1, -1,
                         errpipe_read, errpipe_write, False, True, -1, None, None, None, -1, None, True)
    finally:
        _close(errpipe_write)
    failure = _read(errpipe_read, 50000)
    _close(errpipe_read)
    if failure:  # "OSError:<hex errno>:<noexec>" from the child, which has exited
        _waitpid(pid, 0)
        err = int(failure.split(b":")[1], 16)
        raise OSError(err, f"{path.decode(errors='replace')}: {os.strerror(err)}")
    return pid


_KEEP: list[subprocess.Popen] = []
