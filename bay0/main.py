"""bay0's entry point: PID 1 of the Spine.

``main()`` blocks signals, reads its settings, checks the invariants, opens the
watchdog, prints ``bay0: READY slot=A|B`` and runs the main loop forever. Settings
come from ``--slot=A|B`` (the initramfs passes it) and the kernel command line:

- ``spine.slot=A|B`` — the booted slot, when bay0 is started without ``--slot``.
- ``spine.good_after=SECONDS`` — stable uptime before the slot is marked good
  (default 120; the inventory may lower it too).
- ``spine.watchdog=SECONDS`` — the watchdog timeout to ask the driver for (default 30).

Test hooks are only ever kernel parameters named ``spine.test.*`` (see
docs/implementation/bay0.md):

- ``spine.test.wedge=1`` — after READY, bay0 stops pinging the watchdog and hangs,
  so the watchdog must reset the machine.

Only what the first seconds need is imported at the top (Python under TCG is slow);
the inventory, signature and sandbox code load when first used.
"""

from __future__ import annotations

import _signal as signal  # the signal module minus its enum wrappers (see bay0.pid1)
import os
import sys
import time

from bay0 import invariants, pid1
from bay0.frozen import Frozen
from bay0.log import Log, rss_kib
from bay0.watchdog import Watchdog, WatchdogError, find_device

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and dataclasses stay off the boot path (see bay0.frozen)
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

SLOTS = ("A", "B")
DEFAULT_GOOD_AFTER = 120.0
DEFAULT_WATCHDOG = 30


def parse_cmdline(text: str) -> dict[str, str]:
    """Split a kernel command line into ``{key: value}`` (a bare word maps to "").

    Double quotes group words as the kernel does (``a="x y"`` → ``{"a": "x y"}``);
    a later duplicate wins.
    """
    out: dict[str, str] = {}
    word, quoted, words = [], False, []
    for char in text.strip() + " ":
        if char == '"':
            quoted = not quoted
        elif char.isspace() and not quoted:
            if word:
                words.append("".join(word))
            word = []
        else:
            word.append(char)
    for item in words:
        key, _, value = item.partition("=")
        out[key] = value
    return out


class Config(Frozen):
    """Everything bay0 takes from its argv and the kernel command line."""

    __slots__ = ("slot", "good_after", "watchdog_timeout", "test", "problems")

    def __init__(self, slot: str | None, good_after: float = DEFAULT_GOOD_AFTER,
                 watchdog_timeout: int = DEFAULT_WATCHDOG, test: Mapping[str, str] | None = None,
                 problems: tuple[str, ...] = ()) -> None:
        # problems: settings that were ignored, to be logged
        self._set(slot=slot, good_after=good_after, watchdog_timeout=watchdog_timeout,
                  test={} if test is None else test, problems=problems)

    def hook(self, name: str) -> bool:
        """Whether test hook ``spine.test.<name>`` is switched on (value not 0/empty)."""
        return self.test.get(name, "0") not in ("", "0")


def parse_config(argv: Sequence[str], cmdline: Mapping[str, str]) -> Config:
    """Build the config; a bad value or an unknown argument is recorded in ``problems``
    (logged at boot) and the default kept: PID 1 does not stop over a boot-chain typo."""
    problems: list[str] = []
    slot = cmdline.get("spine.slot")
    for arg in argv:
        if arg.startswith("--slot="):
            slot = arg.partition("=")[2]
        else:
            problems.append(f"unknown argument {arg!r} (bay0 takes only --slot=A|B)")
    if slot is not None and slot not in SLOTS:
        problems.append(f"slot {slot!r} is not A or B")
        slot = None
    good_after = _number(cmdline, "spine.good_after", DEFAULT_GOOD_AFTER, 0, 86400, problems)
    watchdog = int(_number(cmdline, "spine.watchdog", DEFAULT_WATCHDOG, 2, 3600, problems))
    test = {k[len("spine.test."):]: v for k, v in cmdline.items() if k.startswith("spine.test.")}
    return Config(slot, good_after, watchdog, test, tuple(problems))


def _number(cmdline: Mapping[str, str], key: str, default: float, low: float, high: float,
            problems: list[str]) -> float:
    if key not in cmdline:
        return default
    try:
        value = float(cmdline[key])
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also false for nan
        problems.append(f"{key}={cmdline[key]!r} is not a number in {low:g}..{high:g}")
        return default
    return value


def read_cmdline(path: str = "/proc/cmdline") -> dict[str, str]:
    """The parsed kernel command line ({} when /proc is not there)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_cmdline(f.read())
    except OSError:
        return {}


# ---- the warden ------------------------------------------------------------------------

CHECK_INTERVAL = 10.0
JOB_SLICE = 0.25  # seconds of import work between two looks at signals and the watchdog
STORE_ROOT = "/persist/spine"
LOG_FILE = "/persist/logs/bay0.log"
REBOOT_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-Alt-Del (SIGINT)"}
POWEROFF_SIGNALS = {signal.SIGUSR1: "SIGUSR1", signal.SIGUSR2: "SIGUSR2", signal.SIGPWR: "SIGPWR"}


class Warden:
    """Everything the main loop drives: invariants, watchdog, jobs, personas, mark-good."""

    def __init__(self, config: Config, log: Log, machine: pid1.Machine,
                 watchdog: Watchdog | None, check=None) -> None:
        self.config = config
        self.log = log
        self.machine = machine
        self.watchdog = watchdog
        self.check = check or invariants.check_system
        interval = watchdog.interval if watchdog else CHECK_INTERVAL
        self.check_interval = min(interval, CHECK_INTERVAL)
        self.next_check = time.monotonic() + self.check_interval
        self.job = None  # a generator of small steps (import), run between pings
        self.supervisor = None
        self.marker = None
        self.store_root = STORE_ROOT
        self.root_device = None  # None: the device / is mounted from (bootmark.root_device)
        self.root_verified = False  # read end to end through dm-verity: mark-good waits for it

    # -- pid1.Warden protocol --

    def tick(self, now: float) -> float:
        if now >= self.next_check:
            self.verify_invariants()  # reboots on a violation: no ping after a failed check
            if self.watchdog is not None:
                self.watchdog.keepalive(now)
            self.next_check = now + self.check_interval
        deadline = self.next_check
        if self.job is not None:
            self._run_job(now)
            deadline = now  # come straight back after collecting signals
        if self.supervisor is not None:
            deadline = min(deadline, self.supervisor.tick(now))
        self._maybe_mark_good()
        return deadline

    def on_signal(self, signo: int) -> None:
        if signo in REBOOT_SIGNALS:
            self.machine.reboot(f"{REBOOT_SIGNALS[signo]} received")
        if signo in POWEROFF_SIGNALS:
            self.machine.poweroff(f"{POWEROFF_SIGNALS[signo]} received")
        if signo == signal.SIGHUP and self.job is None:
            self.log.event("inventory.rescan", reason="SIGHUP")
            self.job = self._rescan()
            return
        self.log.event("signal.ignored", signal=pid1.signal_name(signo))

    def claim_child(self, pid: int) -> bool:
        return False

    def on_reaped(self, reaped: pid1.Reaped) -> None:
        if self.supervisor is not None and self.supervisor.on_exit(reaped.pid, reaped.status,
                                                                   time.monotonic()):
            return
        self.log.event("reaped", pid=reaped.pid, status=pid1.describe_status(reaped.status))

    def on_error(self, error: BaseException) -> None:
        from bay0.supervisor import ContainmentError, PersonaFault

        self.log.event("error", error=_describe_error(error), where=_where(error))
        if isinstance(error, PersonaFault) and self.supervisor is not None \
                and error.name in self.supervisor.units:
            self.supervisor.purge(error.name, f"error: {_describe_error(error)}")
            return
        if isinstance(error, ContainmentError):
            self.machine.reboot(f"containment failure: {error.message}")
        self.machine.reboot(f"unexpected {type(error).__name__} in the main loop")

    def shutdown(self) -> None:
        """Before a reboot: stop the personas, detach their images."""
        if self.supervisor is not None:
            self.supervisor.shutdown()

    # -- checks --

    def verify_invariants(self) -> None:
        """Reboot (after logging why) when any invariant is broken."""
        problems = self.check()
        if problems:
            for problem in problems:
                self.log.violation(problem)
            self.machine.reboot(f"invariant violated: {problems[0]}")

    # -- jobs: inventory import and persona start --

    def _run_job(self, now: float) -> None:
        budget = time.monotonic() + JOB_SLICE
        try:
            next(self.job)  # at least one step per tick
            while time.monotonic() < budget:
                next(self.job)
        except StopIteration:
            self.job = None

    def after_ready(self):
        """The job READY hands over to: start up, then read the root end to end."""
        yield from self.startup()
        yield from self.verify_root()

    def verify_root(self):
        """Read the root device end to end, a chunk per step, before the slot may be marked
        good. dm-verity hashes every block read: corruption restarts the machine (the
        mapping has --restart-on-corruption) or fails the read, and a failed read reboots
        (the next boot spends the slot's next try). When the device cannot be found the
        slot is simply not confirmed: its tries run out and the initramfs reads it end to
        end on its last one.
        """
        import errno

        from bay0 import bootmark

        started = time.monotonic()
        try:
            device = self.root_device or bootmark.root_device()
        except OSError as e:
            self.log.event("root.unverified", error=str(e), note="the slot will not be marked good")
            return
        try:
            size = yield from bootmark.read_through(device)
        except OSError as e:
            if e.errno != errno.EIO:  # not what a bad block gives: cannot prove, do not mark
                self.log.event("root.unverified", device=device, error=e.strerror or str(e),
                               note="the slot will not be marked good")
                return
            self.log.event("root.read_failed", device=device, error=e.strerror)
            self.machine.reboot(f"the root device {device} failed a read ({e.strerror})")
            return
        self.root_verified = True
        self.log.event("root.verified", device=device, bytes=size,
                       seconds=f"{time.monotonic() - started:.1f}")

    def startup(self):
        """Import a staged inventory, load the current one, start its personas."""
        from bay0 import inventory_store as inv_store

        store = inv_store.Store(self.store_root)
        yield from self._import(store)
        try:
            loaded = store.load()
        except Exception as e:  # noqa: BLE001 - any reason means: run nothing, say why, stay up
            message, hint = inv_store.summarize(e)
            self.log.event("inventory.none", reason=message, hint=hint, personas=0)
            self.log.event("startup.done", uptime=_uptime(), rss_kib=rss_kib())
            return
        self.log.event("inventory.loaded", version=loaded.inventory.version, key=loaded.key_id,
                       personas=len(loaded.inventory.personas))
        self._start_personas(loaded)
        self.log.event("startup.done", uptime=_uptime(), rss_kib=rss_kib())

    def _import(self, store):
        from bay0 import inventory_store as inv_store

        try:
            device = inv_store.find_partition()
            if device is None:
                self.log.event("stage.absent", partition=inv_store.STAGE_PARTNAME)
                return False
            inv_store.mount_stage(device)
        except Exception as e:  # noqa: BLE001 - a broken stage never stops the boot
            self.log.event("stage.failed", error=inv_store.summarize(e)[0])
            return False
        try:
            result = yield from store.import_steps(inv_store.STAGE)
            self.log.event("stage.import", imported=str(result.imported).lower(),
                           version=result.version, reason=result.reason)
            return result.imported
        except Exception as e:  # noqa: BLE001 - refused: /persist is untouched
            message, hint = inv_store.summarize(e)
            self.log.event("stage.refused", error=message, hint=hint, kind=type(e).__name__)
            return False
        finally:
            inv_store.unmount_stage()

    def _rescan(self):
        from bay0 import inventory_store as inv_store

        imported = yield from self._import(inv_store.Store(self.store_root))
        if imported:  # replace, don't repair: the new inventory starts from a clean boot
            self.machine.reboot("a new inventory was imported")

    def _start_personas(self, loaded) -> None:
        import gc

        from bay0.supervisor import Supervisor

        good_after = loaded.inventory.extra.get("good_after")
        if self.marker is not None and isinstance(good_after, int) and not isinstance(good_after, bool):
            self.marker.lower(good_after)
        if not loaded.inventory.personas:
            return
        supervisor = Supervisor(self.log, loaded)
        supervisor.prepare_cgroups()  # ContainmentError: reboot
        gc.freeze()  # keep the heap shared copy-on-write with every persona's PID 1
        supervisor.start(time.monotonic())
        self.supervisor = supervisor

    def _maybe_mark_good(self) -> None:
        if self.marker is None or self.job is not None or not self.root_verified:
            return
        healthy = self.supervisor.healthy() if self.supervisor is not None else True
        if not self.marker.due(healthy):
            return
        from bay0 import bootmark
        from bay0.inventory_store import find_partition, summarize

        self.marker.done = True
        try:
            device = find_partition(bootmark.STATE_PARTNAME)
            if device is None:
                raise FileNotFoundError(f"no {bootmark.STATE_PARTNAME} partition")
            result = bootmark.mark_slot_good(device, self.config.slot)
        except Exception as e:  # noqa: BLE001 - the slot stays on trial; say why
            self.log.event("slot.mark_failed", slot=self.config.slot, error=summarize(e)[0])
            return
        self.log.event("slot.good", slot=self.config.slot, seq=result.seq, result=result.reason,
                       uptime=f"{self.marker.clock():.0f}")


def _uptime() -> str:
    return f"{time.clock_gettime(time.CLOCK_BOOTTIME):.2f}"


def _describe_error(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _where(error: BaseException) -> str | None:
    tb = error.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"


# ---- boot ------------------------------------------------------------------------------


# What bay0 needs mounted besides the initramfs's hand-over (all nodev,nosuid,noexec).
OWN_MOUNTS = (("/tmp", "tmpfs", "mode=1777,size=64m"), ("/sys/fs/cgroup", "cgroup2", None))


def _mount_own(log: Log) -> None:
    """Mount what bay0 itself needs (/tmp, cgroup2) unless the initramfs already did.

    The initramfs does (initramfs/init), so the mount code and ctypes stay unloaded
    before READY; this covers any other way of starting bay0.
    """
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            present = {e.mount_point for e in invariants.parse_mountinfo(f.read())}
    except (OSError, ValueError):
        present = set()
    wanted = [(target, fstype, data) for target, fstype, data in OWN_MOUNTS
              if target not in present and os.path.isdir(target)]
    if not wanted:
        return
    from bay0.sys import mount as m

    flags = m.MS_NODEV | m.MS_NOSUID | m.MS_NOEXEC
    for target, fstype, data in wanted:
        try:
            m.mount(fstype, target, fstype, flags, data)
        except OSError as e:
            log.event("mount.failed", target=target, error=e.strerror)


# Kernel settings seccomp cannot enforce. Absent keys are older kernels (memfd_noexec
# came in 6.3, io_uring_disabled in 6.6); seccomp covers those calls there.
HARDENING = (
    ("vm/memfd_noexec", "2"),
    ("kernel/io_uring_disabled", "2"),
    ("user/max_user_namespaces", "0"),
    ("fs/protected_hardlinks", "1"),
    ("fs/protected_symlinks", "1"),
    ("fs/protected_fifos", "2"),
    ("fs/protected_regular", "2"),
    ("fs/suid_dumpable", "0"),
    ("kernel/kptr_restrict", "2"),
    ("kernel/dmesg_restrict", "1"),
    ("kernel/unprivileged_bpf_disabled", "1"),
    ("kernel/perf_event_paranoid", "3"),
    ("kernel/sysrq", "0"),
)


def harden_kernel(log: Log, root: str = "/proc/sys") -> dict[str, str]:
    """Apply ``HARDENING``; returns what each key ended as (``absent`` or an error)."""
    outcome = {}
    for key, value in HARDENING:
        path = os.path.join(root, key)
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write(value)
            outcome[key] = value
        except FileNotFoundError:
            outcome[key] = "absent"
        except OSError as e:
            outcome[key] = f"error:{e.strerror}"
            log.event("sysctl.failed", key=key.replace("/", "."), error=e.strerror)
    log.event("sysctl.hardened", set=sum(v == dict(HARDENING)[k] for k, v in outcome.items()),
              absent=",".join(k.replace("/", ".") for k, v in outcome.items() if v == "absent") or "-")
    return outcome


def open_watchdog(config: Config, log: Log) -> Watchdog | None:
    """Open the first watchdog device; None (logged) when there is none or it fails."""
    path = find_device()
    if path is None:
        log.event("watchdog.absent", hint="load the watchdog driver (i6300esb in QEMU)")
        return None
    try:
        dog = Watchdog.open(path, config.watchdog_timeout)
    except WatchdogError as e:
        log.event("watchdog.failed", error=e.message)
        return None
    log.event("watchdog.open", device=path, identity=dog.support.identity if dog.support else None,
              timeout=dog.timeout, asked=config.watchdog_timeout,
              last_reset=("watchdog" if dog.last_reset_by_watchdog else "other"),
              boot_status=hex(dog.boot_status))
    return dog


def boot(argv: Sequence[str], log: Log, machine: pid1.Machine) -> Warden:
    """From the first instruction to READY: returns the warden for the main loop."""
    config = parse_config(argv, read_cmdline())
    log.event("start", slot=config.slot or "unknown", pid=os.getpid(), python=sys.version.split()[0],
              uptime=_uptime())
    for problem in config.problems:
        log.event("config.ignored", problem=problem)
    if os.getpid() == 1:
        try:
            pid1.disable_cad()
        except OSError as e:
            log.event("cad.failed", error=e.strerror)
        harden_kernel(log)
    _mount_own(log)
    warden = Warden(config, log, machine, None)
    warden.verify_invariants()
    warden.watchdog = open_watchdog(config, log)
    if warden.watchdog is not None:
        warden.check_interval = min(warden.watchdog.interval, CHECK_INTERVAL)
    log.ready(config.slot or "unknown")
    pid1.libc()  # load ctypes now, so a reboot never has to import anything
    if config.hook("wedge"):
        log.event("test.wedge", note="not pinging the watchdog any more")
        pid1.hang_forever()
    if os.path.ismount(os.path.dirname(os.path.dirname(LOG_FILE))):  # only ever on /persist
        log.attach_file(LOG_FILE)
    from bay0.bootmark import BootMarker

    warden.marker = BootMarker(config.slot, config.good_after)
    warden.job = warden.after_ready()
    return warden


def _not_pid1(cmd: int) -> None:
    """Outside PID 1 (a developer running bay0 by hand) nothing may reboot the host."""
    raise OSError(1, "not PID 1: refusing to reboot this machine")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run bay0 as PID 1. Never returns: every way out is a deliberate reboot or power off."""
    signals = pid1.block_signals()
    log = Log.for_pid1()
    machine = pid1.Machine(log, syscall=pid1.reboot_syscall if os.getpid() == 1 else _not_pid1)
    try:
        warden = boot(sys.argv[1:] if argv is None else argv, log, machine)
        machine.before = getattr(warden, "shutdown", None)
        pid1.Loop(warden, signals, fatal=lambda e: machine.reboot(f"fatal: {_describe_error(e)}")).run()
    except BaseException as e:  # noqa: BLE001 - PID 1 never exits
        log.event("fatal", error=_describe_error(e), where=_where(e))
        machine.reboot(f"fatal: {_describe_error(e)}")


if __name__ == "__main__":
    main()
