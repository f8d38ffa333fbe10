"""Host tests of the persona launcher (root, namespaces): probes run inside a real
Alpine 3.19 minirootfs, bound read-only, with its busybox and a small static C probe
(tests/probes/sandbox_probe.c) for what busybox cannot express.

cgroup ceilings need delegated controllers, which this host lacks: those cases skip
here and are covered in QEMU (issue 6 tests: memory balloon, fork bomb, CPU hog).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bay0.persona import Bind, PersonaSpec, launch, spec_from_inventory
from bay0.sys import SandboxError
from bay0.sys.cgroup import Ceilings, Cgroup, CgroupError, available_controllers, cgroup2_mount
from tests.conftest import require_root, require_tool

PROBE_SRC = Path(__file__).parent / "probes" / "sandbox_probe.c"
MINIROOTFS = "minirootfs/alpine-minirootfs-3.19.4-x86_64.tar.gz"
UID = GID = 1000
_names = itertools.count()


@pytest.fixture(scope="module")
def world(alpine: Path):
    """An unpacked Alpine root (with the probe) and a /persist stand-in.

    Under /var/tmp, not /tmp: /tmp is a small tmpfs on CI machines, and noexec.
    """
    require_root()
    require_tool("gcc")
    _let_other_threads_end()
    base = Path(tempfile.mkdtemp(prefix="sandbox-test-", dir="/var/tmp"))
    try:
        yield _make_world(base, alpine)
    finally:
        shutil.rmtree(base)


def _let_other_threads_end(timeout: float = 30.0) -> None:
    """The launcher refuses to fork a threaded process, and QEMU tests earlier in the
    session leave timer threads behind for a few seconds (pipeline.qemu's killer)."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is not threading.main_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def _make_world(base: Path, alpine: Path) -> dict[str, Path]:
    root = base / "root"
    with tarfile.open(alpine / MINIROOTFS) as tar:
        tar.extractall(root, filter="fully_trusted")
    probe = root / "usr/local/bin/sandbox_probe"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(probe), str(PROBE_SRC)], check=True)
    persist = base / "persist"
    (persist / "data").mkdir(parents=True)
    (persist / "data/hello").write_text("from persist\n")
    shutil.copy(root / "bin/busybox", persist / "data/busybox")
    (persist / "rw").mkdir()
    os.chown(persist / "rw", UID, GID)
    (persist / "link").symlink_to("/etc")
    (persist / "linkdir").symlink_to(persist / "data")
    return {"root": root, "persist": persist}


def make_spec(world: dict[str, Path], *argv: str, **overrides) -> PersonaSpec:
    values = dict(
        name=f"t{os.getpid()}-{next(_names)}", root=str(world["root"]), argv=argv, uid=UID, gid=GID,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, persist=str(world["persist"]),
        cgroup_parent=str(cgroup2_mount()),
    )
    values.update(overrides)
    return PersonaSpec(**values)


def run(world, script: str, **overrides) -> tuple[object, str]:
    """Run ``sh -c script`` in a persona; return (exit status, stdout+stderr)."""
    return run_argv(world, "/bin/sh", "-c", script, **overrides)


def run_argv(world, *argv: str, **overrides) -> tuple[object, str]:
    out = Path(world["persist"]).parent / f"out-{os.getpid()}-{next(_names)}"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        persona = launch(make_spec(world, *argv, **overrides), stdout=fd, stderr=fd)
    finally:
        os.close(fd)
    status = persona.wait(timeout=20)
    persona.close()
    text = out.read_text()
    out.unlink()
    return status, text


def test_command_is_pid_2_under_a_reaper_pid_1(world) -> None:
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    persona = launch(make_spec(world, "/bin/sh", "-c", "echo $$; grep PPid /proc/$$/status; read x"),
                     stdin=r, stdout=out_w)
    os.close(r)
    os.close(out_w)
    try:
        host_status = Path(f"/proc/{persona.pid}/status").read_text()
        nspid = next(line for line in host_status.splitlines() if line.startswith("NSpid:"))
        assert nspid.split()[1:] == [str(persona.pid), "1"]
        assert Path(f"/proc/{persona.pid}/comm").read_text() == "persona-init\n"
        assert persona.child_pid == 2
        assert persona.pid in persona.cgroup.pids()
    finally:
        os.write(w, b"\n")
        os.close(w)
        status = persona.wait(timeout=10)
        persona.close()
    assert status.code == 0
    lines = os.read(out_r, 4096).decode().split("\n")
    assert lines[0] == "2" and lines[1].split() == ["PPid:", "1"]


def test_identity_hostname_env_umask_limits_session(world) -> None:
    status, out = run(world, "hostname; id -u; id -g; id -G; umask; ulimit -n; ulimit -c; "
                             "cut -d' ' -f6 /proc/self/stat; grep ^0:: /proc/self/cgroup",
                      name="probe-host", env={"PATH": "/bin:/usr/bin", "ONLY": "this"})
    assert status.code == 0, out
    assert out.split("\n")[:9] == ["probe-host", "1000", "1000", "1000", "0077", "1024", "0",
                                   "2", "0::/"]
    status, out = run_argv(world, "/usr/bin/env", env={"ONLY": "this"})
    assert out == "ONLY=this\n"


def test_root_readonly_dev_minimal_no_sys(world) -> None:
    status, out = run(world, "touch /x 2>&1; for f in /dev/*; do stat -c '%F %t:%T %a %n' $f; done; "
                             "ls -A /sys | wc -l; cat /proc/self/mountinfo")
    lines = out.splitlines()
    assert "Read-only file system" in lines[0]
    nodes = sorted(line for line in lines if line.startswith("character special file"))
    assert nodes == sorted(f"character special file {d} 666 /dev/{n}" for n, d in [
        ("full", "1:7"), ("null", "1:3"), ("random", "1:8"), ("tty", "5:0"),
        ("urandom", "1:9"), ("zero", "1:5")])
    links = [line for line in lines if line.startswith("symbolic link")]
    assert len(links) == 4
    assert not [line for line in lines if line.startswith(("block", "regular", "directory"))]
    assert "0" in lines
    mounts = {line.split()[4]: line for line in lines if " - " in line}
    assert " ro," in mounts["/"] and "nosuid" in mounts["/"]
    assert "ro,nosuid,noexec" in mounts["/dev"]
    assert "sysfs" not in out and "/sys" not in mounts


def test_proc_masked_and_readonly(world) -> None:
    status, out = run(world, "wc -c < /proc/keys; wc -c < /proc/timer_list; ls -A /proc/acpi | wc -l; "
                             "echo x > /proc/sysrq-trigger 2>&1; cat /proc/self/mountinfo")
    lines = out.splitlines()
    assert lines[:3] == ["0", "0", "0"]
    mounts = {line.split()[4]: line.split()[5] for line in lines if " - " in line}
    for path in ("/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq"):
        assert mounts[path].startswith("ro"), path
    assert "hidepid=invisible" in out or "hidepid=2" in out


def test_pid1_and_its_files_are_out_of_reach(world) -> None:
    status, out = run(world, "ls /proc/1/exe 2>&1; ls -d /proc/[0-9]* | tr '\\n' ' '; "
                             "cd /proc/self/fd/3 2>&1; echo x > /dev/null && echo null-ok")
    assert "No such file" in out.splitlines()[0]
    assert "/proc/1 " not in out.splitlines()[1]
    assert "null-ok" in out


def test_privileges_all_gone(world) -> None:
    status, out = run(world, "grep -E '^(Cap|NoNewPrivs|Seccomp:|SigIgn|SigBlk)' /proc/self/status; ls /proc/$$/fd; true")
    fields = dict(line.split(":\t") for line in out.splitlines() if ":\t" in line)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "SigIgn", "SigBlk"):
        assert int(fields[cap], 16) == 0, cap
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
    fds = [line for line in out.splitlines() if line.isdigit()]
    assert fds == ["0", "1", "2"]


KILLED = ["unshare-user", "mount", "ptrace", "keyctl", "af-packet", "af-alg", "af-vsock", "af-inet",
          "ia32", "x32", "clone-newns", "tiocsti", "tiocsti-high", "personality", "mknod-blk"]


@pytest.mark.parametrize("case", KILLED)
def test_blocked_syscall_kills_with_sigsys(world, case: str) -> None:
    status, out = run_argv(world, "/usr/local/bin/sandbox_probe", case)
    assert status.signal == signal.SIGSYS, f"{case}: {status} {out}"


@pytest.mark.parametrize("case", ["clone3", "io-uring", "newer-than-table"])
def test_unknown_and_fallback_syscalls_get_enosys(world, case: str) -> None:
    status, out = run_argv(world, "/usr/local/bin/sandbox_probe", case)
    assert out.strip() == f"{case} errno=38"


def test_socket_families_follow_the_profile(world) -> None:
    assert run_argv(world, "/usr/local/bin/sandbox_probe", "af-unix")[1] == "af-unix ok\n"
    assert run_argv(world, "/usr/local/bin/sandbox_probe", "af-inet", seccomp="network-service")[1] == "af-inet ok\n"
    status, _ = run_argv(world, "/usr/local/bin/sandbox_probe", "af-unix", seccomp="batch")
    assert status.signal == signal.SIGSYS
    status, out = run_argv(world, "/usr/local/bin/sandbox_probe", "setuid-root")
    assert out == "setuid-root errno=1\n"


def test_network_none_has_only_loopback_and_it_is_up(world) -> None:
    script = ("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; "
              "nc -l -p 7777 -s 127.0.0.1 > /dev/null & sleep 0.2; "
              "echo ping | nc 127.0.0.1 7777 && echo connected")
    status, out = run(world, script, seccomp="network-service")
    lines = out.split()
    assert lines[0] == "lo" and "eth0" not in lines
    assert "connected" in lines


def test_binds_readonly_noexec_by_default(world) -> None:
    status, out = run(world, "cat /mnt/hello; touch /mnt/new 2>&1; /mnt/busybox true 2>&1; echo rc=$?; "
                             "touch /srv/new && echo rw-ok; grep -E ' /(mnt|srv) ' /proc/self/mountinfo",
                      binds=(Bind("data", "/mnt"), Bind("rw", "/srv", rw=True)))
    lines = out.splitlines()
    assert lines[0] == "from persist"
    assert "Read-only file system" in lines[1]
    assert "Permission denied" in lines[2] and lines[3] == "rc=126"
    assert "rw-ok" in lines
    mnt = next(line for line in lines if " /mnt " in line).split()[5]
    srv = next(line for line in lines if " /srv " in line).split()[5]
    assert set(mnt.split(",")) >= {"ro", "nosuid", "nodev", "noexec", "nosymfollow"}
    assert set(srv.split(",")) >= {"rw", "nosuid", "nodev", "noexec", "nosymfollow"}
    assert (world["persist"] / "rw/new").exists()


def test_exec_bind_allows_running(world) -> None:
    status, out = run(world, "/mnt/busybox echo ran", binds=(Bind("data", "/mnt", rw=False, exec=True),))
    assert out == "ran\n"


@pytest.mark.parametrize("source", ["link", "linkdir/hello"])
def test_symlink_bind_source_is_refused(world, source: str) -> None:
    with pytest.raises(SandboxError) as info:
        launch(make_spec(world, "/bin/true", binds=(Bind(source, "/mnt"),)))
    assert info.value.step == "bind /mnt" and info.value.errno == 40  # ELOOP
    assert "symlink" in info.value.hint


def test_launch_failure_names_the_step(world) -> None:
    spec = make_spec(world, "/no/such/program")
    with pytest.raises(SandboxError) as info:
        launch(spec)
    assert info.value.step == "exec" and info.value.errno == 2
    assert not (cgroup2_mount() / spec.name).exists()  # nothing left behind
    with pytest.raises(SandboxError) as info:
        launch(make_spec(world, "/bin/true", binds=(Bind("data", "/no-such-dir"),)))
    assert info.value.step == "bind /no-such-dir" and "No such file" in info.value.message
    with pytest.raises(SandboxError) as info:
        launch(make_spec(world, "/bin/true", cwd="/root"))  # 0700 root-owned in Alpine
    assert info.value.step == "chdir"


@pytest.mark.parametrize("bad", [
    dict(uid=0), dict(gid=0), dict(name="Bad_Name"), dict(seccomp="nope"), dict(argv=()),
    dict(binds=(Bind("../etc", "/mnt"),)), dict(binds=(Bind("/etc", "/mnt"),)),
    dict(binds=(Bind("data", "/proc/x"),)), dict(binds=(Bind("data", "/"),)),
    dict(cwd="tmp"), dict(env={"A=B": "c"}), dict(env={"A": "b\0"}), dict(argv=("/bin/true", "\0")),
    dict(env={"": "x"}), dict(env={"A\0": "x"}), dict(root="var/root"), dict(persist="persist"),
])
def test_bad_spec_is_refused_before_anything_happens(world, bad) -> None:
    spec = make_spec(world, "/bin/true")
    with pytest.raises(SandboxError) as info:
        launch(replace(spec, **bad))
    assert info.value.step == "spec"
    assert not (cgroup2_mount() / spec.name).exists()


def test_no_mount_leaks_to_the_host_and_kill_uses_the_cgroup(world) -> None:
    persona = launch(make_spec(world, "/bin/sh", "-c", "sleep 100 & sleep 100 & wait"))
    try:
        host_mounts = Path("/proc/self/mountinfo").read_text()
        assert str(world["root"]) not in host_mounts
        persona.kill()
        status = persona.wait(timeout=5)
        assert status.signal == signal.SIGKILL
    finally:
        persona.close()
    assert not persona.cgroup.path.exists()


def test_exit_collected_by_a_global_reaper(world) -> None:
    persona = launch(make_spec(world, "/bin/sh", "-c", "exit 7"))
    import select

    assert select.select([persona], [], [], 10)[0]
    _, status = os.waitpid(-1, 0)  # what bay0's reaper loop does
    assert persona.collect(status).code == 7
    persona.close()


def test_sigterm_to_pid1_reaches_the_command(world) -> None:
    persona = launch(make_spec(world, "/bin/sleep", "100"))
    try:
        with pytest.raises(TimeoutError):
            persona.wait(timeout=0.2)
        os.kill(persona.pid, signal.SIGTERM)
        assert persona.wait(timeout=5).signal == signal.SIGTERM
    finally:
        persona.close()


def test_ceilings_without_controllers_are_an_error_not_unlimited(world) -> None:
    parent = cgroup2_mount()
    if {"cpu", "memory", "pids"} <= available_controllers(parent):
        pytest.skip("controllers are delegated here; see test_ceilings_are_written")
    spec = make_spec(world, "/bin/true", ceilings=Ceilings(pids_max=10))
    with pytest.raises(CgroupError):
        launch(spec)
    assert not (parent / spec.name).exists()


def test_ceilings_are_written(world) -> None:
    parent = cgroup2_mount()
    if not {"cpu", "memory", "pids"} <= available_controllers(parent):
        pytest.skip("no cpu/memory/pids controllers delegated on this host; the QEMU persona "
                    "tests (issue 6: balloon, fork bomb, CPU hog) cover the ceilings")
    ceilings = Ceilings(cpu_max="50000 100000", memory_max=64 << 20, pids_max=32)
    persona = launch(make_spec(world, "/bin/sleep", "100", ceilings=ceilings))
    try:
        path = persona.cgroup.path
        assert (path / "cpu.max").read_text().split() == ["50000", "100000"]
        assert (path / "memory.max").read_text().strip() == str(64 << 20)
        assert (path / "memory.swap.max").read_text().strip() == "0"
        assert (path / "memory.oom.group").read_text().strip() == "1"
        assert (path / "pids.max").read_text().strip() == "32"
    finally:
        persona.close()


def test_cgroup_create_kill_events_remove() -> None:
    require_root()
    group = Cgroup.create(cgroup2_mount(), f"t{os.getpid()}-cg", None)
    try:
        assert group.events("cgroup.events")["populated"] == 0
        assert group.events("no.such.file") == {}
        group.kill()  # empty: a no-op
    finally:
        group.remove()
    assert not group.path.exists()


def test_spec_from_inventory(world) -> None:
    from bay0.formats.inventory import Persona
    from tests.test_inventory_data import persona as persona_doc

    entry = Persona.from_dict(persona_doc("web", command=["/bin/true"], network="none",
                                          seccomp="batch", shell=None,
                                          mounts=[{"source": "data", "target": "/mnt",
                                                   "rw": False, "exec": False}]))
    spec = spec_from_inventory(entry, str(world["root"]))
    assert spec.argv == ("/bin/true",) and spec.binds[0].source == "data"
    assert (spec.uid, spec.gid) == (1000, 1000)
    spec.validate()


def test_veth_policy_allows_declared_egress_only(world) -> None:
    require_tool("ip", "nft")
    import socket as socketlib

    from bay0.formats.inventory import EgressRule, Network

    listeners = []
    for _ in range(2):
        s = socketlib.socket()
        s.bind(("0.0.0.0", 0))
        s.listen(4)
        listeners.append(s)
    allowed, other = (s.getsockname()[1] for s in listeners)
    network = Network("10.199.0.2/30", (EgressRule("10.199.0.1/32", "tcp", allowed),), "10.199.0.1")
    script = (f"ip -o -4 addr show eth0 | tr -s ' ' | cut -d' ' -f4; "
              f"nc -z -w 2 10.199.0.1 {allowed} && echo allowed-ok; "
              f"nc -z -w 1 10.199.0.1 {other} && echo other-leaked; echo done")
    try:
        status, out = run(world, script, network=network, seccomp="network-service", name="vethprobe")
    finally:
        for s in listeners:
            s.close()
    lines = out.split()
    assert lines[0] == "10.199.0.2/30"
    assert "allowed-ok" in lines and "other-leaked" not in lines and lines[-1] == "done"
    from bay0.sys.netns import host_ifname, table_name
    assert not Path(f"/sys/class/net/{host_ifname('vethprobe')}").exists()
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert table_name("vethprobe") not in nft


def test_fallback_without_clone3_joins_the_cgroup_from_inside(world, monkeypatch) -> None:
    import bay0.persona as persona_mod

    monkeypatch.setitem(persona_mod._CACHE, "no_clone3", True)
    status, out = run(world, "grep ^0:: /proc/self/cgroup; echo $$")
    assert out.split() == ["0::/", "2"]


def test_command_found_through_path_or_named_when_missing(world) -> None:
    status, out = run_argv(world, "sh", "-c", "echo found")
    assert status.code == 0 and out == "found\n"
    with pytest.raises(SandboxError) as info:
        launch(make_spec(world, "no-such-command"))
    assert info.value.step == "exec" and info.value.errno == 2 and "not found in PATH" in info.value.message


def test_command_started_through_popen_where_fork_exec_is_not_known(world, monkeypatch) -> None:
    from bay0.sys import sandbox

    monkeypatch.setattr(sandbox, "_FORK_EXEC", None)  # as on a Python other than 3.11
    status, out = run_argv(world, "/bin/grep", "-E", "^(Pid|SigBlk|SigIgn)", "/proc/self/status")
    assert status.code == 0 and out.split() == ["Pid:", "2", "SigBlk:", "0" * 16, "SigIgn:", "0" * 16]
    with pytest.raises(SandboxError) as info:
        launch(make_spec(world, "/no/such/program"))
    assert info.value.step == "exec" and info.value.errno == 2


def test_setup_death_by_any_signal_is_described() -> None:
    from bay0 import persona as persona_mod

    assert persona_mod._describe(9) == "killed by SIGKILL"
    assert persona_mod._describe(40) == "killed by 40"  # a real-time signal has no enum name
    assert persona_mod._describe(3 << 8) == "exit status 3"


BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "launch.py"


def test_launch_benchmark_forks_a_process_shaped_like_bay0() -> None:
    """Our launcher forks its caller, whose size it pays for: benchmarks/launch.py must
    not import its own tools (tarfile, argparse, the pipeline) into the process that
    launches, only bay0's modules."""
    code = ("import runpy, sys\n"
            f"runpy.run_path({str(BENCHMARK)!r}, run_name='not_main')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tarfile', 'argparse', 'pipeline', 'statistics', 'tempfile')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_launch_benchmark_measures_both_launchers(world) -> None:
    require_tool("bwrap")
    out = subprocess.run([sys.executable, str(BENCHMARK), "--measure", str(world["root"]), shutil.which("bwrap"), "2"],
                         check=True, capture_output=True, text=True).stdout
    lines = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in out.splitlines()}
    assert sorted(lines) == ["bwrap", "ours"]
    assert all(len(values) == 3 and all(v > 0 for v in values) for values in lines.values())  # CPU, 2 runs
