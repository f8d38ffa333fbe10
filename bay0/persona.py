"""The persona launcher: one verified image directory in, one contained process out.

``launch(spec)`` creates the persona's cgroup, then a single raw ``clone3`` into new
PID, mount, UTS, IPC, network and cgroup namespaces, straight into that cgroup. The
child is PID 1 of the persona (bay0.sys.sandbox): it builds the filesystem view
(bay0.sys.rootfs), sets hostname, loopback, rlimits and ids, drops every capability,
locks securebits, sets no_new_privs, loads the seccomp filter, and starts the command
as PID 2 with default signal dispositions, then reaps until the command exits and
exits with its status. Every setup failure comes back over a close-on-exec pipe as
(step, errno, message), so a launch either succeeds or raises ``SandboxError`` naming
the step. docs/implementation/sandbox.md explains each step.
"""

from __future__ import annotations

import errno as errno_mod
import os
import re
import select
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bay0 import pid1
from bay0.formats.inventory import RESERVED_TARGETS
from bay0.sys import SandboxError, caps, netns, ns
from bay0.sys.cgroup import Ceilings, Cgroup, own_cgroup
from bay0.sys.sandbox import Plan, child_args, read_record, run_child
from bay0.sys.seccomp import LoadableFilter, build_filter
from bay0.sys.seccomp_profiles import PROFILES

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CHILD_FLAGS = ns.PERSONA_NAMESPACES


@dataclass(frozen=True)
class Bind:
    """A declared bind mount: ``source`` (relative to /persist) onto ``target`` in the persona.

    Same fields as ``bay0.formats.inventory.Mount``, which is accepted wherever this is.
    """

    source: str
    target: str
    rw: bool = False
    exec: bool = False


@dataclass(frozen=True)
class PersonaSpec:
    """Everything the launcher needs; validated by ``validate()`` before any side effect.

    ``network`` is None (own netns, loopback only) or a ``bay0.formats.inventory.Network``;
    ``ceilings`` a ``cgroup.Ceilings`` or the inventory's ``Ceilings``; ``binds`` are
    ``Bind`` or inventory ``Mount`` objects.
    """

    name: str
    root: str
    argv: tuple[str, ...]
    uid: int
    gid: int
    env: Mapping[str, str] = field(default_factory=dict)
    binds: tuple[Any, ...] = ()
    ceilings: Ceilings | Any | None = None
    network: Any = None
    seccomp: str = "default"
    cwd: str = "/"
    persist: str = "/persist"
    cgroup_parent: str | None = None
    nofile: int = 1024
    nproc: int = 4096

    def validate(self) -> None:
        """Raise ``SandboxError`` (step ``spec``) for anything the sandbox must not attempt.

        Runs at every launch, just before the fork: plain loops and str methods (no
        generator, no posixpath call), since every object it touches is a page bay0
        takes a fault on again after the fork.
        """
        problems = []
        if not NAME_RE.match(self.name):
            problems.append(f"persona name {self.name!r} is not a lowercase hostname label")
        if self.uid <= 0 or self.gid <= 0:
            problems.append("uid and gid must be unprivileged (non-zero)")
        if not self.argv or not self.argv[0]:
            problems.append("argv is empty")
        if self.seccomp not in PROFILES:
            problems.append(f"unknown seccomp profile {self.seccomp!r} (known: {', '.join(PROFILES)})")
        if not (self.root.startswith("/") and self.persist.startswith("/") and self.cwd.startswith("/")):
            problems.append("root, persist and cwd must be absolute paths")
        unsafe = False
        for a in self.argv:
            unsafe = unsafe or "\0" in a
        for k, v in self.env.items():
            unsafe = unsafe or "\0" in k or "\0" in v or "=" in k or not k
        if unsafe:
            problems.append("argv and environment must not contain NUL (or '=' in a name)")
        for b in self.binds:
            parts = b.source.split("/")
            if b.source.startswith("/") or any(p in ("", ".", "..") for p in parts):
                problems.append(f"bind source {b.source!r} must be a plain path inside {self.persist}")
            target = os.path.normpath(b.target)
            if not b.target.startswith("/") or target == "/" or any(
                    target == r or target.startswith(r + "/") for r in RESERVED_TARGETS):
                problems.append(f"bind target {b.target!r} must be an absolute path outside /, /proc, /dev, /sys")
        if problems:
            raise SandboxError(problems[0], "fix the persona's entry in the inventory", step="spec")


@dataclass(frozen=True)
class ExitStatus:
    """How the persona's command ended: ``code`` or ``signal`` (one of them is None)."""

    code: int | None
    signal: int | None

    @classmethod
    def from_wait(cls, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status))
        return cls(os.WEXITSTATUS(status), None)


class Persona:
    """A running persona: host pid of its PID 1, its cgroup, wait/kill."""

    def __init__(self, name: str, pid: int, pidfd: int, child_pid: int, cgroup: Cgroup,
                 report_fd: int, networked: bool = False) -> None:
        self.name = name
        self.networked = networked
        self.pid = pid
        self.child_pid = child_pid
        self.cgroup = cgroup
        self._report_fd = report_fd
        self._pidfd = pidfd if pidfd >= 0 else os.pidfd_open(pid)
        self.status: ExitStatus | None = None

    def fileno(self) -> int:
        """A pidfd of the persona's PID 1: readable once it has exited (for poll/select)."""
        return self._pidfd

    def collect(self, wait_status: int) -> ExitStatus:
        """Record an exit that a global reaper (bay0's waitpid(-1) loop) already collected."""
        return self._finish(wait_status)

    def _finish(self, wait_status: int) -> ExitStatus:
        record = read_record(self._report_fd)
        if record and record[0] == "X":
            self.status = ExitStatus.from_wait(record[1])
        else:  # PID 1 itself was killed (cgroup.kill): the whole namespace went with it
            self.status = ExitStatus.from_wait(wait_status)
        os.close(self._report_fd)
        os.close(self._pidfd)
        return self.status

    def wait(self, timeout: float | None = None) -> ExitStatus:
        """Wait for the command to end; raises ``TimeoutError`` after ``timeout`` seconds."""
        if self.status is not None:
            return self.status
        if timeout is not None and not select.select([self._pidfd], [], [], timeout)[0]:
            raise TimeoutError(f"persona {self.name} still running after {timeout}s")
        _, status = os.waitpid(self.pid, 0)
        return self._finish(status)

    def kill(self) -> None:
        """SIGKILL everything in the persona's cgroup; raises ``CgroupError``."""
        self.cgroup.kill()

    def running(self) -> bool:
        """Whether the persona's PID 1 is still alive."""
        return self.status is None and bool(select.select([self._pidfd], [], [], 0)[0]) is False

    def close(self) -> ExitStatus:
        """Kill if still running, reap, and remove the cgroup; raises ``CgroupError``."""
        if self.status is None:
            if self.running():
                self.kill()
            self.wait()
        self.cgroup.remove()
        if self.networked:
            netns.teardown(self.name)
        return self.status  # type: ignore[return-value]


def launch(spec: PersonaSpec, *, stdin: int | None = None, stdout: int | None = None,
           stderr: int | None = None) -> Persona:
    """Start ``spec`` in its sandbox; stdio fds default to /dev/null.

    Raises ``SandboxError`` (with ``.step``) for a bad spec or a failed setup step and
    ``CgroupError`` when the cgroup cannot be made; nothing is left behind on failure.
    """
    spec.validate()
    if ns.thread_count() != 1:
        raise SandboxError("cannot launch a persona from a threaded process", "launch from bay0's main thread", step="fork")
    group = Cgroup.create(spec.cgroup_parent or own_cgroup(), spec.name, spec.ceilings)
    opened: list[int] = []
    try:
        plan = _prepare(spec, group, (stdin, stdout, stderr), opened)
        pid, pidfd = _clone(plan, opened)
    except BaseException:
        _close_all(opened)
        group.remove()
        raise
    if pid == 0:
        run_child(plan)  # never returns
    keep = (opened[0], plan.sync_w)
    _close_all([fd for fd in opened if fd not in keep])
    return _finish_launch(spec, plan, pid, pidfd, group, opened[0])


def _finish_launch(spec: PersonaSpec, plan: Plan, pid: int, pidfd: int, group: Cgroup,
                   report_r: int) -> Persona:
    """Parent side after clone: host networking, then the child's first report."""
    failure: BaseException | None = None
    if plan.sync_w >= 0:
        try:
            netns.setup_host_side(spec.name, pid, spec.network)
            os.write(plan.sync_w, b"g")
        except BaseException as e:  # the child sees EOF and stops; report this instead
            failure = e
        os.close(plan.sync_w)
    record = read_record(report_r)
    if record and record[0] == "R" and failure is None:
        return Persona(spec.name, pid, pidfd, record[1], group, report_r, spec.network is not None)
    if pidfd >= 0:
        os.close(pidfd)
    if failure is not None:
        group.kill()
    _, status = os.waitpid(pid, 0)
    os.close(report_r)
    group.remove()
    if spec.network is not None:
        netns.teardown(spec.name)
    if failure is not None:
        raise failure
    if record and record[0] == "E":
        _, err, step, message = record
        raise SandboxError(f"persona {spec.name}: {step} failed: {message}",
                           _hint_for(step, err), step=step, errno=err)
    raise SandboxError(f"persona {spec.name}: sandbox died during setup ({_describe(status)})",
                       "see the kernel log (a seccomp kill is logged by audit)", step="setup")


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _hint_for(step: str, err: int) -> str:
    if step.startswith("bind") and err == errno_mod.ELOOP:
        return "bind sources must not be or pass through symlinks; remove the link in /persist"
    if step.startswith("bind") and err == errno_mod.ENOENT:
        return "create the bind source under /persist and the target directory in the image"
    if step == "exec":
        return "the command must exist in the image and be executable by the persona's uid"
    return "see docs/implementation/sandbox.md for what this step needs"


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {pid1.signal_name(os.WTERMSIG(status))}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _prepare(spec: PersonaSpec, group: Cgroup, stdio: tuple[int | None, ...], opened: list[int]) -> Plan:
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    opened += [report_r, report_w]
    fds, null = [], -1
    for fd in stdio:
        if fd is None:  # one /dev/null serves every default (the child dups each slot)
            if null < 0:
                null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                opened.append(null)
            fd = null
        fds.append(fd)
    cgroup_fd = group.open_dir()
    opened.append(cgroup_fd)
    sync_r = sync_w = -1
    if spec.network is not None:
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        opened += [sync_r, sync_w]
    program = build_filter(spec.seccomp, spec.network is not None)
    plan = Plan(
        spec=spec, root=os.fsencode(spec.root), persist=os.fsencode(spec.persist),
        binds=[(os.fsencode(b.source), os.fsencode(b.target), b.rw, b.exec) for b in spec.binds],
        argv=[os.fsencode(a) for a in spec.argv],
        env={os.fsencode(k): os.fsencode(v) for k, v in spec.env.items()},
        filter=_filter(program), last_cap=_last_cap(),
        cgroup_fd=cgroup_fd, sync_fd=sync_r, sync_w=sync_w, report_fd=report_w, stdio=(fds[0], fds[1], fds[2]),
        sigdef=_SIGDEF,
    )
    plan.args = child_args(plan)
    return plan


_FILTERS: dict[bytes, LoadableFilter] = {}
_CACHE: dict[str, object] = {}


def _clone(plan: Plan, opened: list[int]) -> tuple[int, int]:
    """clone3 straight into the cgroup; on kernels without it, clone and join from inside."""
    if not _CACHE.get("no_clone3"):
        try:
            return ns.clone_into_cgroup(_CHILD_FLAGS | ns.CLONE_NEWCGROUP, plan.cgroup_fd)
        except OSError as e:
            if e.errno not in (errno_mod.ENOSYS, errno_mod.EPERM):
                raise
            _CACHE["no_clone3"] = True
    plan.join_cgroup = True
    plan.cgroup_fd = os.open(b"cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=plan.cgroup_fd)
    opened.append(plan.cgroup_fd)
    return ns.clone_process(_CHILD_FLAGS), -1


def _filter(program: bytes) -> LoadableFilter:
    if program not in _FILTERS:
        _FILTERS[program] = LoadableFilter(program)
    return _FILTERS[program]


def _last_cap() -> int:
    if "last_cap" not in _CACHE:
        _CACHE["last_cap"] = caps.last_cap()
    return _CACHE["last_cap"]  # type: ignore[return-value]


_SIGDEF = frozenset(int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))


def spec_from_inventory(persona: Any, root: str, **overrides: Any) -> PersonaSpec:
    """A ``PersonaSpec`` for an inventory ``Persona`` whose image is mounted at ``root``."""
    values: dict[str, Any] = dict(
        name=persona.name, root=root, argv=tuple(persona.command), uid=persona.user.uid,
        gid=persona.user.gid, env=dict(persona.environment), binds=tuple(persona.mounts),
        ceilings=persona.ceilings, network=persona.network, seccomp=persona.seccomp,
    )
    values.update(overrides)
    return PersonaSpec(**values)
