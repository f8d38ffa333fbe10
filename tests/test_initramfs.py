"""Initramfs assembly on the host: module order, ELF closure, Debian plumbing, the
/init helpers under busybox, the UKI sections and the QEMU command line."""

from __future__ import annotations

import lzma
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from bay0.errors import FormatError, NotFoundError, UsageError
from pipeline import cpio, debian, elf, kernel, qemu, uki
from pipeline.paths import PROJECT_ROOT
from pipeline.run import run, which
from tests.conftest import require_tool

BOOT_SH = PROJECT_ROOT / "initramfs" / "lib" / "boot.sh"

# --- kernel modules -------------------------------------------------------------------


def fake_kernel(root: Path) -> kernel.Kernel:
    mods = root / "lib" / "modules" / "6.1.0-t"
    (mods / "kernel" / "md").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "boot" / "vmlinuz-6.1.0-t").write_bytes(b"kernel")
    (mods / "kernel" / "md" / "dm-mod.ko").write_bytes(b"dm-mod")
    (mods / "kernel" / "md" / "dm-bufio.ko.xz").write_bytes(lzma.compress(b"dm-bufio"))
    (mods / "kernel" / "md" / "dm-verity.ko").write_bytes(b"dm-verity")
    (mods / "kernel" / "md" / "reed_solomon.ko").write_bytes(b"rs")
    (mods / "modules.dep").write_text(
        "kernel/md/dm-verity.ko: kernel/md/dm-bufio.ko.xz kernel/md/dm-mod.ko kernel/md/reed_solomon.ko\n"
        "kernel/md/dm-bufio.ko.xz: kernel/md/dm-mod.ko\n"
        "kernel/md/dm-mod.ko:\n"
        "kernel/md/reed_solomon.ko:\n"
    )
    (mods / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    return kernel.Kernel("6.1.0-t", root / "boot" / "vmlinuz-6.1.0-t", root)


def test_closure_puts_every_module_after_its_dependencies(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    names = [m.name for m in kernel.module_closure(k, ["dm-verity", "ext4", "dm_mod"])]
    assert names == ["dm_mod", "dm_bufio", "reed_solomon", "dm_verity"]  # ext4 is built in


def test_unknown_module_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no module 'virtio_nope'"):
        kernel.module_closure(fake_kernel(tmp_path), ["virtio_nope"])


def test_compressed_modules_are_installed_decompressed(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path / "k")
    order = kernel.install_modules(k, kernel.module_closure(k, ["dm-verity"]), tmp_path / "out")
    assert order[1] == "/lib/modules/6.1.0-t/kernel/md/dm-bufio.ko"
    assert (tmp_path / "out" / order[1].lstrip("/")).read_bytes() == b"dm-bufio"


def test_missing_modules_dep_says_to_run_depmod(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    (k.modules_dir / "modules.dep").unlink()
    with pytest.raises(NotFoundError, match="modules.dep"):
        kernel.module_closure(k, ["dm-mod"])


def test_stage_brings_the_libraries_of_a_dynamic_busybox(tmp_path: Path) -> None:
    # Alpine's busybox is dynamic (musl); a glibc /bin/true from the host stands in.
    from pipeline import initramfs

    require_tool("depmod")
    spec = initramfs.InitramfsSpec(kernel=fake_kernel(tmp_path / "k"), busybox=Path("/bin/true"),
                                   tool_root=Path("/"), tools={}, modules=("dm-verity",))
    root = tmp_path / "root"
    root.mkdir()
    initramfs.stage(spec, root)
    assert (root / "bin" / "busybox").read_bytes() == Path("/bin/true").read_bytes()
    assert (root / "lib" / "x86_64-linux-gnu" / "libc.so.6").is_file()
    assert (root / "etc" / "spine-init" / "modules").read_text().splitlines()[-1].endswith("dm-verity.ko")
    assert (root / "init").stat().st_mode & 0o111 and (root / "bin" / "sh").is_symlink()


def test_spec_from_a_spine_tree_takes_its_kernel_modules_and_applet_links(tmp_path: Path) -> None:
    from pipeline import initramfs

    tree = tmp_path / "tree"
    fake_kernel(tree)
    (tree / "bin").mkdir()
    (tree / "bin" / "busybox").write_bytes(b"\x7fELF" + bytes(60))  # not runnable here
    (tree / "bin" / "sh").symlink_to("/bin/busybox")
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "nproc").symlink_to("/bin/busybox")
    spec = initramfs.spec_from_root(tree)
    assert set(spec.modules) == {"dm_mod", "dm_bufio", "dm_verity", "reed_solomon"}
    assert spec.kernel.version == "6.1.0-t" and spec.tool_root == tree
    # The busybox cannot run on this host: the tree's own applet links are taken.
    assert {"bin/sh", "usr/bin/nproc", "usr/bin/cut", "sbin/switch_root"} <= set(initramfs._applets(spec))


def test_dynamic_busybox_outside_the_tool_root_is_refused(tmp_path: Path) -> None:
    from pipeline import initramfs

    spec = initramfs.InitramfsSpec(kernel=fake_kernel(tmp_path / "k"), busybox=Path("/bin/true"),
                                   tool_root=tmp_path, tools={}, modules=())
    with pytest.raises(NotFoundError, match="not inside the tool root"):
        initramfs.stage(spec, tmp_path / "root")


# --- ELF closure -----------------------------------------------------------------------


def test_elf_reads_interpreter_and_needed_of_a_host_binary() -> None:
    info = elf.parse(Path("/bin/ls").read_bytes(), name="ls")
    assert info is not None and info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in info.needed


def test_elf_closure_follows_libraries_inside_the_root() -> None:
    files = elf.closure(Path("/"), ["/bin/ls"])
    assert files[0] == "/bin/ls"
    assert any(f.endswith("/libc.so.6") for f in files)
    assert "/lib64/ld-linux-x86-64.so.2" in files


def test_elf_rejects_foreign_and_truncated_files() -> None:
    assert elf.parse(b"#!/bin/sh\n") is None
    with pytest.raises(FormatError, match="64-bit"):
        elf.parse(b"\x7fELF\x01\x01" + b"\0" * 60)
    with pytest.raises(FormatError, match="truncated"):
        elf.parse(Path("/bin/ls").read_bytes()[:100])


def test_musl_programs_never_get_glibc_libraries(alpine, tmp_path: Path) -> None:
    import tarfile

    from tests.e2e.vmdisk import MINIROOTFS

    with tarfile.open(alpine / MINIROOTFS) as tar:
        tar.extractall(tmp_path, filter="tar")
    info = elf.parse((tmp_path / "sbin" / "apk").read_bytes())
    assert info is not None and "ld-musl" in (info.interpreter or "")
    glibc_dir = tmp_path / "lib" / "x86_64-linux-gnu"
    glibc_dir.mkdir(parents=True)
    for soname in info.needed:  # a glibc library of the same soname, found first by glibc's order
        (glibc_dir / soname).write_bytes(b"\x7fELF\x02\x01" + bytes(58))
    files = elf.closure(tmp_path, ["/sbin/apk"])
    assert not [f for f in files if f.startswith("/lib/x86_64-linux-gnu/")]
    assert any(f.startswith("/lib/ld-musl") for f in files)


def test_missing_library_is_named(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ls").write_bytes(Path("/bin/ls").read_bytes())
    with pytest.raises(NotFoundError, match="needs libselinux.so.1|needs libc.so.6"):
        elf.closure(tmp_path, ["/bin/ls"])


def test_absolute_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "real.so").write_bytes(b"x")
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64" / "ld.so").symlink_to("/lib/real.so")
    assert elf.resolve_in_root(tmp_path, "/lib64/ld.so") == tmp_path / "lib" / "real.so"


# --- Debian plumbing --------------------------------------------------------------------

DEPENDS = """python3-cryptography
  Depends: python3
  Depends: <python3-cffi-backend-api-min>
    python3-cffi-backend
  Depends: <python3:any>
    python3
tzdata
 |Depends: debconf
  Depends: <debconf-2.0>
    cdebconf
    debconf
libfoo
  Depends: libc6:any
"""


def test_depends_take_the_first_alternative_and_a_provider_for_virtuals() -> None:
    deps = debian._parse_depends(DEPENDS)
    assert deps["python3-cryptography"] == ["python3", "python3-cffi-backend", "python3"]
    assert deps["tzdata"] == ["debconf"]
    assert deps["libfoo"] == ["libc6"]


def test_unknown_debian_package_is_not_found() -> None:
    require_tool("apt-cache")
    with pytest.raises(NotFoundError, match="no-such-package-spine"):
        debian.candidates(["no-such-package-spine"])


def test_extract_refuses_a_missing_deb(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        debian.extract([tmp_path / "missing.deb"], tmp_path / "out")


@pytest.mark.slow
def test_fetch_records_digests_and_replaces_a_tampered_cache_entry(tmp_path: Path) -> None:
    require_tool("apt-get", "apt-cache")
    (deb,) = debian.fetch_debs(["busybox-static"])
    assert debian.recorded_sha256(deb) == debian.sha256_file(deb) == debian.candidates(["busybox-static"])[0].sha256
    data = bytearray(deb.read_bytes())
    data[5000] ^= 0xFF
    deb.write_bytes(bytes(data))
    (again,) = debian.fetch_debs(["busybox-static"])
    assert again == deb and debian.sha256_file(again) == debian.recorded_sha256(again)
    debian.extract([again], tmp_path / "x")
    assert (tmp_path / "x" / "bin" / "busybox").is_file()


# --- /init helpers under busybox --------------------------------------------------------


@pytest.fixture(scope="module")
def applets(tmp_path_factory) -> Path:
    require_tool("busybox")
    busybox = Path(which("busybox")).resolve()
    bindir = tmp_path_factory.mktemp("applets")
    for name in run([busybox, "--list"]).stdout.decode().split():
        (bindir / name).symlink_to(busybox)
    return bindir


def sh(applets: Path, script: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return run([applets / "sh", "-c", f". {BOOT_SH}\n{script}"], check=False,
               env={"PATH": str(applets), **env})


def fake_sysfs(root: Path) -> Path:
    """Two disks: vda holds the Spine layout, vdb has a stray 'persist' partition."""
    devices = root / "devices"
    for disk, parts in {"vda": ["spine_a", "spine_b", "spine_state", "persist"], "vdb": ["persist"]}.items():
        for i, name in enumerate(parts, start=2):
            node = devices / disk / f"{disk}{i}"
            node.mkdir(parents=True)
            (node / "uevent").write_text(f"MAJOR=254\nMINOR={i}\nDEVNAME={disk}{i}\nDEVTYPE=partition\nPARTNAME={name}\n")
            link = root / "class" / "block" / f"{disk}{i}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(node)
    return root


def test_find_part_by_gpt_name_on_the_boot_disk(applets: Path, tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path / "sys")
    proc = sh(applets, "find_part spine_state && part_disk vda4 && find_part persist vda && find_part persist vdb",
              SPINE_SYSFS=str(sysfs))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == ["/dev/vda4", "vda", "/dev/vda5", "/dev/vdb2"]


def test_find_part_fails_on_duplicates_and_absence(applets: Path, tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path / "sys")
    assert sh(applets, "find_part persist", SPINE_SYSFS=str(sysfs)).returncode != 0
    assert sh(applets, "find_part spine_c", SPINE_SYSFS=str(sysfs)).returncode != 0


def test_verity_args_come_from_the_record_not_the_disk(applets: Path) -> None:
    proc = sh(applets, "BC_B_data_size=8192 BC_B_hash_offset=12288 BC_B_salt=abcd; verity_args B")
    words = proc.stdout.decode().split()
    assert "--no-superblock" in words and "--data-blocks=2" in words
    assert "--hash-offset=16384" in words and "--salt=abcd" in words


def test_blank_luks_and_ext4_probes(applets: Path, tmp_path: Path) -> None:
    require_tool("mkfs.ext4")
    blank, luks, ext4 = tmp_path / "blank", tmp_path / "luks", tmp_path / "ext4"
    blank.write_bytes(bytes(65536))
    luks.write_bytes(b"LUKS\xba\xbe\x00\x02" + bytes(65528))
    ext4.write_bytes(bytes(4 * 1024 * 1024))
    run(["mkfs.ext4", "-q", "-F", str(ext4)])
    script = (f"is_blank {blank} 65536 && ! is_blank {luks} 65536 && is_luks {luks} && "
              f"! is_luks {blank} && has_ext4 {ext4} && ! has_ext4 {blank} && echo ok")
    proc = sh(applets, script)
    assert proc.stdout.decode().strip() == "ok", proc.stderr
    # near misses: one byte off, and a NUL where a shell might drop it and close the gap
    for name, head in {"off": b"LUKS\xba\xbf", "nul": b"LUKS\x00\xba\xbe", "short": b"LUKS"}.items():
        (tmp_path / name).write_bytes(head + (bytes(8) if name != "short" else b""))
        assert sh(applets, f"is_luks {tmp_path / name}").returncode != 0, name
    near = bytearray(bytes(4096))
    near[1080:1082] = b"S\xee"
    (tmp_path / "near-ext4").write_bytes(bytes(near))
    near[1080:1082] = b"\x00S"
    (tmp_path / "nul-ext4").write_bytes(bytes(near))
    for name in ("near-ext4", "nul-ext4"):
        assert sh(applets, f"has_ext4 {tmp_path / name}").returncode != 0, name


def test_prefetch_reads_only_plain_relative_paths_of_the_list(applets: Path, tmp_path: Path) -> None:
    root, log = tmp_path / "sysroot", tmp_path / "cat.log"
    (root / "etc/spine").mkdir(parents=True)
    (root / "etc/spine/prefetch").write_text(
        "usr/bin/python3.11\n/etc/shadow\n../escape\nusr/../etc/x\nhas space\n\n"
        "lib/x86_64-linux-gnu/libc.so.6\nusr/lib/bay0/bay0/__pycache__/main.cpython-311.pyc\n")
    fake_cat = f'cat() {{ pwd > {log}; echo "$@" >> {log}; }}\n'  # a function wins over applets
    proc = sh(applets, fake_cat + f"prefetch {root} && echo ok")
    assert proc.stdout.decode().splitlines() == ["spine-init: prefetch: 3 files read ahead", "ok"], proc.stderr
    cwd, args = log.read_text().splitlines()
    assert cwd == str(root)
    assert args.split() == ["usr/bin/python3.11", "lib/x86_64-linux-gnu/libc.so.6",
                            "usr/lib/bay0/bay0/__pycache__/main.cpython-311.pyc"]
    log.unlink()
    assert sh(applets, fake_cat + f"prefetch {tmp_path / 'none'} && echo ok").stdout.decode().strip() == "ok"
    assert not log.exists()  # no list: nothing read, not a failure


def test_luks_label_is_read_from_the_header(applets: Path, tmp_path: Path) -> None:
    require_tool("cryptsetup")
    volume, key = tmp_path / "persist", tmp_path / "key"
    volume.write_bytes(bytes(20 * 1024 * 1024))
    key.write_bytes(os.urandom(512))
    run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--label", "spine-persist-new",
         "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", str(key), str(volume)])
    proc = sh(applets, f"is_luks {volume} && luks_label {volume}")
    assert proc.stdout.decode() == "spine-persist-new"


def test_empty_salt_is_spelled_dash(applets: Path) -> None:
    proc = sh(applets, "BC_A_data_size=4096 BC_A_hash_offset=4096 BC_A_salt=; verity_args A")
    assert "--salt=-" in proc.stdout.decode().split()


def test_init_script_parses_under_busybox(applets: Path) -> None:
    for script in (PROJECT_ROOT / "initramfs" / "init", BOOT_SH):
        proc = run([applets / "sh", "-n", script], check=False)
        assert proc.returncode == 0, proc.stderr


def test_init_never_offers_a_shell() -> None:
    # Static on purpose: running /init on the host could power the host off.
    text = (PROJECT_ROOT / "initramfs" / "init").read_text()
    assert "trap 'halt_now" in text and "poweroff -f" in text
    code = [line.split("#")[0] for line in text.splitlines()]
    for line in code:
        assert not re.search(r"(^|[;&|(]|exec)\s*(/bin/)?(sh|ash|bash|getty|login)\b", line), line
        assert not re.search(r"(^|[;&|(])\s*read\s", line), line


# --- UKI and ESP ----------------------------------------------------------------------


def section_table(path: Path) -> dict[str, tuple[int, int]]:
    out = run(["objdump", "-h", str(path)]).stdout.decode().splitlines()
    table = {}
    for line in out:
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit():
            table[parts[1]] = (int(parts[3], 16), int(parts[2], 16))
    return table


def test_uki_sections_follow_the_stub_without_overlap(tmp_path: Path) -> None:
    require_tool("objcopy", "objdump")
    kern, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kern.write_bytes(os.urandom(300_000))
    initrd.write_bytes(os.urandom(123_457))
    out = uki.build_uki(kern, initrd, "console=ttyS0 quiet", tmp_path / "uki.efi", version="9")
    table = section_table(out)
    added = [table[name] for name in (".osrel", ".cmdline", ".linux", ".initrd")]
    assert added[2][1] == 300_000 and added[3][1] == 123_457
    stub_end = max(vma + size for name, (vma, size) in table.items() if not name.startswith((".osrel", ".cmdline", ".linux", ".initrd")))
    previous_end = stub_end
    for vma, size in added:
        assert vma >= previous_end and vma % uki.stub_layout(uki.find_stub()).alignment == 0
        previous_end = vma + size
    assert out.read_bytes().count(b"console=ttyS0 quiet") == 1


# --- QEMU command line -------------------------------------------------------------------


def test_qemu_argv_direct_boot_has_watchdog_and_no_reboot(tmp_path: Path) -> None:
    require_tool("qemu-system-x86_64")
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(4096))
    argv = qemu.argv_for(qemu.VmConfig(disk=disk, kernel=tmp_path / "k", initrd=tmp_path / "i"), tmp_path, None)
    joined = " ".join(argv)
    assert "-no-reboot" in argv and "i6300esb" in argv and "watchdog=reset" in argv
    assert f"file={disk},format=raw,if=virtio" in joined and "-kernel" in argv and "-initrd" in argv
    assert argv[argv.index("-smp") + 1] == "2"  # /init runs persist beside the root: two cores


def test_init_unlocks_persist_beside_the_slot_and_moves_it_under_the_root() -> None:
    init = (PROJECT_ROOT / "initramfs" / "init").read_text()
    main = init[init.index('say "starting'):]
    job, rest = main.index("setup_persist"), main.index("boot_slot\n")
    assert main.rindex("&", 0, rest) > job  # the persist job is started before boot_slot...
    assert "wait \"$PERSIST_JOB\"" in main[rest:]  # ...and waited for before the hand-over
    assert main.index('mount --move "$PERSIST_AT" /sysroot/persist') < main.index("hand_over")
    assert "trap - EXIT INT TERM HUP QUIT" in main[:rest]  # only the main shell powers off


def test_qemu_needs_something_to_boot(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        qemu.argv_for(qemu.VmConfig(), tmp_path, None)
    with pytest.raises(NotFoundError):
        qemu.argv_for(qemu.VmConfig(disk=tmp_path / "missing", kernel=tmp_path / "k"), tmp_path, None)


# --- the real initramfs (Debian packages; cached across sessions) -----------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    require_tool("apt-get", "dpkg-deb", "depmod")
    from pipeline import initramfs

    spec = initramfs.test_spec()
    out = tmp_path_factory.mktemp("initramfs")
    first = initramfs.build_initramfs(spec, out / "a.cpio", compress="none")
    second = initramfs.build_initramfs(spec, out / "b.cpio", compress="none")
    return spec, first.read_bytes(), second.read_bytes()


@pytest.mark.slow
def test_initramfs_is_reproducible(built) -> None:
    _spec, first, second = built
    assert first == second


@pytest.mark.slow
def test_initramfs_contents(built, tmp_path: Path) -> None:
    spec, data, _ = built
    entries = {e.name: e for e in cpio.unpack(data)}
    assert stat.S_IMODE(entries["init"].mode) == 0o755
    assert entries["dev/console"].rdev == (5, 1) and stat.S_ISCHR(entries["dev/console"].mode)
    assert entries["bin/sh"].target.endswith("busybox")
    for tool in ("sbin/veritysetup", "sbin/cryptsetup", "sbin/mkfs.ext4", "lib/spine/bootctl.sh"):
        assert tool in entries
    order = entries["etc/spine-init/modules"].data.decode().split()
    loaded = [kernel.canonical(p) for p in order]
    assert {"dm_verity", "dm_crypt", "squashfs", "virtio_blk", "ext4", "i6300esb"} <= set(loaded)
    table = kernel.read_modules_dep(spec.kernel)
    for position, name in enumerate(loaded):
        for dep in table[name][1]:
            assert loaded.index(kernel.canonical(dep)) < position, f"{dep} after {name}"
    # Every library every tool needs is inside the archive (no host fallback at boot).
    root = tmp_path / "root"
    for e in entries.values():
        path = root / e.name
        if stat.S_ISDIR(e.mode):
            path.mkdir(parents=True, exist_ok=True)
        elif stat.S_ISLNK(e.mode):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(e.target)
        elif stat.S_ISREG(e.mode):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(e.data)
    elf.closure(root, ["/sbin/veritysetup", "/sbin/cryptsetup", "/sbin/mkfs.ext4"])


def test_watchdog_drivers_are_picked_from_the_module_list(applets: Path, tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    modules.write_text("/lib/modules/6.1/kernel/drivers/virtio/virtio_pci.ko\n"
                       "/lib/modules/6.1/kernel/drivers/watchdog/i6300esb.ko\n"
                       "/lib/modules/6.1/kernel/drivers/watchdog/iTCO_wdt.ko\n"
                       "/lib/modules/6.1/kernel/drivers/md/dm-verity.ko\n")
    proc = sh(applets, f"watchdog_modules {modules}")
    assert proc.stdout.decode().split() == ["i6300esb", "iTCO_wdt"]


def test_arm_watchdog_without_a_device_says_so_and_the_boot_goes_on(applets: Path, tmp_path: Path) -> None:
    proc = sh(applets, 'arm_watchdog 120; echo "rc=$? job=$WATCHDOG_JOB"; watchdog_release KILL; watchdog_release TERM',
              SPINE_DEV=str(tmp_path))
    assert proc.stdout.decode().splitlines() == ["spine-init: watchdog: no device", "rc=1 job="]


@pytest.mark.parametrize(("stop", "written"), [("watchdog_release KILL", b"\0"), ("watchdog_release TERM", b"\0V")])
def test_the_armed_watchdog_is_pinged_once_then_handed_over_counting_or_disarmed(
        applets: Path, tmp_path: Path, stop: str, written: bytes) -> None:
    # A pty stands in for the device (a character device whose writes the test reads;
    # the ioctls fail with a warning): the job holds it with the asked timeout and ping
    # interval and pings once (a NUL byte). The handover must kill it without the magic
    # "V" (the watchdog keeps counting for bay0); disarming must write the "V".
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    (tmp_path / "watchdog0").symlink_to(os.ttyname(slave))
    script = ('arm_watchdog 7; pid=$WATCHDOG_JOB; sleep 0.3; tr "\\0" " " </proc/$pid/cmdline; echo; '
              f'{stop}; kill -0 $pid 2>/dev/null && echo alive || echo gone; echo "job=$WATCHDOG_JOB"')
    try:
        proc = sh(applets, script, SPINE_DEV=str(tmp_path))
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 64)
            except OSError:  # EIO: every holder of the slave has closed it
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    out = proc.stdout.decode().splitlines()
    assert out[0] == "spine-init: watchdog armed: watchdog0 resets the machine in 7 s unless bay0 takes it over"
    assert out[1].split() == ["watchdog", "-F", "-T", "7", "-t", "14", f"{tmp_path}/watchdog0"]
    assert out[2:] == ["gone", "job="], (out, proc.stderr)
    assert seen == written
