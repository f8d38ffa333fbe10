"""The QEMU half of the suite: the hostile persona and fault injection in the real appliance.

Four boots under TCG (direct kernel boot), as few as the cases allow:

1. torn boot-control — the e2e test image (tests/e2e/vmdisk: busybox root with the
   bay0 test double) whose newer boot-control copy was torn after its first sector:
   the initramfs must fall back to the older copy, boot A, and write the next state.
2. personas — the real test Spine (pipeline/recipes/spine-test.toml, real bay0) with a
   signed inventory of hostile personas built from one pod (the static probe + busybox):
   the escape battery, a victim and an attacker side by side, a fork bomb under
   pids.max, a memory balloon under memory.max beside a `keeper` that must keep
   printing, a CPU hog under cpu.max, a /persist writer. bay0 forwards each persona's
   output to the console (``persona.output``), which is where the probe lines are read.
3. reboot — a second inventory deployed to the stage: the /persist marker survives.
4. wedged bay0 — ``spine.test.wedge=1``: READY, then no ping, then an i6300esb reset.
5. /persist with wrong flags and 6. a writable root (tmpfs copy, not dm-verity) —
   each through an initramfs rebuilt from a copy of initramfs/ with one line of /init
   changed: bay0 must name the violation and reboot before READY.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.hostile.world import Observation

# guest-only cases the host battery also observes (shown on the host row, judged here)
PERSONA_CASES = ("escape/memfd-exec",)
# Fault injection in /init: a copy of initramfs/ with one line changed (the ESP is not
# under dm-verity, so a tampered or buggy initramfs is a real threat). (old, new).
PERSIST_FLAGS = ('mount -t ext4 -o nodev,nosuid,noexec "$_map" "$PERSIST_AT"',
                 'mount -t ext4 -o nodev "$_map" "$PERSIST_AT"')
# (the line sits in `if ! ...; then`: the replacement is one brace group)
ROOT_WRITABLE = ('mount -t squashfs -o ro,nodev "/dev/mapper/$SPINE_ROOT_DM" /sysroot',
                 '{ mkdir -p /ro && mount -t squashfs -o ro,nodev "/dev/mapper/$SPINE_ROOT_DM" /ro && '
                 'mount -t tmpfs -o size=300m,mode=0755 root /sysroot && cp -a /ro/. /sysroot/; }')
WEDGE_TIMEOUT = 6  # spine.watchdog seconds: short, so the wedged boot ends soon


def qemu_available() -> str | None:
    """Why QEMU boots cannot run here, or None."""
    for tool in ("qemu-system-x86_64", "mksquashfs", "sfdisk", "veritysetup"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"missing tool {tool}"
    from pipeline.paths import alpine_fixtures

    if alpine_fixtures() is None:
        return "../shared/fixtures/alpine is missing"
    return None


def torn_boot_control(work: Path) -> Observation:
    """Tear the newer boot-control copy after one sector; A must boot from the older copy."""
    from bay0.formats import bootctl as bcf
    from pipeline import initramfs, qemu
    from pipeline.paths import alpine_fixtures
    from tests.e2e import vmdisk
    from tests.e2e.conftest import APPEND

    work.mkdir(parents=True, exist_ok=True)
    image, ident = vmdisk.build_test_image(alpine_fixtures(), work)
    disk = vmdisk.make_disk(work / "torn.img")
    vmdisk.provision(disk, image, ident)
    region = disk.read("spine_state", 0, bcf.REGION_SIZE)
    old, _ = bcf.read_region(region)
    offset, record = bcf.plan_write(region, bcf.mark_bad(old, "A"))  # would send the boot to B
    disk.write_at("spine_state", offset, record[:512])  # power lost after the first sector
    kernel, initrd = initramfs.cached_test_initramfs()
    result = qemu.boot(qemu.VmConfig(disk=disk.path, kernel=kernel.vmlinuz, initrd=initrd, append=APPEND,
                                     timeout=180, console_log=work / "torn.console"))
    after = disk.state()
    ready = "bay0: READY slot=A" in result.lines("bay0: ")
    expected = dataclasses.replace(bcf.consume_try(old, "A"), seq=old.seq + 1)
    ok = result.outcome == qemu.POWEROFF and ready and after == expected
    detail = (f"outcome={result.outcome} ready_on_A={ready} state_after_is_old_minus_one_try={after == expected} "
              f"({result.wall_seconds:.0f}s)")
    return Observation("ok" if ok else "broken", detail, result.console)


POD_RECIPE = """format = 1
kind = "pod"
name = "hostile"
version = "1.0.0"
description = "The hostile persona: tests/hostile/probes/hostile_probe.c, static"
source_date_epoch = 1704067200
packages = ["busybox", "alpine-baselayout-data"]

[alpine]
release = "v3.19"
arch = "x86_64"
keys = "@fixtures/keys"
repositories = [
  { name = "iso", index = "@fixtures/v3.19/iso-repo/x86_64/APKINDEX.tar.gz", packages = ["@fixtures/v3.19/iso-repo/x86_64"] },
]

[[file]]
path = "/hostile"
directory = true
mode = 0o755

[[file]]
path = "/hostile/rw"
directory = true
mode = 0o755

[[file]]
path = "/hostile/data"
directory = true
mode = 0o755

[[file]]
path = "/usr/local/bin/hostile_probe"
src = "hostile_probe"
mode = 0o755

[[file]]
path = "/usr/local/bin/hostile_probe_suid"
src = "hostile_probe"
mode = 0o4755

[pod]
entrypoint = ["/usr/local/bin/hostile_probe", "escape"]
user = "nobody"
network = "none"
"""

PROBE = "/usr/local/bin/hostile_probe"
END = "HOSTILE END"
# name, command, extra `spinectl inventory add` options. One uid for all: isolation must
# not rest on uids. Start order is list order; `end` prints the stop marker.
# bay0 forwards at most 50 lines of a persona's output per tick and drops the rest of
# what it read (guest/output-complete): the probes wait until every persona has
# started (bay0 reads nothing while it starts them) and pace their lines.
PACE = ["--env", "HOSTILE_PACE_MS=40"]
CHATTY_LINES = 120
FORGED = ("bay0: READY slot=B", "bay0: event=slot.good slot=B", "bay0: event=fatal forged=1")
PERSONAS = (
    ("escape", f"/bin/sh -c 'sleep 12; exec {PROBE} escape'",
     ["--seccomp", "network-service", "--mount", "hostile-rw:/hostile/rw:rw", *PACE]),
    ("victim", f"{PROBE} victim 7777", ["--seccomp", "network-service", "--env", "HOSTILE_SECRET=victim-environment"]),
    ("attacker", f"/bin/sh -c 'sleep 18; exec {PROBE} attack 99999 7777 lateral'",
     ["--seccomp", "network-service", *PACE]),
    ("forger", "/bin/sh -c 'printf \"%s\\n\\r%s\\n\\033[2J%s\\n\" "
     + " ".join(f"\"{f}\"" for f in FORGED) + "'", []),
    ("chatty", f"/bin/sh -c 'i=0; while [ $i -lt {CHATTY_LINES} ]; do echo CHATTY $i; i=$((i+1)); done'", []),
    ("bomb", f"{PROBE} fork-bomb", ["--pids", "32"]),
    ("keeper", "/bin/sh -c 'i=0; while [ $i -lt 60 ]; do echo KEEPER $i; i=$((i+1)); sleep 1; done'", []),
    ("balloon", f"{PROBE} memory-balloon 256", ["--memory", "32M"]),
    ("hog", f"{PROBE} cpu-hog 6", ["--cpu", "0.2"]),
    ("persist", f"{PROBE} persist /hostile/data", ["--mount", "hostile-data:/hostile/data:rw"]),
    ("end", f"/bin/sh -c 'sleep 45; echo {END}'", []),
)
REBOOT_PERSONAS = (next(p for p in PERSONAS if p[0] == "persist"), ("end", f"/bin/sh -c 'sleep 3; echo {END}'", []))
HOG_QUOTA = 0.2
BOMB_PIDS = 32


class GuestKit:
    """One Spine (real bay0), one hostile pod, one disk; built once for every guest boot."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.keys = work / "keys"
        self.pods = work / "pods"
        self.disk = work / "spine-disk.img"
        self.boots = 0

    def spinectl(self, *args: str) -> str:
        import sys

        from pipeline.run import run

        return run([sys.executable, "-m", "spinectl", *args], env=_shared_env()).stdout.decode()

    def build(self) -> None:
        from pipeline.build import build_pod, build_spine
        from pipeline.recipe import load_recipe
        from spinectl.keys import load_secret_key
        from tests.hostile.world import build_probe

        self.spinectl("keys", "generate", "--name", "op", "--dir", str(self.keys), "--no-passphrase")
        recipe = load_recipe(Path(__file__).resolve().parents[2] / "pipeline/recipes/spine-test.toml")
        recipe = recipe.with_trust_keys((*recipe.trust_keys, self.keys / "op.pub"))
        spine = self.work / "test.spine"
        build_spine(recipe, load_secret_key(self.keys / "op.key"), spine)
        build_probe(self.work / "hostile_probe")
        (self.work / "hostile-pod.toml").write_text(POD_RECIPE)
        self.pods.mkdir()
        build_pod(load_recipe(self.work / "hostile-pod.toml"), self.pods / "hostile.img")
        with open(self.disk, "wb") as f:
            f.truncate(700 << 20)
        inventory = self.inventory("inv1.json", PERSONAS, 1)
        self.spinectl("provision", str(self.disk), "--spine", str(spine), "--pubkey", str(self.keys / "op.pub"),
                      "--esp-mib", "40", "--slot-mib", "128", "--state-mib", "4", "--stage-mib", "32",
                      "--persist-min-mib", "64", "--inventory", str(inventory), "--pods", str(self.pods), "-y")

    def inventory(self, name: str, personas, version: int) -> Path:
        path = self.work / name
        self.spinectl("inventory", "create", str(path))
        for persona, command, extra in personas:
            defaults = {"--cpu": "0.5", "--memory": "64M", "--pids": "64"}
            for key in list(defaults):
                if key in extra:
                    del defaults[key]
            args = [a for kv in defaults.items() for a in kv]
            self.spinectl("inventory", "add", str(path), "--name", persona, "--image", str(self.pods / "hostile.img"),
                          "--command", command, "--user", "1000:1000", "--restart", "never", *args, *extra)
        self.spinectl("inventory", "sign", str(path), "--key", str(self.keys / "op.key"), "--version", str(version))
        return path

    def boot(self, append: str = "", **fields):
        from pipeline import initramfs, qemu
        from tests.e2e.conftest import APPEND

        kernel, initrd = initramfs.cached_test_initramfs()
        self.boots += 1
        cfg = qemu.VmConfig(disk=self.disk, kernel=kernel.vmlinuz, initrd=initrd,
                            append=f"{APPEND} {append}".strip(), timeout=300, memory_mib=512,
                            console_log=self.work / f"boot{self.boots}.console")
        for key, value in fields.items():
            setattr(cfg, key, value)
        return qemu.boot(cfg, stop_when=END if not fields.get("snapshot") else None)


def _shared_env() -> dict[str, str]:
    from pipeline.paths import shared_dir

    env = {"SPINE_CACHE": os.environ.get("SPINE_CACHE", "")} if os.environ.get("SPINE_CACHE") else {}
    shared = shared_dir()
    if shared is not None:
        env["SPINE_SHARED"] = str(shared)
    env["HOME"] = os.environ.get("HOME", "/root")
    return env


def persona_output(console: str) -> dict[str, list[str]]:
    """bay0's ``persona.output`` lines, by persona name, in order."""
    from bay0.log import parse_line

    out: dict[str, list[str]] = {}
    for line in console.splitlines():
        if line.startswith("bay0: event=persona.output"):
            fields = parse_line(line.rstrip("\r"))
            out.setdefault(fields.get("name", "?"), []).append(fields.get("line", ""))
    return out


def bay0_events(console: str, event: str) -> list[dict[str, str]]:
    from bay0.log import parse_line

    return [parse_line(line.rstrip("\r")) for line in console.splitlines()
            if line.startswith(f"bay0: event={event} ")]
def judge_battery(lines: list[str], prefix: str, skip: tuple[str, ...] = ()) -> Observation:
    """The escape (or lateral) battery as one guest observation: which probes broke out."""
    from tests.hostile.cases import CASES
    from tests.hostile.world import probe_lines

    console = "\n".join(lines)
    seen = {k if "/" in k else f"{prefix}/{k}": v for k, v in probe_lines(console).items()}
    wanted = [c for c in CASES if c.group == prefix and c.where == "host" and c.probe not in skip
              and c.probe in _BATTERY_PROBES.get(prefix, {c.probe})]
    broken = [f"{c.probe}={seen[c.name].result}:{seen[c.name].detail}" if c.name in seen else f"{c.probe}=missing"
              for c in wanted if c.name not in seen or not c.accepts(seen[c.name].result, seen[c.name].detail)]
    if broken:
        return Observation("exposed", f"{len(broken)} of {len(wanted)}: " + " ".join(broken)[:300], console)
    return Observation("contained", f"all {len(wanted)} probes as expected", console)


# the lateral probes that mean something in the guest (pid-based ones need a host pid)
_BATTERY_PROBES = {"lateral": {"environ-scan", "abstract-unix", "loopback", "sysv-shm", "sysv-msg", "posix-shm",
                               "kill", "signal0", "pidfd-open", "ptrace", "environ", "proc-root"}}


def _number_after(text: str, word: str) -> float | None:
    parts = text.replace("=", " ").split()
    try:
        return float(parts[parts.index(word) + 1])
    except (ValueError, IndexError):
        return None


def personas_boot(kit: GuestKit) -> dict[str, Observation]:
    """Boot 1: every hostile persona side by side under the real bay0."""
    from tests.hostile.world import probe_lines

    result = kit.boot()
    console = result.console
    out = persona_output(console)
    found: dict[str, Observation] = {}
    if not result.lines("bay0: READY"):
        return {"error/guest-boot": Observation("error", f"no READY ({result.outcome})", console)}
    found["guest/escape-battery"] = judge_battery(out.get("escape", []), "escape",
                                                  skip=("fcaps-binary", "memfd-exec"))
    found["guest/lateral"] = judge_battery(out.get("attacker", []), "lateral")
    memfd = probe_lines("\n".join(out.get("escape", []))).get("memfd-exec")
    escape_lines = "\n".join(line for line in console.splitlines() if "name=escape" in line)
    found["escape/memfd-exec"] = (Observation(memfd.result, memfd.detail, escape_lines) if memfd
                                  else Observation("missing", "no memfd-exec line", console))
    bomb = probe_lines("\n".join(out.get("bomb", []))).get("fork-bomb")
    if bomb is not None:
        count = _number_after(bomb.detail, "after")
        ok = bomb.result == "contained" and count is not None and count < BOMB_PIDS
        found["exhaust/fork-bomb-pids-max"] = Observation("contained" if ok else "exposed",
                                                          f"{bomb.detail} (pids.max {BOMB_PIDS})", console)
    found["exhaust/memory-balloon"] = _balloon(console, out)
    hog = probe_lines("\n".join(out.get("hog", []))).get("cpu-hog")
    if hog is not None:
        share = _number_after(hog.detail, "cpu_share")
        ok = share is not None and share <= HOG_QUOTA * 1.5
        found["exhaust/cpu-hog"] = Observation("contained" if ok else "exposed",
                                               f"{hog.detail} (cpu.max {HOG_QUOTA})", console)
    forged = [line for line in console.splitlines() if line.startswith(FORGED)]
    found["guest/console-forgery"] = Observation(
        "exposed" if forged else "contained",
        f"{len(forged)} console lines forged by a persona" if forged else "persona text only inside line=\"...\"",
        console)
    chatty = [line for line in out.get("chatty", []) if line.startswith("CHATTY ")]
    found["guest/output-complete"] = Observation(
        "ok" if len(chatty) == CHATTY_LINES else "dropped",
        f"{len(chatty)} of {CHATTY_LINES} lines a persona printed reached the console",
        "\n".join(line for line in console.splitlines() if "name=chatty" in line))
    before = probe_lines("\n".join(out.get("persist", []))).get("persist-before")
    found["guest/persist-first-boot"] = before or Observation("missing", "no persist-before line", console)
    return {k: (v if v.evidence else Observation(v.result, v.detail, console)) for k, v in found.items()}


def _balloon(console: str, out: dict[str, list[str]]) -> Observation:
    """Killed inside its own cgroup (oom_kill counted), while `keeper` kept printing."""
    exits = [e for e in bay0_events(console, "persona.exit") if e.get("name") == "balloon"]
    ooms = [e for e in bay0_events(console, "persona.memory_event") if e.get("name") == "balloon"]
    escaped = any(line.startswith("PROBE memory-balloon") for line in out.get("balloon", []))
    lines = console.splitlines()
    exit_at = next((i for i, line in enumerate(lines) if "event=persona.exit name=balloon" in line), None)
    keeper_after = exit_at is not None and any("name=keeper" in line and "KEEPER" in line for line in lines[exit_at:])
    keeper_exit = [e for e in bay0_events(console, "persona.exit") if e.get("name") == "keeper"]
    killed = bool(exits) and exits[0].get("signal") == "9"
    detail = (f"balloon exit={exits[0] if exits else 'none'} oom_events={ooms[-1] if ooms else 'none'} "
              f"keeper_answered_after={keeper_after} keeper_killed={bool(keeper_exit)}")
    ok = killed and bool(ooms) and not escaped and keeper_after and not keeper_exit
    return Observation("killed" if ok else "exposed", detail, console)


def reboot_boot(kit: GuestKit) -> dict[str, Observation]:
    """Boot 2 with a new inventory (only `persist`): the /persist marker must be there."""
    from tests.hostile.world import probe_lines

    inventory = kit.inventory("inv2.json", REBOOT_PERSONAS, 2)
    kit.spinectl("deploy", str(kit.disk), "--inventory", str(inventory), "--pods", str(kit.pods),
                 "--pubkey", str(kit.keys / "op.pub"))
    result = kit.boot()
    out = persona_output(result.console)
    before = probe_lines("\n".join(out.get("persist", []))).get("persist-before")
    ok = before is not None and before.result == "present"
    return {"persist/reboot": Observation("contained" if ok else "exposed",
                                          f"marker after reboot: {before.result if before else 'no line'}",
                                          result.console)}


def wedge_boot(kit: GuestKit) -> dict[str, Observation]:
    """Boot 3: real bay0 with spine.test.wedge=1: READY, then silence, then a watchdog reset."""
    from pipeline import qemu

    result = kit.boot(f"spine.test.wedge=1 spine.watchdog={WEDGE_TIMEOUT}", snapshot=True, timeout=240)
    ready = bool(result.lines("bay0: READY"))
    wedged = bool(bay0_events(result.console, "test.wedge"))
    ok = result.outcome == qemu.WATCHDOG and ready and wedged
    return {"fault/wedged-bay0": Observation(
        "ok" if ok else "broken", f"outcome={result.outcome} ready={ready} wedged={wedged} "
        f"({result.wall_seconds:.0f}s)", result.console)}


def _tampered_initrd(work: Path, name: str, change: tuple[str, str]) -> Path:
    """The test initramfs rebuilt from a copy of initramfs/ whose /init has ``change`` applied."""
    from pipeline import initramfs
    from pipeline.paths import PROJECT_ROOT

    kernel, _ = initramfs.cached_test_initramfs()
    tree = work / f"initramfs-{name}"
    shutil.copytree(PROJECT_ROOT / "initramfs", tree)
    init = tree / "init"
    text = init.read_text()
    if change[0] not in text:
        raise AssertionError(f"initramfs/init no longer has {change[0]!r}: update {__name__}")
    init.write_text(text.replace(change[0], change[1]))
    spec = dataclasses.replace(initramfs.test_spec(kernel), init_dir=tree)
    return initramfs.build_initramfs(spec, work / f"{name}.cpio.gz")


def _refusal_boot(kit: GuestKit, case: str, change: tuple[str, str], mount_point: str) -> dict[str, Observation]:
    """A boot through a tampered /init: bay0 must name the broken invariant and reboot before READY."""
    from pipeline import qemu

    initrd = _tampered_initrd(kit.work, case.split("/")[1], change)
    result = kit.boot("", initrd=initrd, snapshot=True, timeout=240, memory_mib=768)
    violations = result.lines("bay0: VIOLATION")
    named = [v for v in violations if mount_point in v]
    ready = bool(result.lines("bay0: READY"))
    ok = result.outcome == qemu.REBOOT and bool(named) and not ready
    detail = (f"outcome={result.outcome} violation={named[0] if named else violations or 'none'} "
              f"ready={ready} ({result.wall_seconds:.0f}s)")
    return {case: Observation("ok" if ok else "broken", detail, result.console)}


def persist_flags_boot(kit: GuestKit) -> dict[str, Observation]:
    return _refusal_boot(kit, "fault/persist-wrong-flags", PERSIST_FLAGS, "/persist")


def root_writable_boot(kit: GuestKit) -> dict[str, Observation]:
    return _refusal_boot(kit, "fault/root-writable", ROOT_WRITABLE, "/ ")


def run_all() -> tuple[dict[str, Observation], dict[str, str]]:
    """Boot what can be booted: (observations, {case: reason it was not run})."""
    skips: dict[str, str] = {}
    missing = qemu_available()
    if missing:
        return {}, {**skips, "qemu": missing}
    found: dict[str, Observation] = {}
    work = Path(tempfile.mkdtemp(prefix="hostile-guest-", dir="/var/tmp"))
    try:
        found.update(_guarded("torn", lambda: {"fault/torn-boot-control": torn_boot_control(work / "torn")}))
        kit = GuestKit(work / "kit")
        kit.work.mkdir()
        built = _guarded("kit", lambda: kit.build() or {})
        found.update(built)
        if built:  # every boot below needs the kit: each of its cases fails with the reason
            from tests.hostile.cases import CASES

            error = built["error/kit"]
            for case in CASES:
                if case.where == "qemu" and case.name not in found and case.name not in skips:
                    found[case.name] = Observation("error", f"guest kit not built: {error.detail}", error.evidence)
        else:
            for name, fn in (("personas", personas_boot), ("reboot", reboot_boot), ("wedge", wedge_boot),
                             ("persist-flags", persist_flags_boot), ("root-writable", root_writable_boot)):
                found.update(_guarded(name, lambda fn=fn: fn(kit)))
    finally:
        if os.environ.get("HOSTILE_KEEP") != "1":  # HOSTILE_KEEP=1: keep disks and consoles
            shutil.rmtree(work, ignore_errors=True)
    return found, skips


def _guarded(name: str, fn: Callable[[], dict[str, Observation]]) -> dict[str, Observation]:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a broken boot is a failed case, with its reason
        import traceback

        return {f"error/{name}": Observation("error", f"{type(e).__name__}: {e}", traceback.format_exc())}
