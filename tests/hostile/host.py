"""The host half of the suite: every escape probe through the real launcher, two personas
side by side for lateral movement, symlink planting across a purge, exhaustion.

Each scenario returns {case name: Observation}; a case it was meant to observe but
did not (the persona died early, a line is missing) is reported as ``missing`` with
the console as evidence, so it fails rather than vanishing.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

from bay0.sys import SandboxError
from tests.hostile.world import PROBE, Observation, World, probe_lines, rw_bind, wait_for_line

VICTIM_SHM_KEY = 0x484F5354  # same keys as hostile_probe.c
VICTIM_MSG_KEY = 0x484F5355
VICTIM_SOCKET = b"\0hostile-victim"
IPC_CREAT, IPC_RMID = 0o1000, 0
SECRET = {"HOSTILE_SECRET": "victim-environment"}

Scenario = Callable[[World], dict[str, Observation]]


def escapes(world: World) -> dict[str, Observation]:
    """The escape battery, in the most permissive profile (network-service) with a rw bind."""
    console = world.run(PROBE, "escape", seccomp="network-service", binds=(rw_bind(),))
    found = probe_lines(console, "escape/")
    if not world.fcaps:  # without capabilities on the copy the probe proves nothing
        found["escape/fcaps-binary"] = Observation(
            "missing", "setcap (libcap2-bin) is not installed: the copy carries no capabilities", console)
    if "PROBES DONE" not in console:
        found["escape/battery-complete"] = Observation("missing", "the probe did not finish", console)
    return found


class _HostEndpoints:
    """bay0's stand-in on the host: an abstract socket, a loopback port, SysV IPC keys."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(VICTIM_SOCKET)
        self.unix.listen(4)
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(4)
        self.port = self.tcp.getsockname()[1]
        self.shm = self.libc.shmget(VICTIM_SHM_KEY, 4096, IPC_CREAT | 0o666)
        self.msg = self.libc.msgget(VICTIM_MSG_KEY, IPC_CREAT | 0o666)

    def close(self) -> None:
        self.unix.close()
        self.tcp.close()
        if self.shm >= 0:
            self.libc.shmctl(self.shm, IPC_RMID, None)
        if self.msg >= 0:
            self.libc.msgctl(self.msg, IPC_RMID, None)


def lateral(world: World) -> dict[str, Observation]:
    """A victim persona and bay0's endpoints; an attacker persona goes after both."""
    found: dict[str, Observation] = {}
    host = _HostEndpoints()
    victim, victim_out = world.start(PROBE, "victim", str(host.port), seccomp="network-service",
                                     env={**SECRET, "PATH": "/bin"}, binds=(rw_bind("victim", "/srv"),))
    try:
        ready = wait_for_line(victim_out, "VICTIM READY")
        evidence = victim_out.read_text(errors="replace")
        all_up = ready is not None and all(f.endswith("=1") for f in ready.split()[2:])
        found["lateral/victim-ready"] = Observation("ok" if all_up else "broken", ready or "no READY line", evidence)
        target = next((p for p in victim.cgroup.pids() if p != victim.pid), victim.pid)
        mounts = Path("/proc/self/mountinfo").read_text()
        leaked = [line for line in mounts.splitlines() if str(world.root) in line]
        found["mounts/no-leak-to-host"] = Observation(
            "exposed" if leaked else "contained", f"{len(leaked)} host mounts under the persona root",
            "\n".join(leaked))
        for prefix, pid in (("lateral", target), ("bay0", os.getpid())):
            console = world.run(PROBE, "attack", str(pid), str(host.port), prefix, seccomp="network-service")
            found.update(probe_lines(console, ""))
            found.setdefault(f"{prefix}/kill", Observation("missing", "no line", console))
        console = world.run(PROBE, "killall", seccomp="network-service")
        alive = victim.running() and target in victim.cgroup.pids()
        found["lateral/kill-all"] = Observation("contained" if alive else "exposed",
                                                f"victim alive={alive} after kill(-1)", console)
        alive = victim.running() and target in victim.cgroup.pids()
        found["lateral/victim-survives"] = Observation(
            "contained" if alive else "exposed", f"victim pid {target} alive={alive}",
            victim_out.read_text(errors="replace"))
    finally:
        victim.close()
        host.close()
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


def symlinks(world: World) -> dict[str, Observation]:
    """Plant links in a rw bind, purge the persona, relaunch: nothing of the host is reached."""
    found: dict[str, Observation] = {}
    before = _sha256(Path("/etc/shadow"))
    console = world.run(PROBE, "plant", "/srv", binds=(rw_bind(),))  # run() ends with close(): the purge
    found["symlink/plant"] = probe_lines(console).get("plant") or Observation("missing", "no line", console)
    try:
        console = world.run("/bin/ls", "-la", "/mnt", binds=(rw_bind("rw/inner", "/mnt"),))
        found["symlink/relaunch-bind"] = Observation("ok", "the persona started with a bind through the link", console)
    except SandboxError as e:
        found["symlink/relaunch-bind"] = Observation(
            "denied", f"{errno.errorcode.get(e.errno, e.errno)} step={e.step}", f"{e.message} ({e.hint})")
    console = world.run(PROBE, "follow", "/srv", binds=(rw_bind(),))
    found.update(probe_lines(console, "symlink/"))
    after = _sha256(Path("/etc/shadow"))
    markers = [p for p in (Path("/etc/hostile-marker"), Path("/hostile-marker")) if p.exists()]
    found["symlink/host-untouched"] = Observation(
        "contained" if before == after and not markers else "exposed",
        f"/etc/shadow {'unchanged' if before == after else 'CHANGED'}; markers on host: {markers or 'none'}",
        console)
    return found


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def event(self, event: str, **fields) -> None:
        self.lines.append(" ".join([event, *(f"{k}={v}" for k, v in fields.items())]))


def purge_wipe(world: World) -> dict[str, Observation]:
    """bay0's real purge (Supervisor.purge) after a persona swapped a parent of its scratch
    source for a link to bay0's own state: the wipe must stay inside the scratch source.

    Persona ``mallory`` declares ``shared`` (rw, also declared by ``friend``, so it is
    not scratch) and ``shared/b/inventory`` (rw, its scratch). Through /x it replaces
    the directory ``shared/b`` with a link to /persist; bay0 then purges mallory.
    """
    from types import SimpleNamespace

    from bay0.formats.inventory import Mount
    from bay0.supervisor import Supervisor

    persist = world.persist
    state = persist / "inventory"  # stands for bay0's own store under /persist
    state.mkdir(exist_ok=True)
    (state / "current").write_text("bay0's inventory\n")
    (persist / "shared/b/inventory").mkdir(parents=True, exist_ok=True)
    for d in ("shared", "shared/b", "shared/b/inventory"):
        os.chown(persist / d, 1000, 1000)
    mallory = SimpleNamespace(name="mallory", mounts=(Mount("shared", "/x", rw=True),
                                                      Mount("shared/b/inventory", "/y", rw=True)))
    friend = SimpleNamespace(name="friend", mounts=(Mount("shared", "/x", rw=True),))
    console = world.run("/bin/sh", "-c", f"rm -rf /mnt/b && ln -s {persist} /mnt/b && ls -l /mnt",
                        binds=(rw_bind("shared", "/mnt"),))
    log = _Log()
    loaded = SimpleNamespace(inventory=SimpleNamespace(personas=[mallory, friend]))
    Supervisor(log, loaded, persist=str(persist), state_dir=str(persist / "bay0")).purge("mallory", "test")
    survived = (state / "current").exists()
    return {"symlink/purge-wipe": Observation(
        "contained" if survived else "exposed",
        f"bay0's {state.name}/current {'intact' if survived else 'DELETED by the purge'}",
        console + "\n".join(log.lines))}


def persistence(world: World) -> dict[str, Observation]:
    """A marker in the rw bind survives a relaunch; nothing else was written anywhere."""
    found: dict[str, Observation] = {}
    console = world.run(PROBE, "persist", "/srv", binds=(rw_bind(),))
    marker = probe_lines(console).get("persist-marker")
    found["persist/marker"] = marker or Observation("missing", "no persist-marker line", console)
    again = world.run("/bin/cat", "/srv/persisted-marker", binds=(rw_bind(),))
    strays = [str(p) for p in world.root.rglob("hostile-marker")]
    ok = "survives" in again and not strays
    found["persist/nothing-else"] = Observation(
        "contained" if ok else "exposed", f"marker after relaunch: {'survives' in again}; strays: {strays or 'none'}",
        console + again)
    return found


def exhaustion(world: World) -> dict[str, Observation]:
    """fd flood and fork bomb against the rlimits; then the launcher must still work."""
    found: dict[str, Observation] = {}
    console = world.run(PROBE, "fd-flood")
    found["exhaust/fd-flood"] = probe_lines(console).get("fd-flood") or Observation("missing", "no line", console)
    console = world.run(PROBE, "fork-bomb", nproc=256, timeout=60)
    bomb = probe_lines(console).get("fork-bomb")
    found["exhaust/fork-bomb-rlimit"] = bomb or Observation("missing", "no line", console)
    console = world.run("/bin/echo", "alive")
    found["exhaust/launcher-healthy"] = Observation("ok" if console.startswith("alive") else "broken",
                                                    console.splitlines()[0] if console else "-", console)
    return found


SCENARIOS: tuple[Scenario, ...] = (escapes, lateral, symlinks, purge_wipe, persistence, exhaustion)


def _wait_single_threaded(timeout: float = 10.0) -> None:
    """The launcher refuses a threaded caller; QEMU runs earlier in a session leave
    short-lived helper threads (QMP reader, kill timers): let them end first."""
    import threading
    import time

    deadline = time.monotonic() + timeout
    while threading.active_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.1)


def run_all(world: World) -> dict[str, Observation]:
    """Every host scenario; one that raises is recorded against its cases, not fatal."""
    _wait_single_threaded()
    found: dict[str, Observation] = {}
    for scenario in SCENARIOS:
        try:
            found.update(scenario(world))
        except Exception as e:  # noqa: BLE001 - the report must show it, not die
            found[f"error/{scenario.__name__}"] = Observation("error", f"{type(e).__name__}: {e}", repr(e))
    return found
