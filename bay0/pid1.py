"""The duties of PID 1: signals, reaping, Ctrl-Alt-Del, reboot, clean children.

bay0 is single-threaded. Every asynchronous signal is blocked and collected with
``sigtimedwait`` from the main loop (tini's model), so no handler ever runs in the
middle of bay0's own work. The synchronous fault signals (SEGV, BUS, ILL, FPE,
ABRT, SYS, TRAP) stay unblocked: a bug there must crash loudly, and PID 1 dying
panics the kernel, which ``panic=`` turns into a reboot.

Reaping: ``reap_children`` peeks with ``waitid(WNOWAIT)`` so a child someone else
waits for (a persona's PID 1, whose ``Persona.wait`` reads its exit record) is handed
to its owner; every other child (orphans reparented to PID 1, tools) is reaped here.

Children started by bay0 (``run_tool``) get an empty signal mask and default
dispositions: a blocked or ignored signal survives ``execve``.
"""

from __future__ import annotations

import _signal as signal  # the signal module minus its enum wrappers (enum: 0.15 s cold)
import os
import time

from bay0.errors import ToolError
from bay0.frozen import Frozen

# Only for type checkers: typing and collections.abc stay out of the boot path, and
# ctypes loads when first needed (reboot, a tool's signal reset), not before READY.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes
    from collections.abc import Callable, Iterable
    from typing import NoReturn, Protocol
else:
    Protocol = object

# linux/reboot.h
LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
LINUX_REBOOT_CMD_CAD_OFF = 0x00000000

# Faults raised by bay0's own code: left unblocked (tini does the same).
SYNCHRONOUS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                         signal.SIGABRT, signal.SIGSYS, signal.SIGTRAP})
UNBLOCKABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

_LIBC: list[ctypes.CDLL] = []


def libc() -> ctypes.CDLL:
    """The loaded C library (glibc or musl alike: ``CDLL(None)``)."""
    if not _LIBC:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        lib.reboot.argtypes = [ctypes.c_int]
        lib.reboot.restype = ctypes.c_int
        _LIBC.append(lib)
    return _LIBC[0]


def collected_signals() -> frozenset[int]:
    """Every signal bay0 blocks and collects."""
    return frozenset(signal.valid_signals()) - SYNCHRONOUS - UNBLOCKABLE


def block_signals() -> frozenset[int]:
    """Block every collectable signal in this (only) thread; returns the set."""
    signals = collected_signals()
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    return signals


def reboot_syscall(cmd: int) -> None:
    """reboot(2) with ``cmd``; raises ``OSError`` (EPERM when not allowed)."""
    import ctypes

    if libc().reboot(ctypes.c_int(cmd & 0xFFFFFFFF).value) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"reboot: {os.strerror(err)}")


def disable_cad(path: str = "/proc/sys/kernel/ctrl-alt-del") -> None:
    """Make Ctrl-Alt-Del send SIGINT to PID 1 instead of an immediate hard reboot.

    Writes 0 to the ``kernel.ctrl-alt-del`` sysctl: the same kernel variable that
    reboot(``LINUX_REBOOT_CMD_CAD_OFF``) clears, without loading ctypes before READY.
    Raises ``OSError``.
    """
    with open(path, "w", encoding="ascii") as f:
        f.write("0")


# ---- reaping ----------------------------------------------------------------------


class Reaped(Frozen):
    """A child reaped by ``reap_children``: its pid and raw wait status."""

    __slots__ = ("pid", "status")

    def __init__(self, pid: int, status: int) -> None:
        self._set(pid=pid, status=status)


def reap_children(claim: Callable[[int], bool] | None = None) -> list[Reaped]:
    """Collect every exited child without blocking.

    ``claim(pid)`` lets the owner of a child reap it itself (returning True); a
    claimed child that is still a zombie afterwards is reaped here anyway, so a
    buggy owner cannot leak zombies. Returns the children reaped here.
    """
    reaped: list[Reaped] = []
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None:
            return reaped
        pid = info.si_pid
        claimed = claim(pid) if claim is not None else False
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if got == pid and not claimed:
            reaped.append(Reaped(pid, status))


def signal_name(signo: int) -> str:
    """``SIGTERM`` for 15; the number itself when it names no signal."""
    import signal as named  # loads enum: only ever after READY

    try:
        return named.Signals(signo).name
    except ValueError:
        return str(signo)


def describe_status(status: int) -> str:
    """``exit 3`` or ``signal SIGKILL`` for a raw wait status."""
    if os.WIFSIGNALED(status):
        return f"signal {signal_name(os.WTERMSIG(status))}"
    return f"exit {os.WEXITSTATUS(status)}"


# ---- children -----------------------------------------------------------------------


def run_tool(argv: Iterable[str], *, timeout: float = 30.0, input: bytes | None = None,
             check: bool = True) -> tuple[int, bytes, bytes]:
    """Run a system tool with a clean signal state; returns (status code, stdout, stderr).

    argv only, never a shell; a fixed minimal environment; stdin from ``input`` or
    /dev/null. Raises ``ToolError`` naming the command when it cannot start, times out
    or (with ``check``) exits non-zero.
    """
    argv = [str(a) for a in argv]
    exe = argv[0] if "/" in argv[0] else _which(argv[0])
    line = " ".join(argv)
    if exe is None:
        raise ToolError(f"{argv[0]} is not installed", "the Spine must ship it")
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(4)]
    env = {"PATH": TOOL_PATH, "LC_ALL": "C"}
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only makes system calls, then execs
        _exec_child(exe, argv, env, (pipes[0][0], pipes[1][1], pipes[2][1]), pipes[3][1])
    report_r = pipes[3][0]
    for fd in (pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]):
        os.close(fd)
    failed = os.read(report_r, 64)
    os.close(report_r)
    if failed:
        for fd in (pipes[0][1], pipes[1][0], pipes[2][0]):
            os.close(fd)
        os.waitpid(pid, 0)
        err = int(failed)
        raise ToolError(f"{argv[0]} could not start: {os.strerror(err)}", f"check: {line}")
    out, err, status = _communicate(pid, pipes[0][1], pipes[1][0], pipes[2][0], input, timeout)
    if status is None:
        raise ToolError(f"{argv[0]} timed out after {timeout:g}s (killed)", f"check: {line}")
    code = os.waitstatus_to_exitcode(status)
    if check and code != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise ToolError(f"{argv[0]} failed: {lines[-1] if lines else f'status {code}'}",
                        f"check: {line}")
    return code, out, err


def reset_signal_state() -> None:
    """Empty mask and default dispositions for every signal, glibc's internal ones too.

    glibc's posix_spawn leaves its two internal real-time signals (32, 33) ignored in
    the new program, and its sigaction() refuses to touch them, so they are reset with
    the raw rt_sigaction system call (an all-zero ``struct sigaction`` is SIG_DFL).
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    for signo in sorted(set(signal.valid_signals()) - UNBLOCKABLE):
        signal.signal(signo, signal.SIG_DFL)
    number = _RT_SIGACTION.get(os.uname().machine)
    if number is not None:
        import ctypes

        zero = ctypes.create_string_buffer(32)
        for signo in range(1, signal.NSIG):
            if signo not in signal.valid_signals():
                libc().syscall(ctypes.c_long(number), ctypes.c_long(signo), zero,
                               ctypes.c_long(0), ctypes.c_long(8))


_RT_SIGACTION = {"x86_64": 13, "aarch64": 134}


def _exec_child(exe: str, argv: list[str], env: dict[str, str], stdio: tuple[int, int, int],
                report: int) -> None:  # pragma: no cover - runs in the forked child
    try:
        reset_signal_state()
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        os.execve(exe, argv, env)
    except OSError as e:
        os.write(report, str(e.errno or 1).encode())
    finally:
        os._exit(127)


def _which(name: str) -> str | None:
    for directory in TOOL_PATH.split(":"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _communicate(pid: int, stdin: int, out_fd: int, err_fd: int, data: bytes | None,
                 timeout: float) -> tuple[bytes, bytes, int | None]:
    """Feed stdin, drain stdout/stderr, wait for ``pid`` (killed at ``timeout``)."""
    import selectors

    deadline = time.monotonic() + timeout
    pending = memoryview(data or b"")
    chunks: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    sel = selectors.DefaultSelector()
    for fd in (out_fd, err_fd):
        sel.register(fd, selectors.EVENT_READ)
    if pending:
        os.set_blocking(stdin, False)
        sel.register(stdin, selectors.EVENT_WRITE)
    else:
        os.close(stdin)
    killed = False
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0 and not killed:
            os.kill(pid, signal.SIGKILL)
            killed = True
        for key, _ in sel.select(max(left, 0.05) if not killed else 0.5):
            fd = key.fd
            if fd == stdin:
                try:
                    pending = pending[os.write(fd, pending):]
                except BrokenPipeError:
                    pending = memoryview(b"")
                if not pending:
                    sel.unregister(fd)
                    os.close(fd)
                continue
            chunk = os.read(fd, 65536)
            if chunk:
                chunks[fd].append(chunk)
            else:
                sel.unregister(fd)
                os.close(fd)
    sel.close()
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks[out_fd]), b"".join(chunks[err_fd]), None if killed else status


# ---- the main loop --------------------------------------------------------------------


class Warden(Protocol):
    """What the loop drives (bay0.main's warden; tests pass fakes)."""

    def on_signal(self, signo: int) -> None: ...
    def claim_child(self, pid: int) -> bool: ...
    def on_reaped(self, reaped: Reaped) -> None: ...
    def tick(self, now: float) -> float: ...  # returns the next deadline (monotonic)
    def on_error(self, error: BaseException) -> None: ...


class Loop:
    """sigtimedwait-driven main loop: signals, reaping, periodic work. Never returns."""

    def __init__(self, warden: Warden, signals: frozenset[int], *, max_wait: float = 1.0,
                 fatal: Callable[[BaseException], NoReturn]) -> None:
        self.warden = warden
        self.signals = signals
        self.max_wait = max_wait
        self.fatal = fatal  # called when the warden cannot even handle its own error

    def run(self) -> NoReturn:
        while True:
            try:
                self.step()
            except BaseException as error:  # PID 1 answers every exception deliberately
                try:
                    self.warden.on_error(error)
                except BaseException as second:  # noqa: BLE001 - nothing else is left
                    self.fatal(second)

    def step(self) -> None:
        """One iteration: wait for a signal or the next deadline, then do the work."""
        now = time.monotonic()
        deadline = self.warden.tick(now)
        wait = min(max(deadline - time.monotonic(), 0.0), self.max_wait)
        info = signal.sigtimedwait(self.signals, wait)
        while info is not None:
            if info.si_signo != signal.SIGCHLD:
                self.warden.on_signal(info.si_signo)
            info = signal.sigtimedwait(self.signals, 0)
        for child in reap_children(self.warden.claim_child):
            self.warden.on_reaped(child)


def hang_forever() -> NoReturn:
    """Stop for good without exiting (PID 1 must not exit); the watchdog resets."""
    while True:
        time.sleep(3600)


class Machine:
    """Deliberate reboot and power-off: stop what runs, sync, reboot(2), never return.

    ``before`` (stop the personas, unmount) is best effort: its failure is logged and
    the reboot goes ahead. If reboot(2) itself fails, bay0 hangs without pinging the
    watchdog, which then resets the machine.
    """

    def __init__(self, log, *, before: Callable[[], None] | None = None,
                 syscall: Callable[[int], None] = reboot_syscall) -> None:
        self.log = log
        self.before = before
        self.syscall = syscall

    def reboot(self, reason: str) -> NoReturn:
        self._final(LINUX_REBOOT_CMD_RESTART, "reboot", reason)

    def poweroff(self, reason: str) -> NoReturn:
        self._final(LINUX_REBOOT_CMD_POWER_OFF, "poweroff", reason)

    def _final(self, cmd: int, what: str, reason: str) -> NoReturn:
        self.log.event(what, reason=reason)
        if self.before is not None:
            try:
                self.before()
            except BaseException as e:  # noqa: BLE001 - the reboot must happen regardless
                self.log.event(f"{what}.cleanup_failed", error=f"{type(e).__name__}: {e}")
        self.log.detach_file()
        os.sync()
        try:
            self.syscall(cmd)
        except OSError as e:
            self.log.event(f"{what}.failed", error=e.strerror, then="hang until the watchdog resets")
        hang_forever()
