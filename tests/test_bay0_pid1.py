"""bay0's PID-1 loop, run for real as PID 1 of a fresh PID namespace on the host.

Each test forks; the child unshares a PID (and mount) namespace and forks again, so
the grandchild is PID 1 there: orphans are reparented to it, and reboot(2) called by
it kills only that namespace (SIGHUP for restart, SIGINT for power off) — the host
is never at risk. The namespace's PID 1 reports over a pipe.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

import pytest

from bay0 import pid1
from bay0.errors import ToolError
from bay0.log import Log
from tests.conftest import require_root

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000


MS_REC = 0x4000
MS_PRIVATE = 0x40000


def _unshare(flags: int) -> None:
    """unshare(2); a new mount namespace is made private so nothing leaks to the host."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    if flags & CLONE_NEWNS and libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")


def run_as_pid1(body, timeout: float = 10.0, after_start=None) -> tuple[list[str], int]:
    """Run ``body(report)`` as PID 1 of a new PID namespace.

    Returns the lines it reported and the raw wait status of that PID 1 (as seen by
    its parent, which forwards it). ``after_start(host_pid, lines)`` runs in the test
    once PID 1 reported "started".
    """
    require_root()
    r, w = os.pipe()
    outer = os.fork()
    if outer == 0:  # pragma: no cover - child
        code = 99
        try:
            os.close(r)
            _unshare(CLONE_NEWPID | CLONE_NEWNS)
            inner = os.fork()
            if inner == 0:
                try:
                    assert os.getpid() == 1
                    body(lambda text: os.write(w, (text + "\n").encode()))
                finally:
                    os._exit(98)
            os.write(w, f"host-pid {inner}\n".encode())
            _, status = os.waitpid(inner, 0)
            os.write(w, f"status {status}\n".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    lines: list[str] = []
    buf = b""
    deadline = time.monotonic() + timeout
    started = False
    os.set_blocking(r, False)
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(r, 4096)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            lines += [d.decode() for d in done]
            if not started and "started" in lines and after_start is not None:
                started = True
                host_pid = int(next(x for x in lines if x.startswith("host-pid")).split()[1])
                after_start(host_pid, lines)
        else:
            os.kill(outer, signal.SIGKILL)
            pytest.fail(f"PID 1 did not finish in {timeout}s: {lines}")
    finally:
        os.close(r)
        os.waitpid(outer, 0)
    status = int(next(x for x in lines if x.startswith("status")).split()[1])
    return lines, status


class FakeWarden:
    """Reports what the loop hands it; the machine is faked by exiting."""

    def __init__(self, report, claim: set[int] | None = None) -> None:
        self.report = report
        self.claim = claim or set()

    def tick(self, now: float) -> float:
        return now + 0.5

    def on_signal(self, signo: int) -> None:
        self.report(f"signal {signal.Signals(signo).name}")
        if signo == signal.SIGTERM:
            self.report("reboot")
            os._exit(0)

    def claim_child(self, pid: int) -> bool:
        if pid not in self.claim:
            return False
        _, status = os.waitpid(pid, 0)
        self.report(f"claimed {pid} {pid1.describe_status(status)}")
        return True

    def on_reaped(self, reaped: pid1.Reaped) -> None:
        self.report(f"reaped {reaped.pid} {pid1.describe_status(reaped.status)}")

    def on_error(self, error: BaseException) -> None:
        self.report(f"error {error!r}")
        os._exit(5)


def _fork_exit(code: int, delay: float = 0.0) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        time.sleep(delay)
        os._exit(code)
    return pid


def test_orphans_are_reaped_signals_collected_and_claimed_children_left_to_their_owner():
    def body(report):
        signals = pid1.block_signals()
        owned = _fork_exit(4, 0.2)
        parent = os.fork()
        if parent == 0:  # a parent that dies and leaves a child behind
            _fork_exit(7, 0.3)
            os._exit(3)
        report(f"parent {parent} owned {owned}")
        report("started")
        pid1.Loop(FakeWarden(report, {owned}), signals, max_wait=0.1, fatal=lambda e: os._exit(6)).run()

    def poke(host_pid, lines):
        time.sleep(0.6)  # let the orphan finish and be reaped
        os.kill(host_pid, signal.SIGHUP)
        time.sleep(0.2)
        os.kill(host_pid, signal.SIGTERM)

    lines, status = run_as_pid1(body, after_start=poke)
    parent, owned = (int(x) for x in next(x for x in lines if x.startswith("parent")).split()[1::2])
    reaped = [x for x in lines if x.startswith("reaped")]
    assert f"reaped {parent} exit 3" in reaped
    orphans = [x for x in reaped if x.endswith("exit 7")]
    assert len(orphans) == 1, lines  # the grandchild, reparented to PID 1
    assert f"claimed {owned} exit 4" in lines
    assert not any(x.startswith(f"reaped {owned} ") for x in lines)
    assert "signal SIGHUP" in lines and "signal SIGCHLD" not in lines
    assert lines.index("signal SIGTERM") < lines.index("reboot")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_an_exception_in_the_loop_goes_to_the_warden():
    class Exploding(FakeWarden):
        def tick(self, now):
            raise RuntimeError("boom")

    def body(report):
        signals = pid1.block_signals()
        pid1.Loop(Exploding(report), signals, fatal=lambda e: os._exit(6)).run()

    lines, status = run_as_pid1(body)
    assert "error RuntimeError('boom')" in lines
    assert os.WEXITSTATUS(status) == 5


def test_a_warden_that_fails_to_handle_an_error_reaches_the_fatal_path():
    class Broken(FakeWarden):
        def tick(self, now):
            raise RuntimeError("first")

        def on_error(self, error):
            raise ValueError("second")

    def body(report):
        signals = pid1.block_signals()

        def fatal(e):
            report(f"fatal {e!r}")
            os._exit(6)
        pid1.Loop(Broken(report), signals, fatal=fatal).run()

    lines, status = run_as_pid1(body)
    assert "fatal ValueError('second')" in lines
    assert os.WEXITSTATUS(status) == 6


@pytest.mark.parametrize(("what", "signo"), [("reboot", signal.SIGHUP), ("poweroff", signal.SIGINT)])
def test_machine_calls_reboot2_after_logging(what, signo, tmp_path):
    """reboot(2) from a namespace's PID 1 kills it with SIGHUP (restart) or SIGINT (power off)."""
    log_path = tmp_path / "console"

    def body(report):
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o600)
        machine = pid1.Machine(Log(fd), before=lambda: report("before"))
        report("calling")
        getattr(machine, what)("test asked")

    lines, status = run_as_pid1(body)
    assert [x for x in lines if not x.startswith(("host-pid", "status"))] == ["calling", "before"]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signo
    assert f"bay0: event={what} reason=\"test asked\"" in log_path.read_text()


def test_machine_hangs_when_reboot_fails_and_never_returns(tmp_path):
    def body(report):
        def refuse(cmd):
            report(f"syscall {cmd:#x}")
            raise OSError(1, "Operation not permitted")

        signals = pid1.block_signals()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
        signal.signal(signal.SIGALRM, lambda *a: os._exit(42))
        signal.setitimer(signal.ITIMER_REAL, 0.5)  # proves it is still hanging after 0.5 s
        assert signals
        pid1.Machine(Log(os.open(os.devnull, os.O_WRONLY)), syscall=refuse).reboot("x")
        report("returned")

    lines, status = run_as_pid1(body)
    assert f"syscall {pid1.LINUX_REBOOT_CMD_RESTART:#x}" in lines and "returned" not in lines
    assert os.WEXITSTATUS(status) == 42


def test_tools_start_with_an_empty_mask_and_default_dispositions():
    old = signal.pthread_sigmask(signal.SIG_BLOCK, pid1.collected_signals())
    try:
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python's own setting
        code, out, _ = pid1.run_tool(["sh", "-c", "grep -E '^Sig(Blk|Ign)' /proc/self/status"])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert code == 0
    fields = dict(line.split(":\t") for line in out.decode().splitlines())
    assert int(fields["SigBlk"], 16) == 0 and int(fields["SigIgn"], 16) == 0


def test_run_tool_errors_name_the_command():
    with pytest.raises(ToolError, match="false failed") as info:
        pid1.run_tool(["false"])
    assert info.value.hint == "check: false"
    with pytest.raises(ToolError, match="no-such-tool-xyz is not installed"):
        pid1.run_tool(["no-such-tool-xyz"])
    with pytest.raises(ToolError, match=r"sleep timed out after 0.2s"):
        pid1.run_tool(["sleep", "5"], timeout=0.2)
    code, out, err = pid1.run_tool(["sh", "-c", "cat; echo err >&2; exit 3"], input=b"x" * 200000,
                                   check=False)
    assert (code, len(out), err) == (3, 200000, b"err\n")


def test_describe_status():
    assert pid1.describe_status(3 << 8) == "exit 3"
    assert pid1.describe_status(signal.SIGKILL) == "signal SIGKILL"


def test_disable_cad_clears_the_ctrl_alt_del_sysctl(tmp_path):
    knob = tmp_path / "ctrl-alt-del"
    knob.write_text("1\n")
    pid1.disable_cad(str(knob))
    assert knob.read_text() == "0"
    with pytest.raises(OSError):
        pid1.disable_cad(str(tmp_path / "missing" / "ctrl-alt-del"))


def test_signal_names_and_statuses_read_as_before():
    assert pid1.signal_name(15) == "SIGTERM" and pid1.signal_name(99) == "99"
    assert pid1.describe_status(9) == "signal SIGKILL"  # killed by SIGKILL
    assert pid1.describe_status(3 << 8) == "exit 3"
    assert pid1.Reaped(5, 0) == pid1.Reaped(5, 0) and len({pid1.Reaped(5, 0), pid1.Reaped(5, 0)}) == 1
