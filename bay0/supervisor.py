"""Personas under supervision: attach, launch, watch, restart with backoff, purge.

Per persona, in order: (1) if the inventory's purge generation is above the one bay0
last applied (``/persist/bay0/purged/<name>``), purge first; (2) attach the image:
open it, compare size and verity header with the inventory at O(1) cost, bind it to a
read-only loop device (``LOOP_CONFIGURE``, or ``LOOP_SET_FD`` + ``LOOP_SET_STATUS64``
on older kernels), map it with ``veritysetup open --no-superblock`` using the
inventory's root hash, salt and offsets (dm-verity then checks every block lazily,
as it is read), mount the squashfs read-only at ``/run/bay0/pods/<name>``; (3) launch
it through ``bay0.persona`` under ``/sys/fs/cgroup/personas``.

While it runs, ``memory.events`` (oom, oom_kill) and ``pids.events`` (max) are read
every tick and each increase is logged; its PID 1 must stay in its own cgroup. When it
exits, ``decide`` (pure) picks: stop, restart after an exponential backoff, or purge
after ``max_restarts`` failures in a row. Purge = cgroup.kill, unmount, detach verity
and loop, wipe scratch (the persona's read-write bind sources, unless another persona
declares the same source), and never start it again until a new inventory or boot.

A cgroup that cannot be made or a process outside its cgroup is a containment failure:
``ContainmentError`` propagates and bay0 reboots.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from bay0.errors import SpineError

POD_DIR = "/run/bay0/pods"
CGROUP_ROOT = "/sys/fs/cgroup"
PERSONAS_CGROUP = "personas"
STATE_DIR = "/persist/bay0"
STABLE_RUN = 60.0  # a run this long resets the failure count
BACKOFF_CAP = 300.0
CONTROLLERS = {"cpu", "memory", "pids"}
OUTPUT_LINES_PER_TICK = 50
OUTPUT_LINE_MAX = 400  # longer lines are logged in pieces of this size
OUTPUT_BUFFER = 64 * 1024  # read ahead at most this much; beyond it the persona waits
CPU_LOG_INTERVAL = 10.0


class ContainmentError(SpineError):
    """A persona cannot be contained (cgroup missing, process escaped): bay0 reboots."""


class PersonaFault(SpineError):
    """Something went wrong with one persona only: bay0 purges that persona."""

    def __init__(self, name: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.name = name


# ---- the policy (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to do after an exit: ``stop``, ``restart`` after ``delay``, or ``purge``."""

    action: str
    delay: float
    failures: int
    reason: str


def backoff_delay(base: float, failures: int, cap: float = BACKOFF_CAP) -> float:
    """``base * 2**(failures-1)`` seconds, at most ``cap`` (0 stays 0)."""
    if base <= 0 or failures <= 0:
        return float(max(base, 0))
    return float(min(cap, base * 2 ** min(failures - 1, 32)))


def decide(policy: str, max_restarts: int, backoff: float, *, failures: int, ran_for: float,
           failed: bool, stable_run: float = STABLE_RUN) -> Decision:
    """The restart policy as a pure function of the previous failures and this exit.

    A run of at least ``stable_run`` seconds forgives earlier failures. A failure past
    ``max_restarts`` consecutive ones is a purge; ``never`` stops; ``on-failure`` stops
    after a clean exit; ``always`` restarts after ``backoff`` even after a clean exit.
    """
    if ran_for >= stable_run:
        failures = 0
    if failed:
        failures += 1
    if failed and failures > max_restarts and policy != "never":
        return Decision("purge", 0.0, failures,
                        f"failed {failures} times in a row (max_restarts {max_restarts})")
    if policy == "never" or (policy == "on-failure" and not failed):
        return Decision("stop", 0.0, failures, f"restart policy {policy}")
    delay = backoff_delay(backoff, failures) if failed else float(backoff)
    return Decision("restart", delay, failures, "failed" if failed else "exited, policy always")


def event_increases(before: dict[str, int], after: dict[str, int], keys: tuple[str, ...]) -> dict[str, int]:
    """Counters among ``keys`` that grew between two reads of an events file."""
    return {k: after[k] - before.get(k, 0) for k in keys if after.get(k, 0) > before.get(k, 0)}


def _open_beneath(root: str, relative: str) -> int:
    """A directory fd of ``relative`` under ``root``; ELOOP if any component is a symlink."""
    from bay0.sys import mount as m

    base = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return m.openat2(base, relative, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                         m.RESOLVE_BENEATH | m.RESOLVE_NO_SYMLINKS | m.RESOLVE_NO_MAGICLINKS)
    finally:
        os.close(base)


def scratch_sources(inventory: Any, persona: Any) -> list[str]:
    """The read-write bind sources of ``persona`` that no other persona declares."""
    others = {m.source for p in inventory.personas if p.name != persona.name for m in p.mounts}
    return sorted({m.source for m in persona.mounts if m.rw and m.source not in others})


# ---- images: loop + dm-verity + mount ----------------------------------------------------

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4


class loop_info64(ctypes.Structure):  # noqa: N801 - kernel name (linux/loop.h)
    _fields_ = [
        ("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64), ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * 64),
        ("lo_crypt_name", ctypes.c_uint8 * 64), ("lo_encrypt_key", ctypes.c_uint8 * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class loop_config(ctypes.Structure):  # noqa: N801 - kernel name (linux/loop.h)
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32),
                ("info", loop_info64), ("__reserved", ctypes.c_uint64 * 8)]


def loop_attach(image_fd: int, name: str, dev: str = "/dev") -> tuple[str, int]:
    """Bind the open image to a free loop device, read-only with autoclear.

    Returns (device path, open fd on it); the fd keeps the binding alive until the
    device-mapper table holds its own reference. Raises ``OSError``.
    """
    control = os.open(f"{dev}/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(8):  # another process may take the free device first (EBUSY)
            number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            path = f"{dev}/loop{number}"
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _configure(fd, image_fd, name)
                return path, fd
            except OSError as e:
                os.close(fd)
                if e.errno != 16:  # EBUSY
                    raise
        raise OSError(16, "no free loop device after 8 tries")
    finally:
        os.close(control)


def _configure(fd: int, image_fd: int, name: str) -> None:
    info = loop_info64(lo_flags=LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR)
    label = name.encode()[:63]
    ctypes.memmove(info.lo_file_name, label, len(label))
    config = loop_config(fd=image_fd, block_size=0, info=info)
    try:
        fcntl.ioctl(fd, LOOP_CONFIGURE, bytearray(bytes(config)))
        return
    except OSError as e:
        if e.errno not in (22, 25):  # EINVAL/ENOTTY: a kernel before 5.8
            raise
    fcntl.ioctl(fd, LOOP_SET_FD, image_fd)
    try:
        fcntl.ioctl(fd, LOOP_SET_STATUS64, bytearray(bytes(info)))
    except OSError:
        fcntl.ioctl(fd, LOOP_CLR_FD, 0)
        raise


def verity_argv(device: str, dm_name: str, image: Any) -> list[str]:
    """``veritysetup open`` with every parameter from the inventory (no on-disk superblock)."""
    return ["veritysetup", "open", device, dm_name, device, image.root_hash, "--no-superblock",
            "--format=1", "--hash=sha256", "--data-block-size=4096", "--hash-block-size=4096",
            f"--data-blocks={image.data_size // 4096}", f"--hash-offset={image.hash_offset + 4096}",
            f"--salt={image.salt or '-'}"]


@dataclass
class Attachment:
    """A persona image mapped and mounted: undo with ``detach``."""

    name: str
    loop: str
    dm_name: str
    mount_dir: str
    mounted: bool = False
    mapped: bool = False


def attach(name: str, image_path: str, persona: Any, *, run=None) -> Attachment:
    """Check, map and mount ``image_path`` for ``persona``; raises ``PersonaFault``
    (identity, loop, verity or mount failure) with everything undone."""
    from bay0 import pid1
    from bay0.inventory_store import check_header
    from bay0.sys import mount as m

    run = run or pid1.run_tool
    fd = os.open(image_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    att = Attachment(name, "", f"bay0-pod-{name}", os.path.join(POD_DIR, name))
    loop_fd = -1
    try:
        check_header(fd, persona)
        att.loop, loop_fd = loop_attach(fd, name)
        run(verity_argv(att.loop, att.dm_name, persona.image))
        att.mapped = True
        os.makedirs(att.mount_dir, mode=0o755, exist_ok=True)
        m.mount(f"/dev/mapper/{att.dm_name}", att.mount_dir, "squashfs",
                m.MS_RDONLY | m.MS_NODEV | m.MS_NOSUID, None)
        att.mounted = True
        return att
    except (OSError, SpineError) as e:
        detach(att, run=run)
        text = getattr(e, "message", None) or str(e)
        raise PersonaFault(name, f"persona {name}: cannot attach its image: {text}",
                           getattr(e, "hint", None) or "check the pod image and the kernel's loop/dm-verity support") from e
    finally:
        os.close(fd)
        if loop_fd >= 0:
            os.close(loop_fd)  # autoclear: the loop goes away with the verity mapping


def detach(att: Attachment, *, run=None) -> None:
    """Unmount, close the verity mapping (the loop device then clears itself)."""
    from bay0 import pid1
    from bay0.sys import mount as m

    run = run or pid1.run_tool
    if att.mounted:
        m.umount2(att.mount_dir, 0)
        att.mounted = False
    if att.mapped:
        run(["veritysetup", "close", att.dm_name])
        att.mapped = False


# ---- the supervisor ----------------------------------------------------------------------


@dataclass
class Unit:
    """One persona's supervision state."""

    persona: Any
    state: str = "pending"  # pending | running | backoff | stopped | purged | refused
    failures: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    clean: bool = True  # the last stop was a clean exit
    process: Any = None  # bay0.persona.Persona while running
    attachment: Attachment | None = None
    events: dict[str, dict[str, int]] = field(default_factory=dict)
    output: int = -1
    pending: bytearray = field(default_factory=bytearray)  # output read but not yet logged
    cpu_mark: tuple[float, int, int] | None = None  # (time, usage_usec, nr_throttled)

    @property
    def name(self) -> str:
        return self.persona.name

    @property
    def healthy(self) -> bool:
        return self.state == "running" or (self.state == "stopped" and self.clean)


class Supervisor:
    """Runs every persona of a loaded inventory; driven by the warden's main loop."""

    def __init__(self, log, loaded: Any, *, launch=None, attach_fn=attach, detach_fn=detach,
                 cgroup_root: str = CGROUP_ROOT, state_dir: str = STATE_DIR,
                 persist: str = "/persist") -> None:
        self.log = log
        self.loaded = loaded
        self.units = {p.name: Unit(p) for p in loaded.inventory.personas}
        self._launch = launch
        self.attach_fn = attach_fn
        self.detach_fn = detach_fn
        self.cgroup_root = cgroup_root
        self.cgroup_parent = os.path.join(cgroup_root, PERSONAS_CGROUP)
        self.state_dir = state_dir
        self.persist = persist

    # -- setup --

    def prepare_cgroups(self) -> None:
        """Delegate cpu, memory and pids to ``personas/``, and make one ``shell.<name>``
        cgroup per shell with its budget (its members live below it, so the budget holds
        for their sum at run time too). Raises ``ContainmentError``."""
        from pathlib import Path

        from bay0.sys.cgroup import Cgroup, CgroupError, ceiling_writes, enable_controllers

        root, parent = Path(self.cgroup_root), Path(self.cgroup_parent)
        try:
            enable_controllers(root, CONTROLLERS)
            parent.mkdir(mode=0o755, exist_ok=True)
            enable_controllers(parent, CONTROLLERS)
            for shell in self.loaded.inventory.shells:
                path = parent / f"shell.{shell.name}"  # a dot: never a persona's name
                path.mkdir(mode=0o755, exist_ok=True)
                for file, value in ceiling_writes(shell.budget):
                    if not file.startswith("memory.oom"):
                        Cgroup(path).write(file, value)
                enable_controllers(path, CONTROLLERS)
        except (CgroupError, OSError) as e:
            raise ContainmentError(f"cannot prepare the personas' cgroups: {e}",
                                   "the kernel needs cgroup v2 with cpu, memory and pids") from e

    def parent_of(self, persona: Any) -> str:
        """The cgroup a persona's own cgroup is made in (its shell's, if any)."""
        if getattr(persona, "shell", None):
            return os.path.join(self.cgroup_parent, f"shell.{persona.shell}")
        return self.cgroup_parent

    def start(self, now: float) -> None:
        for unit in self.units.values():
            unit.next_start = now

    # -- the main loop's hooks --

    def tick(self, now: float) -> float:
        """Start what is due, read events and output; returns the next deadline."""
        deadline = now + 1.0
        for unit in self.units.values():
            if unit.state in ("pending", "backoff") and now >= unit.next_start:
                self._start(unit, now)
            if unit.state == "backoff":
                deadline = min(deadline, unit.next_start)
            if unit.state == "running":
                self._watch(unit)
            self._forward_output(unit)
        return deadline

    def on_exit(self, pid: int, status: int, now: float) -> bool:
        """Route a reaped pid to its persona; False when it is nobody's."""
        unit = next((u for u in self.units.values() if u.process is not None and u.process.pid == pid), None)
        if unit is None:
            return False
        exit_status = unit.process.collect(status)
        self._watch(unit)
        self._forward_output(unit, final=True)
        self._close_process(unit)
        failed = exit_status.code != 0
        ran = now - unit.started_at
        self.log.event("persona.exit", name=unit.name, code=exit_status.code,
                       signal=exit_status.signal, ran=f"{ran:.1f}")
        restart = unit.persona.restart
        decision = decide(restart.policy, restart.max_restarts, restart.backoff,
                          failures=unit.failures, ran_for=ran, failed=failed)
        self._apply(unit, decision, now, failed)
        return True

    def _apply(self, unit: Unit, decision: Decision, now: float, failed: bool) -> None:
        unit.failures = decision.failures
        if decision.action == "purge":
            self.purge(unit.name, decision.reason)
        elif decision.action == "stop":
            unit.state, unit.clean = "stopped", not failed
            self.log.event("persona.stopped", name=unit.name, reason=decision.reason,
                           clean=str(not failed).lower())
        else:
            unit.state, unit.next_start = "backoff", now + decision.delay
            self.log.event("persona.restart", name=unit.name, delay=f"{decision.delay:g}",
                           failures=decision.failures, reason=decision.reason)

    def healthy(self) -> bool:
        return all(u.healthy for u in self.units.values())

    # -- start / watch / stop --

    def _start(self, unit: Unit, now: float) -> None:
        try:
            self._maybe_purge_generation(unit)
            if unit.state == "purged":
                return
            if unit.attachment is None:
                unit.attachment = self.attach_fn(unit.name, self.loaded.pod_path(unit.persona), unit.persona)
            self._prepare_binds(unit)
            unit.process = self._spawn(unit)
        except ContainmentError:
            raise
        except SpineError as e:
            from bay0.sys.cgroup import CgroupError

            if isinstance(e, CgroupError):
                raise ContainmentError(f"persona {unit.name}: {e.message}", e.hint) from e
            self.log.event("persona.start_failed", name=unit.name, error=e.message, hint=e.hint)
            if _is_identity(e):
                unit.state = "refused"
                self._release(unit)
                return
            restart = unit.persona.restart
            decision = decide(restart.policy, restart.max_restarts, restart.backoff,
                              failures=unit.failures, ran_for=0.0, failed=True)
            self._apply(unit, decision, now, True)
            return
        unit.state, unit.started_at = "running", now
        from bay0.log import rss_kib

        self.log.event("persona.start", name=unit.name, pid=unit.process.pid,
                       image=unit.persona.image.root_hash[:16], bay0_rss_kib=rss_kib())

    def _spawn(self, unit: Unit) -> Any:
        from bay0 import persona as sandbox

        launch = self._launch or sandbox.launch
        p = unit.persona
        spec = sandbox.spec_from_inventory(p, unit.attachment.mount_dir, persist=self.persist,
                                           cgroup_parent=self.parent_of(p))
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(read_end, False)
        try:
            process = launch(spec, stdout=write_end, stderr=write_end)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        unit.output = read_end
        return process

    def _watch(self, unit: Unit) -> None:
        """Log new OOM and pids-limit events; a PID 1 outside its cgroup is a breach."""
        group = unit.process.cgroup
        for file, keys in (("memory.events", ("oom", "oom_kill", "max")), ("pids.events", ("max",))):
            now_counts = group.events(file)
            grew = event_increases(unit.events.get(file, {}), now_counts, keys)
            unit.events[file] = now_counts
            if grew:
                self.log.event(f"persona.{file.split('.')[0]}_event", name=unit.name,
                               **{k: now_counts[k] for k in grew})
        self._watch_cpu(unit, group.events("cpu.stat"))
        if unit.process.status is None:
            self._check_contained(unit)

    def _watch_cpu(self, unit: Unit, counters: dict[str, int], now: float | None = None) -> None:
        """Every ``CPU_LOG_INTERVAL`` s at most, log the CPU share of a throttled persona."""
        now = time.monotonic() if now is None else now
        usage, throttled = counters.get("usage_usec", 0), counters.get("nr_throttled", 0)
        if unit.cpu_mark is None:
            unit.cpu_mark = (now, usage, throttled)
            return
        since, used, was = unit.cpu_mark
        if now - since < CPU_LOG_INTERVAL:
            return
        unit.cpu_mark = (now, usage, throttled)
        if throttled > was:
            share = (usage - used) / 1e6 / (now - since)
            self.log.event("persona.cpu_throttled", name=unit.name, share=f"{share:.3f}",
                           quota=unit.persona.ceilings.cpu_max.replace(" ", "/"),
                           periods=throttled - was)

    def _check_contained(self, unit: Unit) -> None:
        if not unit.process.running():
            return  # exited, not yet reaped: a zombie proves nothing either way
        expected = "/" + os.path.relpath(str(unit.process.cgroup.path), self.cgroup_root)
        try:
            with open(f"/proc/{unit.process.pid}/cgroup", encoding="utf-8") as f:
                line = next((x for x in f if x.startswith("0::")), "0::?")
        except (FileNotFoundError, ProcessLookupError):
            return  # exited between the reap and now
        actual = line[3:].strip()
        if actual != expected and not actual.startswith(expected + "/"):
            raise ContainmentError(f"persona {unit.name}: its PID 1 is in cgroup {actual}, not {expected}")

    def _forward_output(self, unit: Unit, *, final: bool = False) -> None:
        """Log the persona's output line by line, losing nothing.

        At most ``OUTPUT_LINES_PER_TICK`` lines per tick (``final``: everything left);
        what is not logged yet stays buffered, and once ``OUTPUT_BUFFER`` bytes wait,
        bay0 stops reading, so the pipe fills and a chatty persona blocks on its own
        writes instead of having its lines dropped.
        """
        self._read_output(unit, limit=None if final else OUTPUT_BUFFER)
        emitted = 0
        while final or emitted < OUTPUT_LINES_PER_TICK:
            end = unit.pending.find(b"\n", 0, OUTPUT_LINE_MAX + 1)
            if end < 0:
                if not unit.pending or (unit.output >= 0 and len(unit.pending) < OUTPUT_LINE_MAX):
                    break
                end = min(len(unit.pending), OUTPUT_LINE_MAX)  # a last or overlong partial line
            line = bytes(unit.pending[:end]).decode(errors="replace")
            del unit.pending[: end + 1 if end < len(unit.pending) and unit.pending[end] == 10 else end]
            self.log.event("persona.output", name=unit.name, line=line)
            emitted += 1

    def _read_output(self, unit: Unit, *, limit: int | None) -> None:
        while unit.output >= 0 and (limit is None or len(unit.pending) < limit):
            try:
                data = os.read(unit.output, 8192)
            except BlockingIOError:
                return
            if not data:
                os.close(unit.output)
                unit.output = -1
                return
            unit.pending += data

    def _close_process(self, unit: Unit) -> None:
        if unit.process is None:
            return
        from bay0.sys.cgroup import CgroupError

        try:
            unit.process.close()
        except CgroupError as e:
            raise ContainmentError(f"persona {unit.name}: {e.message}", e.hint) from e
        finally:
            unit.process = None

    def _release(self, unit: Unit) -> None:
        if unit.output >= 0:
            os.close(unit.output)
            unit.output = -1
        if unit.attachment is not None:
            self.detach_fn(unit.attachment)
            unit.attachment = None

    # -- purge --

    def purge(self, name: str, reason: str) -> None:
        """Kill, unmount, detach, wipe scratch; the persona stays down. Never raises
        for the persona's own failures (a cgroup that cannot be killed is a breach)."""
        unit = self.units[name]
        self.log.event("persona.purge", name=name, reason=reason)
        if unit.process is not None:
            if unit.process.status is None:
                unit.process.kill()
            self._close_process(unit)
        try:
            self._release(unit)
        except (OSError, SpineError) as e:
            self.log.event("persona.detach_failed", name=name, error=getattr(e, "message", str(e)))
        for source in scratch_sources(self.loaded.inventory, unit.persona):
            self._wipe(name, source)
        unit.state = "purged"

    def _wipe(self, name: str, source: str) -> None:
        """Remove a scratch source without following any symlink on the way.

        The persona could write the whole tree below its bind, so every component is
        resolved beneath /persist with symlinks refused (a planted link to bay0's state
        makes the wipe refuse, not delete bay0's files), and the removal itself walks
        directory fds (``shutil.rmtree(dir_fd=...)``).
        """
        path = os.path.join(self.persist, source)
        parent, leaf = os.path.split(source.rstrip("/"))
        try:
            dirfd = _open_beneath(self.persist, parent or ".")
            try:
                info = os.lstat(leaf, dir_fd=dirfd)
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(leaf, dir_fd=dirfd)
                else:
                    os.unlink(leaf, dir_fd=dirfd)  # a symlink or file planted in place of the dir
            finally:
                os.close(dirfd)
        except FileNotFoundError:
            return
        except OSError as e:
            self.log.event("persona.scratch_refused", name=name, path=path,
                           error=os.strerror(e.errno or 0))
            return
        self.log.event("persona.scratch_wiped", name=name, path=path)

    def _maybe_purge_generation(self, unit: Unit) -> None:
        wanted = unit.persona.purge
        record = os.path.join(self.state_dir, "purged", unit.name)
        try:
            with open(record, encoding="ascii") as f:
                applied = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            applied = 0
        if wanted <= applied:
            return
        self.purge(unit.name, f"inventory purge generation {wanted} (applied {applied})")
        from bay0.atomic import write_atomic

        os.makedirs(os.path.dirname(record), mode=0o700, exist_ok=True)
        write_atomic(record, f"{wanted}\n".encode(), mode=0o600, overwrite=True)
        unit.state = "pending"  # a purge request restarts afresh

    def _prepare_binds(self, unit: Unit) -> None:
        """Create missing bind sources under /persist without following any symlink."""
        for mount in unit.persona.mounts:
            fd = os.open(self.persist, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for part in mount.source.split("/"):
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                        if mount.rw:
                            os.chown(part, *ids_of(unit.persona), dir_fd=fd, follow_symlinks=False)
                    except FileExistsError:
                        pass
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=fd)
                    os.close(fd)
                    fd = nxt
            finally:
                os.close(fd)

    def shutdown(self) -> None:
        """Stop every persona and detach its image (before a reboot)."""
        for unit in self.units.values():
            try:
                if unit.process is not None:
                    self._close_process(unit)
                self._release(unit)
            except BaseException as e:  # noqa: BLE001 - best effort on the way down
                self.log.event("persona.shutdown_failed", name=unit.name, error=str(e))


def ids_of(persona: Any) -> tuple[int, int]:
    """(uid, gid) of an inventory persona."""
    return persona.user.uid, persona.user.gid


def _is_identity(error: SpineError) -> bool:
    from bay0.errors import IdentityMismatchError

    cause = error.__cause__
    return isinstance(error, IdentityMismatchError) or isinstance(cause, IdentityMismatchError)
