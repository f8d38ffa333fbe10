"""The hostile persona's world on this host: an Alpine root with the probe, a /persist.

The root is the real Alpine 3.19 minirootfs with ``hostile_probe`` (static, host gcc),
a setuid-root copy and a file-capabilities copy of it. Personas are started by the
real launcher (``bay0.persona.launch``); their stdout+stderr land in a file whose
``PROBE name result detail`` lines are the observations.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bay0.persona import Bind, Persona, PersonaSpec, launch
from bay0.sys.cgroup import cgroup2_mount
from pipeline.paths import alpine_fixtures
from pipeline.run import run

PROBE_SRC = Path(__file__).parent / "probes" / "hostile_probe.c"
MINIROOTFS = "minirootfs/alpine-minirootfs-3.19.4-x86_64.tar.gz"
PROBE = "/usr/local/bin/hostile_probe"
UID = GID = 1000  # every hostile persona shares one uid: isolation must not rest on uids
PATH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
_names = itertools.count()


class WorldUnavailable(Exception):
    """This machine cannot host the suite (not root, no gcc, no fixtures): a skip reason."""


@dataclass(frozen=True)
class Observation:
    """What one probe saw: ``result`` word, ``detail``, and the console that shows it."""

    result: str
    detail: str
    evidence: str = ""


@dataclass
class World:
    base: Path
    root: Path
    persist: Path
    fcaps: bool = True  # the file-capabilities copy really carries capabilities (setcap ran)

    def spec(self, *argv: str, **overrides) -> PersonaSpec:
        values = dict(name=f"hostile-{os.getpid()}-{next(_names)}", root=str(self.root), argv=argv,
                      uid=UID, gid=GID, env=dict(PATH_ENV), persist=str(self.persist),
                      cgroup_parent=str(cgroup2_mount()))
        values.update(overrides)
        return PersonaSpec(**values)

    def output_file(self) -> Path:
        return self.base / f"out-{next(_names)}"

    def start(self, *argv: str, **overrides) -> tuple[Persona, Path]:
        """Launch a persona with stdout+stderr to a fresh file; returns (persona, file)."""
        out = self.output_file()
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            return launch(self.spec(*argv, **overrides), stdout=fd, stderr=fd), out
        finally:
            os.close(fd)

    def run(self, *argv: str, timeout: float = 120, **overrides) -> str:
        """Run a persona to its end; returns its console plus a line with its exit status."""
        persona, out = self.start(*argv, **overrides)
        try:
            status = persona.wait(timeout=timeout)
        finally:
            persona.close()
        how = f"exit {status.code}" if status.signal is None else f"signal {status.signal}"
        return out.read_text(errors="replace") + f"[persona {how}]\n"

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def probe_lines(console: str, prefix: str = "") -> dict[str, Observation]:
    """``PROBE name result detail`` lines → {prefix + name: Observation(evidence=console)}."""
    out: dict[str, Observation] = {}
    for line in console.splitlines():
        if not line.startswith("PROBE "):
            continue
        parts = line.split(" ", 3)
        if len(parts) < 4:
            continue
        _, name, result, detail = parts
        out[prefix + name] = Observation(result, detail, console)
    return out


def check_host() -> None:
    """Raise ``WorldUnavailable`` naming what this machine lacks."""
    if os.geteuid() != 0:
        raise WorldUnavailable("needs root (namespaces, cgroups, mounts)")
    if shutil.which("gcc") is None:
        raise WorldUnavailable("needs gcc to build the static probe")
    fixtures = alpine_fixtures()
    if fixtures is None or not (fixtures / MINIROOTFS).exists():
        raise WorldUnavailable("needs the Alpine minirootfs fixture (../shared/fixtures/alpine)")
    try:
        cgroup2_mount()
    except Exception as e:  # noqa: BLE001 - any reason is a skip reason
        raise WorldUnavailable(f"needs cgroup v2 mounted ({e})") from e


def build_probe(dest: Path) -> None:
    """Compile the probe statically with the host gcc."""
    run(["gcc", "-static", "-O1", "-w", "-o", str(dest), str(PROBE_SRC)])


def make_world() -> World:
    """Unpack the root, install the probe and its privileged copies, make /persist."""
    check_host()
    base = Path(tempfile.mkdtemp(prefix="hostile-", dir="/var/tmp"))
    try:
        root = base / "root"
        with tarfile.open(alpine_fixtures() / MINIROOTFS) as tar:
            tar.extractall(root, filter="fully_trusted")
        probe = root / PROBE.lstrip("/")
        build_probe(probe)
        suid = probe.with_name("hostile_probe_suid")
        shutil.copy(probe, suid)
        os.chown(suid, 0, 0)
        os.chmod(suid, 0o4755)
        fcaps = probe.with_name("hostile_probe_fcaps")
        shutil.copy(probe, fcaps)
        setcap = shutil.which("setcap") or shutil.which("setcap", path="/usr/sbin:/sbin")
        if setcap:
            run([setcap, "cap_sys_admin,cap_setuid,cap_dac_override+ep", str(fcaps)])
        persist = base / "persist"
        for d in ("rw/inner", "victim"):
            (persist / d).mkdir(parents=True)
        for d in ("rw", "rw/inner", "victim"):
            os.chown(persist / d, UID, GID)
        return World(base, root, persist, fcaps=bool(setcap))
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def wait_for_line(path: Path, marker: str, timeout: float = 15) -> str | None:
    """The first line of ``path`` containing ``marker``, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if marker in line:
                return line
        time.sleep(0.05)
    return None


def rw_bind(source: str = "rw", target: str = "/srv") -> Bind:
    return Bind(source, target, rw=True)
