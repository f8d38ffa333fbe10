"""The one QEMU runner: `spinectl vm` and the end-to-end tests both boot through here.

Direct kernel boot (``-kernel/-initrd/-append``) for speed, or OVMF firmware booting
the disk's ESP. A virtio disk, the i6300esb watchdog (reset on expiry), the serial
console on stdout (copied to a file and kept in the result), a wall-clock timeout.

How the VM ended comes from QMP events, not from guessing at console text: QEMU runs
with ``-no-reboot`` by default, so a guest reboot ends the process with a SHUTDOWN
event whose reason is ``guest-reset``; a power off gives ``guest-shutdown``; a
watchdog expiry is a WATCHDOG event followed by a reset.

This module starts QEMU with ``subprocess.Popen`` rather than ``pipeline.run.run``:
the console must stream while the guest runs and the VM must be stoppable on a
pattern, which a run-to-completion helper cannot do. It keeps run()'s rules: argv
list, minimal environment, stdin closed unless interactive, the command echoed with
``SPINE_DEBUG=1``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bay0.errors import NotFoundError, ToolError, UsageError
from pipeline.run import BASE_ENV, debug_enabled, which

OVMF_CODE_CANDIDATES = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS_CANDIDATES = ("/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd")
DEFAULT_APPEND = "console=ttyS0 quiet loglevel=3 panic=-1"

# Outcomes (VmResult.outcome)
POWEROFF, REBOOT, WATCHDOG, TIMEOUT, MATCHED, EXITED = (
    "poweroff", "reboot", "watchdog", "timeout", "matched", "exited")


@dataclass
class VmConfig:
    """What to boot and how. Either ``kernel`` (+``initrd``) or ``ovmf`` must be set."""

    disk: Path | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = DEFAULT_APPEND
    ovmf: bool = False
    memory_mib: int = 512
    cpus: int = 2  # the initramfs unlocks persist beside opening the root: two chains
    timeout: float = 120.0
    no_reboot: bool = True
    watchdog: bool = True
    snapshot: bool = False
    console_log: Path | None = None
    echo: bool = False  # copy the console to our stdout as it arrives
    interactive: bool = False  # operator at a terminal: stdin goes to the serial console
    extra_args: list[str] = field(default_factory=list)


@dataclass
class VmResult:
    outcome: str  # poweroff | reboot | watchdog | timeout | matched | exited
    console: str
    wall_seconds: float
    returncode: int | None
    events: list[dict] = field(default_factory=list)
    matched_at: float | None = None  # seconds from start to the stop pattern

    def lines(self, prefix: str = "") -> list[str]:
        return [line.rstrip("\r") for line in self.console.splitlines() if line.startswith(prefix)]


def _first_existing(paths: Sequence[str], what: str) -> Path:
    for p in paths:
        if Path(p).is_file():
            return Path(p)
    raise NotFoundError(f"no {what} firmware found ({paths[0]})", "install it: apt-get install ovmf")


def argv_for(cfg: VmConfig, workdir: Path, qmp_path: Path | None) -> list[str]:
    """The QEMU command line for ``cfg``. Raises ``UsageError``/``NotFoundError``."""
    if not cfg.ovmf and cfg.kernel is None:
        raise UsageError("nothing to boot: give a kernel (direct boot) or use OVMF", "pass --kernel or --ovmf")
    argv = [which("qemu-system-x86_64"), "-machine", "q35", "-accel", "tcg", "-cpu", "max",
            "-m", str(cfg.memory_mib), "-smp", str(cfg.cpus), "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", "mon:stdio" if cfg.interactive else "stdio",
            "-nic", "none"]
    if cfg.no_reboot:
        argv.append("-no-reboot")
    if cfg.watchdog:
        argv += ["-device", "i6300esb", "-action", "watchdog=reset"]
    if cfg.disk is not None:
        if not Path(cfg.disk).exists():
            raise NotFoundError(f"{cfg.disk} does not exist", "give a disk image or block device")
        drive = f"file={cfg.disk},format=raw,if=virtio,cache=writeback"
        argv += ["-drive", drive + (",snapshot=on" if cfg.snapshot else "")]
    if cfg.ovmf:
        code = _first_existing(OVMF_CODE_CANDIDATES, "OVMF code")
        varsfile = workdir / "OVMF_VARS.fd"  # a fresh copy: no boot entries, no menu
        shutil.copyfile(_first_existing(OVMF_VARS_CANDIDATES, "OVMF vars"), varsfile)
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={varsfile}"]
    if cfg.kernel is not None:
        argv += ["-kernel", str(cfg.kernel), "-append", cfg.append]
        if cfg.initrd is not None:
            argv += ["-initrd", str(cfg.initrd)]
    if qmp_path is not None:
        argv += ["-qmp", f"unix:{qmp_path},server=on,wait=off"]
    return argv + list(cfg.extra_args)


class _Qmp(threading.Thread):
    """Collects QMP events (SHUTDOWN, WATCHDOG, RESET) from QEMU's socket."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.events = path, []
        self.sock: socket.socket | None = None

    def run(self) -> None:
        for _ in range(200):  # QEMU creates the socket a moment after it starts
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(self.path))
                break
            except OSError:
                time.sleep(0.05)
        else:
            return
        stream = self.sock.makefile("rwb")
        try:
            stream.readline()  # greeting
            stream.write(b'{"execute": "qmp_capabilities"}\n')
            stream.flush()
            for line in stream:
                message = json.loads(line)
                if "event" in message:
                    self.events.append(message)
        except (OSError, ValueError):
            return

    def quit(self) -> None:
        try:
            if self.sock is not None:
                self.sock.sendall(b'{"execute": "quit"}\n')
        except OSError:
            pass


def boot(
    cfg: VmConfig,
    *,
    stop_when: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> VmResult:
    """Boot ``cfg`` until the guest powers off, resets, matches ``stop_when`` (a regex on
    a console line: QEMU is then told to quit) or ``cfg.timeout`` runs out (QEMU is killed).

    Raises ``ToolError`` when QEMU cannot start or fails before the guest ran,
    ``NotFoundError``/``UsageError`` for bad configuration.
    """
    pattern = re.compile(stop_when) if stop_when else None
    with tempfile.TemporaryDirectory(prefix="spine-vm-") as tmp:
        work = Path(tmp)
        qmp = _Qmp(work / "qmp.sock")
        argv = argv_for(cfg, work, qmp.path)
        if debug_enabled():
            print("+ " + shlex.join(argv), file=sys.stderr)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=None if cfg.interactive else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(BASE_ENV))
        except OSError as e:
            raise ToolError(f"qemu-system-x86_64 could not start: {e.strerror}", shlex.join(argv)) from e
        qmp.start()
        state = _Watch(proc, qmp, pattern, start, cfg, on_line)
        timer = threading.Timer(cfg.timeout, state.expire)
        timer.daemon = True
        timer.start()
        try:
            state.pump()
            proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        wall = time.monotonic() - start
        qmp.join(timeout=2)
    console = "".join(state.chunks)
    outcome = _outcome(state, qmp.events, proc.returncode)
    if outcome == EXITED and proc.returncode not in (0, None) and not console:
        last = stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise ToolError(f"qemu-system-x86_64 failed: {last[0]}", "run with --debug to see the command")
    return VmResult(outcome, console, wall, proc.returncode, qmp.events, state.matched_at)


class _Watch:
    """Streams the console, stops on the pattern, kills on timeout."""

    def __init__(self, proc, qmp, pattern, start, cfg, on_line) -> None:
        self.proc, self.qmp, self.pattern, self.start, self.cfg = proc, qmp, pattern, start, cfg
        self.on_line = on_line
        self.chunks: list[str] = []
        self.timed_out = False
        self.matched_at: float | None = None
        self.log = open(cfg.console_log, "w") if cfg.console_log else None  # noqa: SIM115

    def expire(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def pump(self) -> None:
        """Copy the console as it arrives (chunks, so partial lines show at once)."""
        fd = self.proc.stdout.fileno()
        pending = ""
        try:
            while chunk := os.read(fd, 65536):
                text = chunk.decode(errors="replace")
                if self.log:
                    self.log.write(text)
                    self.log.flush()
                if self.cfg.echo:
                    sys.stdout.write(text)
                    sys.stdout.flush()
                pending += text
                *complete, pending = pending.split("\n")
                for line in complete:
                    self._line(line + "\n")
            if pending:
                self._line(pending)
        finally:
            if self.log:
                self.log.close()

    def _line(self, line: str) -> None:
        self.chunks.append(line)
        if self.on_line:
            self.on_line(line.rstrip("\r\n"))
        if self.pattern and self.matched_at is None and self.pattern.search(line):
            self.matched_at = time.monotonic() - self.start
            self.qmp.quit()
            killer = threading.Timer(5, lambda: self.proc.poll() is None and self.proc.kill())
            killer.daemon = True
            killer.start()


def _outcome(state: _Watch, events: list[dict], returncode: int | None) -> str:
    if state.matched_at is not None:
        return MATCHED
    if state.timed_out:
        return TIMEOUT
    names = [e.get("event") for e in events]
    reasons = [e.get("data", {}).get("reason") for e in events if e.get("event") == "SHUTDOWN"]
    if "WATCHDOG" in names:
        return WATCHDOG
    if "guest-shutdown" in reasons:
        return POWEROFF
    if "guest-reset" in reasons:
        return REBOOT
    console = "".join(state.chunks[-50:])  # QMP missed the end: fall back to the kernel's words
    if "reboot: Power down" in console:
        return POWEROFF
    if "reboot: Restarting system" in console:
        return REBOOT
    return EXITED


def disk_is_block_device(path: str | os.PathLike[str]) -> bool:
    import stat

    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False
