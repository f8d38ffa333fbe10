"""The busybox reader/writer (initramfs/lib/bootctl.sh) against the Python format code.

Every script runs under busybox sh with PATH holding only busybox applet links, so no
GNU tool can stand in for an applet the initramfs lacks.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bay0.errors import FormatError
from bay0.formats import bootctl as bcf
from bay0.formats.bootctl import BootControl
from pipeline.paths import PROJECT_ROOT
from pipeline.run import run, which
from tests.conftest import require_tool
from tests.test_bootctl import BAD_RECORDS, GOOD, full_slots, slot, state

LIB = PROJECT_ROOT / "initramfs" / "lib" / "bootctl.sh"
E = bcf.EMPTY_SLOT
KEY = os.urandom(512)


class Shell:
    """busybox sh with PATH = a directory of busybox applet links and nothing else.

    ``host``: Debian's busybox-static. ``alpine``: the busybox of the Alpine 3.19
    minirootfs (the one the initramfs ships), run in a bubblewrap sandbox whose ``/w``
    is the test's directory.
    """

    def __init__(self, applets: Path, root: Path | None = None) -> None:
        self.applets, self.root = applets, root

    def inside(self, path: Path, workdir: Path) -> str:
        return str(path) if self.root is None else "/w/" + str(path.relative_to(workdir))

    def applet_dir(self) -> str:
        return str(self.applets if self.root is None else "/" + self.applets.name)

    def run(self, script: str, workdir: Path):
        if self.root is None:
            argv = [self.applets / "sh", "-c", f". {LIB}\n{script}"]
            env = {"PATH": str(self.applets), "BC_TMP": str(workdir / "bct")}
        else:
            argv = ["bwrap", "--bind", self.root, "/", "--bind", workdir, "/w",
                    "--ro-bind", LIB.parent, "/spine-lib", "--dev", "/dev", "--proc", "/proc",
                    "--clearenv", "--setenv", "PATH", self.applet_dir(),
                    "--setenv", "BC_TMP", "/w/bct", f"{self.applet_dir()}/sh", "-c",
                    f". /spine-lib/{LIB.name}\n{script}"]
            env = {}
        proc = run(argv, env=env, check=False)
        return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def _link_applets(bindir: Path, names: list[str], target: str) -> Path:
    bindir.mkdir()
    for name in names:
        (bindir / name).symlink_to(target)
    return bindir


@pytest.fixture(scope="module", params=["host", "alpine"])
def shell(request, tmp_path_factory) -> Shell:
    if request.param == "host":
        require_tool("busybox")
        busybox = Path(which("busybox")).resolve()
        names = run([busybox, "--list"]).stdout.decode().split()
        return Shell(_link_applets(tmp_path_factory.mktemp("host") / "applets", names,
                                   str(busybox)))
    require_tool("bwrap")
    tarball = request.getfixturevalue("alpine") / "minirootfs/alpine-minirootfs-3.19.4-x86_64.tar.gz"
    root = tmp_path_factory.mktemp("alpine")
    run(["tar", "-xzf", tarball, "-C", root])
    for mount_point in ("w", "spine-lib"):
        (root / mount_point).mkdir()
    names = run(["bwrap", "--ro-bind", root, "/", "/bin/busybox", "--list"]).stdout.decode().split()
    banner = run(["bwrap", "--ro-bind", root, "/", "/bin/busybox"]).stdout.decode()
    assert banner.startswith("BusyBox v1.36.1"), "not the initramfs's busybox"
    return Shell(_link_applets(root / "applets", names, "/bin/busybox"), root)


class Disk:
    """A spine_state image file in the test's directory, and the shell to run against it."""

    def __init__(self, shell: Shell, workdir: Path) -> None:
        self.shell, self.workdir = shell, workdir
        self.path = workdir / "state.img"
        self.dev = shell.inside(self.path, workdir)

    def inside(self, path: Path) -> str:
        return self.shell.inside(path, self.workdir)

    def write(self, region: bytes, key: bytes = KEY) -> bytes:
        data = region + bytes(bcf.KEYFILE_OFFSET - len(region)) + key + bytes(4096)
        self.path.write_bytes(data)
        return data

    def sh(self, script: str):
        return self.shell.run(script, self.workdir)

    def bytes(self) -> bytes:
        return self.path.read_bytes()


@pytest.fixture
def disk(shell: Shell, tmp_path: Path) -> Disk:
    return Disk(shell, tmp_path)


def older_and_newer(bc: BootControl, newer_copy: int) -> bytes:
    records = [bcf.encode(replace(bc, seq=0, last_boot=None)), bcf.encode(replace(bc, seq=5))]
    return records[0] + records[1] if newer_copy == 1 else records[1] + records[0]


DUMP = 'bc_load "$DEV" || exit 9\necho "copy=$BC_COPY seq=$BC_SEQ last=$BC_LAST"\n' + "".join(
    f'echo "{s}.{k}=$(bc_get {s} {k})"\n' for s in "AB" for k in bcf.SLOT_KEYS
) + 'echo "order=$(bc_choose)"\n'


def expected_dump(bc: BootControl, copy: int) -> str:
    lines = [f"copy={copy} seq={bc.seq} last={bc.last_boot or '-'}"]
    body = bcf.encode(bc).decode().split("\n")[3:19]
    return "\n".join([*lines, *body, "order=" + " ".join(bcf.boot_order(bc))]) + "\n"


CHOICES = [
    state(E, E),
    state(slot(2, 3), E),
    state(E, slot(1, 0, True)),
    state(slot(1, 0, True), slot(2, 3), last="A"),
    state(slot(2, 0, True), slot(1, 3)),
    state(slot(1, 1), slot(1, 1)),
    state(slot(2, 0, False), slot(1, 0, True), last="B"),
    state(slot(0, 3, True), slot(1, 1)),
    GOOD,
]


@pytest.mark.parametrize("newer_copy", [0, 1])
@pytest.mark.parametrize("bc", CHOICES, ids=range(len(CHOICES)))
def test_shell_reads_what_python_wrote_and_chooses_the_same_order(disk, bc, newer_copy) -> None:
    region = older_and_newer(bc, newer_copy)
    disk.write(region)
    code, out, err = disk.sh(DUMP.replace("$DEV", disk.dev))
    assert code == 0, err
    current, copy = bcf.read_region(region)
    assert copy == newer_copy
    assert out == expected_dump(current, copy)


def test_ties_and_single_valid_copies_pick_the_same_copy_as_python(disk) -> None:
    a, b = bcf.encode(replace(GOOD, last_boot="A")), bcf.encode(GOOD)
    for region in (a + b, b + a, bytes(4096) + a, BAD_RECORDS["bit flip in body"] + b):
        disk.write(region)
        code, out, err = disk.sh(DUMP.replace("$DEV", disk.dev))
        assert code == 0, err
        assert out == expected_dump(*bcf.read_region(region))


def _python_write(region: bytes, ops: list[tuple[str, str]]) -> bytes:
    for op, name in ops:
        current, _ = bcf.read_region(region)
        offset, record = bcf.plan_write(region, getattr(bcf, op)(current, name))
        region = region[:offset] + record + region[offset + 4096:]
    return region


def _shell_script(dev: str, ops: list[tuple[str, str]]) -> str:
    steps = "".join(f"bc_{op} {name} || exit 3\nbc_save {dev} || exit 4\n" for op, name in ops)
    return f"bc_load {dev} || exit 2\n{steps}"


TRANSITIONS = [
    (state(slot(2, 3), slot(1, 0, True)), [("consume_try", "A")]),
    (state(slot(2, 1), E), [("consume_try", "A")]),
    (state(slot(1, 0, True), slot(2, 0, True), last="A"), [("consume_try", "B")]),
    (GOOD, [("mark_bad", "A")]),
    (GOOD, [("mark_bad", "B"), ("consume_try", "A"), ("consume_try", "A")]),
    (state(slot(2, 1), slot(1, 0, True)), [("consume_try", "A"), ("mark_bad", "A"),
                                           ("consume_try", "B")]),
    # a good slot spends tries too, down to 0, and stays bootable
    (state(slot(2, 2, True), slot(1, 0, True), last="A"), [("consume_try", "A")] * 3),
]


@pytest.mark.parametrize("bc, name", [
    (state(slot(2, 3), E), "A"), (state(slot(2, 1), E), "A"),
    (state(slot(1, 3, True), slot(2, 2)), "B"), (state(slot(1, 3, True), slot(2, 1)), "B"),
    (state(slot(2, 2, True), E), "A"), (state(slot(2, 1, True), E), "A"),
    (state(slot(2, 0, True), E), "A"),
])
def test_last_chance_agrees_with_python(disk, bc, name) -> None:
    disk.write(bcf.initial_region(bc))
    code, out, err = disk.sh(f"bc_load {disk.dev} && bc_consume_try {name} || exit 3\n"
                             f"if bc_last_chance {name}; then echo last; else echo more; fi")
    assert code == 0, err
    expected = bcf.last_chance(bcf.consume_try(bc, name), name)
    assert out.strip() == ("last" if expected else "more")


@pytest.mark.parametrize("newer_copy", [0, 1])
@pytest.mark.parametrize("bc, ops", TRANSITIONS, ids=range(len(TRANSITIONS)))
def test_shell_writes_the_same_bytes_as_python(disk, bc, ops, newer_copy) -> None:
    region = older_and_newer(bc, newer_copy)
    before = disk.write(region)
    code, _, err = disk.sh(_shell_script(disk.dev, ops))
    assert code == 0, err
    expected = _python_write(region, ops)
    assert disk.bytes() == expected + before[bcf.REGION_SIZE:]
    current = bcf.read_region(region)[0]
    for op, name in ops:
        current = getattr(bcf, op)(current, name)
    assert bcf.read_region(disk.bytes())[0] == replace(current, seq=5 + len(ops))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.tuples(st.one_of(st.just(E), full_slots()), st.one_of(st.just(E), full_slots())),
       st.sampled_from([None, "A", "B"]), st.integers(0, 10**17),
       st.lists(st.tuples(st.sampled_from(["consume_try", "mark_bad"]), st.sampled_from("AB")),
                min_size=1, max_size=3))
def test_random_states_and_transitions_agree(disk, slots, last, seq, ops) -> None:
    bc = BootControl(seq, last, slots)
    region = bcf.initial_region(bc)
    disk.write(region)
    code, _, err = disk.sh(_shell_script(disk.dev, ops))
    try:
        expected = _python_write(region, ops)
    except bcf.SlotStateError:
        assert code == 3, err  # both refuse the same transition
        assert err.startswith("bootctl: ")
        return
    assert code == 0, err
    assert disk.bytes()[: bcf.REGION_SIZE] == expected


@pytest.mark.parametrize("script, message", [
    ("bc_consume_try A", "bootctl: slot A is not bootable"),
    ("bc_consume_try C", "bootctl: unknown slot 'C': slots are A and B"),
    ("bc_mark_bad B", "bootctl: cannot mark slot B bad: it is empty"),
    ("bc_get A colour", "bootctl: unknown key 'colour'"),
])
def test_shell_refuses_impossible_requests_and_writes_nothing(disk, script, message) -> None:
    before = disk.write(bcf.initial_region(state(slot(2, 0), E)))
    code, _, err = disk.sh(f"bc_load {disk.dev} && {script} && bc_save {disk.dev}")
    assert code != 0 and err.strip() == message
    assert disk.bytes() == before


@pytest.mark.parametrize("name", sorted(n for n, r in BAD_RECORDS.items() if len(r) == 4096))
def test_shell_rejects_every_record_python_rejects(disk, name) -> None:
    record = BAD_RECORDS[name]
    with pytest.raises(FormatError):
        bcf.decode(record)
    disk.write(bytes(4096) + record)
    code, _, err = disk.sh(f"bc_load {disk.dev}")
    assert code == 1 and "no valid boot-control record" in err


def test_torn_shell_writes_are_rejected_by_both_and_the_old_state_wins(disk) -> None:
    old = state(slot(2, 3), slot(1, 0, True), seq=41)
    region = bcf.initial_region(old)
    disk.write(region)
    code, _, err = disk.sh(_shell_script(disk.dev, [("consume_try", "A")]))
    assert code == 0, err
    written = disk.bytes()[4096:8192]  # the shell overwrote copy 1 (the tie loser)
    assert written == bcf.plan_write(region, bcf.consume_try(old, "A"))[1]
    rng = random.Random(5)
    cuts = [*range(512, 4096, 512), *(rng.randrange(1, 4096) for _ in range(4))]
    for cut in cuts:
        torn = written[:cut] + region[4096 + cut:8192]
        if torn == written:
            continue  # the tail of the new record equals the old padding
        with pytest.raises(FormatError):
            bcf.decode(torn)
        disk.write(region[:4096] + torn)
        assert bcf.read_region(disk.bytes()) == (old, 0)
        code, out, err = disk.sh(DUMP.replace("$DEV", disk.dev))
        assert code == 0, err
        assert out == expected_dump(old, 0)
        disk.write(torn + torn)
        code, _, err = disk.sh(f"bc_load {disk.dev}")
        assert code == 1 and "no valid boot-control record" in err


def test_save_alternates_copies_and_never_touches_the_keyfile(disk) -> None:
    before = disk.write(bcf.initial_region(GOOD))
    code, out, err = disk.sh(f"bc_load {disk.dev}\n" + "bc_consume_try A; bc_save "
                             f"{disk.dev}; echo $BC_COPY $BC_SEQ\n" * 3)
    assert code == 0, err
    assert out.split("\n")[:3] == ["1 8", "0 9", "1 10"]
    after = disk.bytes()
    assert after[bcf.REGION_SIZE:] == before[bcf.REGION_SIZE:]
    assert bcf.read_region(after)[0].slot("A").tries_left == 0


def test_keyfile(disk, tmp_path) -> None:
    disk.write(bcf.initial_region(GOOD))
    out = tmp_path / "key"
    code, _, err = disk.sh(f"bc_keyfile {disk.dev} {disk.inside(out)}")
    assert code == 0, err
    assert out.read_bytes() == KEY and (out.stat().st_mode & 0o777) == 0o600
    disk.write(bcf.initial_region(GOOD), key=bytes(512))
    code, _, err = disk.sh(f"bc_keyfile {disk.dev} {disk.inside(out)}")
    assert code == 1 and err.strip() == f"bootctl: no persist keyfile in {disk.dev}"


def test_the_library_uses_busybox_applets_only(disk) -> None:
    tools = "dd head tail tr wc sha256sum awk cmp mkdir sync mv".split()
    code, out, err = disk.sh(f"for t in {' '.join(tools)}; do command -v $t; done")
    assert code == 0, err
    # busybox sh runs its own applets in-process (bare name) or through the links.
    assert out.split() in (tools, [f"{disk.shell.applet_dir()}/{t}" for t in tools])
    assert all((disk.shell.applets / t).is_symlink() for t in tools)

