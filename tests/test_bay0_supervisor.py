"""The supervisor: restart/backoff/purge policy (pure), the state machine with fake
processes, and the real loop-device attach on the host."""

from __future__ import annotations

import dataclasses
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bay0 import supervisor as sv
from bay0.errors import IdentityMismatchError, SpineError
from bay0.formats import inventory as inv
from bay0.log import Log, parse_line
from bay0.sys.cgroup import CgroupError
from tests.conftest import require_root

# ---- the pure policy ------------------------------------------------------------------

DECISIONS = [
    # policy, max, backoff, failures, ran_for, failed -> action, delay, failures
    ("on-failure", 3, 2, 0, 1.0, True, "restart", 2, 1),
    ("on-failure", 3, 2, 1, 1.0, True, "restart", 4, 2),
    ("on-failure", 3, 2, 2, 1.0, True, "restart", 8, 3),
    ("on-failure", 3, 2, 3, 1.0, True, "purge", 0, 4),
    ("on-failure", 3, 2, 3, 61.0, True, "restart", 2, 1),  # a stable run forgives
    ("on-failure", 3, 2, 2, 1.0, False, "stop", 0, 2),
    ("always", 3, 2, 0, 1.0, False, "restart", 2, 0),
    ("always", 0, 5, 0, 1.0, True, "purge", 0, 1),
    ("never", 0, 2, 0, 1.0, True, "stop", 0, 1),
    ("never", 3, 2, 0, 1.0, False, "stop", 0, 0),
    ("on-failure", 1000, 200, 9, 1.0, True, "restart", 300, 10),  # capped
    ("on-failure", 5, 0, 0, 1.0, True, "restart", 0, 1),
]


@pytest.mark.parametrize(("policy", "most", "backoff", "failures", "ran", "failed",
                          "action", "delay", "after"), DECISIONS)
def test_decide(policy, most, backoff, failures, ran, failed, action, delay, after):
    d = sv.decide(policy, most, backoff, failures=failures, ran_for=ran, failed=failed)
    assert (d.action, d.delay, d.failures) == (action, delay, after)


def test_backoff_is_exponential_and_capped():
    assert [sv.backoff_delay(1, n) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert sv.backoff_delay(0, 5) == 0 and sv.backoff_delay(3, 0) == 3
    assert sv.backoff_delay(10, 10**6) == 300


def test_event_increases():
    assert sv.event_increases({"oom": 1}, {"oom": 2, "oom_kill": 1, "max": 0},
                              ("oom", "oom_kill", "max")) == {"oom": 1, "oom_kill": 1}
    assert sv.event_increases({}, {}, ("max",)) == {}


# ---- inventory fixtures -----------------------------------------------------------------

IMAGE = inv.ImageRecord(file="web.img", size=3 * 4096 * 4, sha256="ab" * 32, data_size=4096 * 8,
                        hash_offset=4096 * 8, root_hash="cd" * 32, salt="ef" * 32)
CEIL = inv.Ceilings("50000 100000", 64 << 20, 32)


def persona(name: str, *, mounts=(), restart=None, purge=0) -> inv.Persona:
    return inv.Persona(name=name, image=IMAGE, ceilings=CEIL, command=("/bin/app",),
                       user=inv.User(1000, 1000), mounts=tuple(mounts), restart=restart or inv.Restart("on-failure", 2, 1),
                       purge=purge)


def test_scratch_sources_skip_shared_and_read_only():
    a = persona("a", mounts=[inv.Mount("data/a", "/data", rw=True), inv.Mount("shared", "/s", rw=True),
                             inv.Mount("conf", "/etc/app")])
    b = persona("b", mounts=[inv.Mount("shared", "/s", rw=True)])
    document = inv.Inventory(version=1, created=1, expires=2, personas=(a, b))
    assert sv.scratch_sources(document, a) == ["data/a"]


# ---- the state machine with fake processes ----------------------------------------------


@dataclass
class FakeCgroup:
    path: Path
    counters: dict = field(default_factory=dict)
    killed: int = 0
    removed: bool = False

    def events(self, file):
        return dict(self.counters.get(file, {}))

    def kill(self):
        self.killed += 1


class FakeProcess:
    def __init__(self, name, pid, cgroup) -> None:
        self.name, self.pid, self.cgroup, self.status = name, pid, cgroup, None

    def collect(self, wait_status):
        from bay0.persona import ExitStatus

        self.status = ExitStatus.from_wait(wait_status)
        return self.status

    def kill(self):
        self.cgroup.kill()
        self.status = self.status or self.collect(9)

    def running(self):
        return self.status is None

    def close(self):
        self.cgroup.removed = True
        return self.status


class World:
    """A supervisor over fake attach/launch, logging into a list."""

    def __init__(self, tmp_path: Path, personas, launch_error=None, attach_error=None,
                 shells=()) -> None:
        self.tmp = tmp_path
        self.lines: list[dict] = []
        console = tmp_path / "console"
        self.log = Log(os.open(console, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
        self.console = console
        self.next_pid = 1000
        self.launched: list = []
        self.attached: list[str] = []
        self.detached: list[str] = []
        self.launch_error = launch_error
        self.attach_error = attach_error
        document = inv.Inventory(version=1, created=1, expires=2, personas=tuple(personas),
                                 shells=tuple(shells))
        loaded = type("Loaded", (), {"inventory": document,
                                     "pod_path": lambda self, p: f"/pods/{p.image.sha256}.img"})()
        (tmp_path / "persist").mkdir(exist_ok=True)
        (tmp_path / "cg/personas").mkdir(parents=True)
        self.sup = sv.Supervisor(self.log, loaded, launch=self.launch, attach_fn=self.attach,
                                 detach_fn=self.detach, cgroup_root=str(tmp_path / "cg"),
                                 state_dir=str(tmp_path / "persist/bay0"),
                                 persist=str(tmp_path / "persist"))
        self.sup._check_contained = lambda unit: None  # fake pids live in no cgroup

    def attach(self, name, path, persona):
        if self.attach_error:
            raise self.attach_error
        self.attached.append(name)
        return sv.Attachment(name, "/dev/loop9", f"bay0-pod-{name}", str(self.tmp / name))

    def detach(self, att):
        self.detached.append(att.name)

    def launch(self, spec, stdout=None, stderr=None):
        if self.launch_error:
            raise self.launch_error
        os.write(stdout, f"hello from {spec.name}\n".encode())
        self.next_pid += 1
        proc = FakeProcess(spec.name, self.next_pid, FakeCgroup(Path(spec.cgroup_parent) / spec.name))
        self.launched.append((spec, proc))
        return proc

    def events(self, name=None):
        out = [parse_line(x) for x in self.console.read_text().splitlines()]
        return [e for e in out if name is None or e.get("event") == name]


def test_start_restart_with_backoff_then_purge(tmp_path):
    data = inv.Mount("data/web", "/data", rw=True)
    w = World(tmp_path, [persona("web", mounts=[data])])
    w.sup.start(0.0)
    w.sup.tick(0.0)
    assert w.sup.units["web"].state == "running" and w.sup.healthy()
    spec, proc = w.launched[0]
    assert spec.root == str(tmp_path / "web") and spec.cgroup_parent == str(tmp_path / "cg/personas")
    assert (tmp_path / "persist/data/web").is_dir()
    assert w.events("persona.output")[0]["line"] == "hello from web"
    (tmp_path / "persist/data/web/state").write_text("scratch")

    assert w.sup.on_exit(proc.pid, 1 << 8, 5.0)  # exit 1: first failure
    assert w.sup.units["web"].state == "backoff" and not w.sup.healthy()
    assert w.sup.tick(5.5) == 6.0  # next deadline: the restart time
    assert len(w.launched) == 1
    w.sup.tick(6.0)
    assert len(w.launched) == 2 and w.attached == ["web"]  # image stays attached across restarts

    assert w.sup.on_exit(w.launched[1][1].pid, 1 << 8, 7.0)  # second failure: backoff 2 s
    assert w.events("persona.restart")[-1]["delay"] == "2"
    w.sup.tick(9.0)
    assert w.sup.on_exit(w.launched[2][1].pid, 9, 10.0)  # third: over max_restarts=2
    assert w.sup.units["web"].state == "purged" and w.detached == ["web"]
    assert not (tmp_path / "persist/data/web").exists()
    w.sup.tick(1000.0)
    assert len(w.launched) == 3  # purged for good
    assert w.events("persona.purge")[0]["reason"] == "failed 3 times in a row (max_restarts 2)"


def test_unknown_pids_are_not_claimed(tmp_path):
    w = World(tmp_path, [persona("web")])
    assert not w.sup.on_exit(4242, 0, 1.0)


def test_clean_exit_with_on_failure_stops_healthy(tmp_path):
    w = World(tmp_path, [persona("job")])
    w.sup.start(0.0)
    w.sup.tick(0.0)
    w.sup.on_exit(w.launched[0][1].pid, 0, 3.0)
    assert w.sup.units["job"].state == "stopped" and w.sup.healthy()


def test_oom_and_pids_events_are_logged(tmp_path):
    w = World(tmp_path, [persona("web")])
    w.sup.start(0.0)
    w.sup.tick(0.0)
    cgroup = w.launched[0][1].cgroup
    cgroup.counters = {"memory.events": {"oom": 1, "oom_kill": 1}, "pids.events": {"max": 3}}
    w.sup.tick(1.0)
    w.sup.tick(2.0)  # no change: no new lines
    assert w.events("persona.memory_event") == [
        {"event": "persona.memory_event", "name": "web", "oom": "1", "oom_kill": "1"}]
    assert w.events("persona.pids_event") == [{"event": "persona.pids_event", "name": "web", "max": "3"}]


def test_purge_generation_purges_once_then_starts(tmp_path):
    data = inv.Mount("cache", "/cache", rw=True)
    w = World(tmp_path, [persona("web", mounts=[data], purge=2)])
    (tmp_path / "persist/cache").mkdir()
    (tmp_path / "persist/cache/evil").symlink_to("/etc/shadow")
    w.sup.start(0.0)
    w.sup.tick(0.0)
    assert w.sup.units["web"].state == "running"
    assert (tmp_path / "persist/bay0/purged/web").read_text() == "2\n"
    assert not (tmp_path / "persist/cache/evil").is_symlink() and os.path.exists("/etc/shadow")
    assert len(w.events("persona.purge")) == 1
    w.sup.units["web"].state = "pending"  # a later start (e.g. after a restart) does not purge again
    w.sup.units["web"].process = None
    w.sup.tick(50.0)
    assert len(w.events("persona.purge")) == 1


def test_a_planted_symlink_in_place_of_a_bind_source_is_refused(tmp_path):
    w = World(tmp_path, [persona("web", mounts=[inv.Mount("data/x", "/x", rw=True)])])
    (tmp_path / "persist/data").symlink_to(tmp_path)
    w.sup.start(0.0)
    with pytest.raises(OSError):
        w.sup._prepare_binds(w.sup.units["web"])


def test_identity_mismatch_refuses_without_restart(tmp_path):
    error = sv.PersonaFault("web", "persona web: cannot attach its image: image root_hash differs")
    error.__cause__ = IdentityMismatchError("differs")
    w = World(tmp_path, [persona("web")], attach_error=error)
    w.sup.start(0.0)
    w.sup.tick(0.0)
    w.sup.tick(100.0)
    assert w.sup.units["web"].state == "refused" and not w.launched
    assert len(w.events("persona.start_failed")) == 1


def test_sandbox_failure_counts_as_a_failure(tmp_path):
    w = World(tmp_path, [persona("web")], launch_error=SpineError("exec failed", "fix it"))
    w.sup.start(0.0)
    w.sup.tick(0.0)
    assert w.sup.units["web"].state == "backoff"
    w.sup.tick(1.0)
    w.sup.tick(3.0)
    assert w.sup.units["web"].state == "purged"


def test_a_cgroup_failure_is_a_containment_failure(tmp_path):
    w = World(tmp_path, [persona("web")], launch_error=CgroupError("cannot create cgroup x: EEXIST"))
    w.sup.start(0.0)
    with pytest.raises(sv.ContainmentError, match="persona web: cannot create cgroup"):
        w.sup.tick(0.0)


def test_a_pid1_outside_its_cgroup_is_a_containment_failure(tmp_path):
    w = World(tmp_path, [persona("web")])
    w.sup.start(0.0)
    w.sup.tick(0.0)
    unit = w.sup.units["web"]
    unit.process.pid = os.getpid()  # this test process lives elsewhere
    with pytest.raises(sv.ContainmentError, match="its PID 1 is in cgroup"):
        sv.Supervisor._check_contained(w.sup, unit)


def test_shutdown_closes_and_detaches_everything(tmp_path):
    w = World(tmp_path, [persona("a"), persona("b")])
    w.sup.start(0.0)
    w.sup.tick(0.0)
    w.sup.shutdown()
    assert sorted(w.detached) == ["a", "b"]
    assert all(proc.cgroup.removed for _, proc in w.launched)


def test_verity_argv_uses_only_inventory_values():
    argv = sv.verity_argv("/dev/loop3", "bay0-pod-web", IMAGE)
    assert argv[:6] == ["veritysetup", "open", "/dev/loop3", "bay0-pod-web", "/dev/loop3", "cd" * 32]
    assert "--no-superblock" in argv and f"--hash-offset={4096 * 9}" in argv
    assert "--data-blocks=8" in argv and f"--salt={'ef' * 32}" in argv


# ---- the real loop device --------------------------------------------------------------


def test_loop_attach_is_read_only_and_clears_itself(tmp_path):
    require_root()
    image = tmp_path / "pod.img"
    payload = os.urandom(4096 * 16)
    image.write_bytes(payload)
    fd = os.open(image, os.O_RDONLY)
    try:
        device, loop_fd = sv.loop_attach(fd, "test-pod")
    finally:
        os.close(fd)
    name = os.path.basename(device)
    try:
        assert Path(f"/sys/block/{name}/ro").read_text().strip() == "1"
        assert Path(f"/sys/block/{name}/loop/backing_file").read_text().strip() == str(image)
        with open(device, "rb") as f:
            assert f.read() == payload
        with pytest.raises(OSError) as info:  # EPERM at open or at the write, by kernel version
            wfd = os.open(device, os.O_WRONLY)
            try:
                os.write(wfd, payload[:4096])
                os.fsync(wfd)
            finally:
                os.close(wfd)
        assert info.value.errno in (errno.EPERM, errno.EROFS, errno.EACCES, errno.EIO)
    finally:
        os.close(loop_fd)
    # autoclear: with the last reference gone the binding disappears
    assert not Path(f"/sys/block/{name}/loop/backing_file").exists()


def test_attach_refuses_a_swapped_image_before_any_device_work(tmp_path):
    image = tmp_path / "pod.img"
    image.write_bytes(bytes(IMAGE.size))
    calls = []
    with pytest.raises(sv.PersonaFault, match="persona web: cannot attach its image: persona web: "
                                              "image has no valid verity superblock"):
        sv.attach("web", str(image), persona("web"), run=calls.append)
    assert calls == []


def test_shells_get_a_cgroup_with_their_budget_and_members_live_below_it(tmp_path, monkeypatch):
    from bay0.sys import cgroup

    writes = []
    monkeypatch.setattr(cgroup.Cgroup, "write", lambda self, f, v: writes.append((self.path.name, f, v)))
    member = dataclasses.replace(persona("web"), shell="tier1")
    w = World(tmp_path, [member, persona("solo")],
              shells=[inv.Shell("tier1", inv.Ceilings("100000 100000", 128 << 20, 64))])
    w.sup.prepare_cgroups()
    assert (tmp_path / "cg/personas/shell.tier1").is_dir()
    assert writes == [("shell.tier1", "cpu.max", "100000 100000"),
                      ("shell.tier1", "memory.max", str(128 << 20)),
                      ("shell.tier1", "memory.swap.max", "0"), ("shell.tier1", "pids.max", "64")]
    assert (tmp_path / "cg/personas/shell.tier1/cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    w.sup.start(0.0)
    w.sup.tick(0.0)
    parents = {spec.name: spec.cgroup_parent for spec, _ in w.launched}
    assert parents == {"web": str(tmp_path / "cg/personas/shell.tier1"),
                       "solo": str(tmp_path / "cg/personas")}


def test_cgroups_that_cannot_be_prepared_are_a_containment_failure(tmp_path):
    w = World(tmp_path, [persona("web")])
    w.sup.cgroup_root = str(tmp_path / "missing/cg")
    w.sup.cgroup_parent = str(tmp_path / "missing/cg/personas")
    with pytest.raises(sv.ContainmentError, match="cannot prepare the personas' cgroups"):
        w.sup.prepare_cgroups()


def test_a_throttled_persona_gets_one_cpu_line_per_interval(tmp_path):
    w = World(tmp_path, [persona("hog")])
    w.sup.start(0.0)
    w.sup.tick(0.0)
    unit = w.sup.units["hog"]
    unit.cpu_mark = None  # forget the tick's own reading (real clock)
    w.sup._watch_cpu(unit, {"usage_usec": 0, "nr_throttled": 0}, now=100.0)
    w.sup._watch_cpu(unit, {"usage_usec": 1_000_000, "nr_throttled": 40}, now=105.0)  # too soon
    w.sup._watch_cpu(unit, {"usage_usec": 2_000_000, "nr_throttled": 80}, now=110.0)
    w.sup._watch_cpu(unit, {"usage_usec": 2_000_000, "nr_throttled": 80}, now=121.0)  # idle: quiet
    assert w.events("persona.cpu_throttled") == [
        {"event": "persona.cpu_throttled", "name": "hog", "share": "0.200", "quota": "50000/100000",
         "periods": "80"}]


def test_output_is_forwarded_whole_and_paced_never_dropped(tmp_path):
    w = World(tmp_path, [persona("web")])
    w.sup.start(0.0)
    w.sup.tick(0.0)
    unit = w.sup.units["web"]
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    unit.output = read_end
    lines = [f"line {i}" for i in range(120)] + ["x" * 1000]
    os.write(write_end, ("\n".join(lines) + "\ntail without newline").encode())
    w.sup._forward_output(unit)  # one tick: at most OUTPUT_LINES_PER_TICK lines
    assert len(w.events("persona.output")) == 1 + sv.OUTPUT_LINES_PER_TICK  # + "hello"
    os.close(write_end)  # the persona exits: everything left is logged, nothing lost
    w.sup._forward_output(unit, final=True)
    got = [e["line"] for e in w.events("persona.output")][1:]
    assert got[:120] == lines[:120]
    assert "".join(got[120:123]) == "x" * 1000 and all(len(x) <= 400 for x in got)
    assert got[-1] == "tail without newline" and unit.output == -1
