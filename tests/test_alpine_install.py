"""Installing fixture packages into a root; apk-tools from the minirootfs is the judge."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from bay0.errors import CorruptionError, ExistsError
from pipeline.alpine import PackageConflictError, db, install
from pipeline.alpine.apk import VerifiedApk
from pipeline.alpine.install import _Installer
from pipeline.alpine.package import Package
from pipeline.run import run
from tests.alpine_support import exec_dir, iso_repos, minirootfs, stanzas, tar_bytes  # noqa: F401
from tests.conftest import require_root

WORLD = ["alpine-baselayout", "busybox", "musl", "apk-tools", "alpine-keys", "libc-utils",
         "tzdata", "chrony", "busybox-suid"]
EPOCH = 1700000000


def snapshot(root: Path) -> list[tuple]:
    """Everything reproducibility cares about, for every path in the tree."""
    result = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            st = path.lstat()
            content = os.readlink(path) if path.is_symlink() else (
                hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else "")
            result.append((str(path.relative_to(root)), st.st_mode, st.st_uid, st.st_gid,
                           int(st.st_mtime), content))
    return result


@pytest.fixture(scope="module")
def installed(iso_repos, tmp_path_factory):  # noqa: F811
    require_root()
    with exec_dir(tmp_path_factory, "target") as base:
        root = base / "root"
        packages = iso_repos.resolve(WORLD)
        result = install(packages, root, world=WORLD, epoch=EPOCH)
        BEFORE_APK_RAN[root] = snapshot(root)    # apk itself writes var/cache/apk later
        yield root, result, packages


BEFORE_APK_RAN: dict[Path, list[tuple]] = {}


def apk(root: Path, *args: str) -> str:
    return run(["chroot", str(root), "/sbin/apk", *args]).stdout.decode()


def test_real_apk_lists_exactly_what_we_installed(installed):
    root, result, packages = installed
    listed = sorted(apk(root, "info", "-v").split())
    assert listed == sorted(f"{p.name}-{p.version}" for p in packages)
    assert [p.checksum for p in result.packages] == [p.checksum for p in packages]


def test_real_apk_audit_finds_nothing_wrong(installed):
    root, _result, _packages = installed
    report = apk(root, "audit", "--system", "--check-permissions")
    assert report == "", report


def test_real_apk_sees_the_file_lists(installed):
    root, _result, _packages = installed
    files = apk(root, "info", "-L", "busybox").split()
    assert "bin/busybox" in files and "etc/busybox-paths.d/busybox" in files
    assert apk(root, "info", "--who-owns", "/lib/ld-musl-x86_64.so.1").strip().endswith(
        "musl-1.2.4_git20230717-r4")


def test_db_stanzas_equal_the_official_minirootfs(installed, minirootfs):  # noqa: F811
    """Packages of the same version must produce byte-identical installed-db stanzas."""
    root, _result, _packages = installed
    ours = stanzas((root / "lib/apk/db/installed").read_text())
    official = stanzas((minirootfs / "lib/apk/db/installed").read_text())
    same_version = [n for n in ours if n in official
                    and ours[n].split("\nV:")[1].split("\n")[0]
                    == official[n].split("\nV:")[1].split("\n")[0]]
    assert {"alpine-baselayout", "alpine-baselayout-data", "alpine-keys", "libc-utils", "musl",
            "musl-utils", "scanelf", "zlib"} <= set(same_version)
    for name in same_version:
        assert ours[name] == official[name], name


def test_world_arch_and_triggers(installed):
    root, result, _packages = installed
    assert (root / "etc/apk/world").read_text() == "".join(f"{n}\n" for n in sorted(WORLD))
    assert (root / "etc/apk/arch").read_text() == "x86_64\n"
    busybox = next(p for p in result.packages if p.name == "busybox")
    assert (root / "lib/apk/db/triggers").read_text() == \
        f"{busybox.checksum} /bin /usr/bin /sbin /usr/sbin /lib/modules/*\n"
    with tarfile.open(root / "lib/apk/db/scripts.tar") as tar:
        assert f"busybox-1.36.1-r15.{busybox.checksum}.post-install" in tar.getnames()


def test_modes_owners_links(installed):
    root, _result, _packages = installed
    bbsuid = (root / "bin/bbsuid").lstat()
    assert stat.S_IMODE(bbsuid.st_mode) == 0o4111 and bbsuid.st_uid == 0
    assert stat.S_IMODE((root / "tmp").lstat().st_mode) == 0o1777
    log = (root / "var/log/chrony").lstat()
    assert (stat.S_IMODE(log.st_mode), log.st_uid, log.st_gid) == (0o2750, 0, 10)  # root:wheel
    # no "chrony" user exists (its pre-install script did not run): numeric ids from the tar
    conf = (root / "etc/chrony").lstat()
    assert (conf.st_uid, conf.st_gid) == (190, 188)
    shadow = (root / "etc/shadow").lstat()
    assert (stat.S_IMODE(shadow.st_mode), shadow.st_gid) == (0o640, 42)
    assert os.readlink(root / "lib/libc.musl-x86_64.so.1") == "ld-musl-x86_64.so.1"
    accra, abidjan = root / "usr/share/zoneinfo/Africa/Accra", root / "usr/share/zoneinfo/Africa/Abidjan"
    assert accra.stat().st_ino == abidjan.stat().st_ino
    assert not (root / ".dummy").exists()     # apk never installs top-level dot files


def test_busybox_applets_are_linked_and_run(installed):
    root, result, _packages = installed
    assert os.readlink(root / "bin/ls") == "/bin/busybox"
    assert os.readlink(root / "usr/bin/[") == "/bin/busybox"
    assert "/sbin/ifup" in result.applet_links and len(result.applet_links) > 250
    out = run(["chroot", str(root), "/bin/sh", "-c", "ls /etc/apk && echo ok"]).stdout.decode()
    assert out.split()[-1] == "ok"
    assert ("busybox", ".post-install") not in result.skipped_scripts
    assert ("chrony", ".pre-install") in result.skipped_scripts


def test_bbsuid_takes_its_applets(installed):
    """busybox-suid's trigger runs ``bbsuid --install`` before ``busybox --install -s``."""
    root, result, _packages = installed
    assert os.readlink(root / "bin/su") == "/bin/bbsuid"
    assert os.readlink(root / "usr/bin/passwd") == "/bin/bbsuid"
    assert os.readlink(root / "bin/cat") == "/bin/busybox"


def test_manifest_records(installed):
    _root, result, packages = installed
    records = result.manifest()
    assert [r["name"] for r in records] == sorted(p.name for p in packages)
    musl = next(r for r in records if r["name"] == "musl")
    assert musl == {"name": "musl", "version": "1.2.4_git20230717-r4", "arch": "x86_64",
                    "checksum": next(p.checksum for p in packages if p.name == "musl")}


def test_mtimes_are_clamped(installed):
    root, _result, _packages = installed
    assert max(entry[4] for entry in BEFORE_APK_RAN[root]) <= EPOCH
    assert root.stat().st_mtime == EPOCH


def test_install_is_reproducible(installed, iso_repos, tmp_path_factory):  # noqa: F811
    root, _result, packages = installed
    with exec_dir(tmp_path_factory, "again") as base:
        check_reproducible(root, packages, base / "again")


def check_reproducible(root, packages, again):
    seen = []
    install(packages, again, world=WORLD, epoch=EPOCH, progress=lambda *a: seen.append(a))
    assert snapshot(again) == BEFORE_APK_RAN[root]
    assert seen[-1] == ("extract", len(packages), len(packages)) and len(seen) == 2 * len(packages)


def test_refuses_a_root_that_already_has_a_database(installed, iso_repos):  # noqa: F811
    root, _result, packages = installed
    with pytest.raises(ExistsError, match="already has an apk database"):
        install(packages[:1], root, epoch=EPOCH)


def test_verification_happens_before_anything_is_written(iso_repos, tmp_path):  # noqa: F811
    pkg = iso_repos.find("zlib")
    bad = Package(**{**{f: getattr(pkg, f) for f in pkg.__dataclass_fields__}, "checksum": "Q1bogus"})
    with pytest.raises(Exception, match="does not match the index C:Q1bogus"):
        install([iso_repos.find("musl"), bad], tmp_path / "t", epoch=EPOCH)
    assert not (tmp_path / "t").exists()


# --- synthetic packages: per-file checksum and file conflicts ---------------

def fake(name: str, files: dict[str, bytes], *, sha1_override: str | None = None,
         replaces: str = "") -> tuple[Package, VerifiedApk]:
    entries = []
    for path, content in files.items():
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.mtime = len(content), 0o644, 1
        info.pax_headers = {"APK-TOOLS.checksum.SHA1":
                            sha1_override or hashlib.sha1(content).hexdigest()}
        entries.append((info, content))
    pkginfo = {"pkgname": [name], "pkgver": ["1-r0"]}
    if replaces:
        pkginfo["replaces"] = [replaces]
    pkg = Package(name, "1-r0", checksum=f"Q1{name}")
    return pkg, VerifiedApk(pkg.checksum, "k", pkginfo, {}, tar_bytes(entries))


def test_xattrs_are_applied(tmp_path):
    pkg, verified = fake("caps", {"usr/bin/tool": b"x"})
    with tarfile.open(fileobj=io.BytesIO(verified.data_tar)) as tar:
        info = tar.next()
    info.pax_headers = {**info.pax_headers, "SCHILY.xattr.user.spine": "yes"}
    data = tar_bytes([(info, b"x")])
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError:
        pytest.skip("this filesystem has no user xattrs")
    _Installer(tmp_path, None).extract(pkg, VerifiedApk(pkg.checksum, "k", verified.pkginfo, {}, data))
    assert os.getxattr(tmp_path / "usr/bin/tool", "user.spine") == b"yes"


def test_a_file_that_fails_its_sha1_is_named(tmp_path):
    pkg, verified = fake("bad", {"etc/x": b"hello"}, sha1_override="00" * 20)
    with pytest.raises(CorruptionError, match=r"package bad-1-r0: /etc/x does not match its signed sha1"):
        _Installer(tmp_path, None).extract(pkg, verified)


def test_two_packages_with_one_file_conflict_unless_replaces(tmp_path):
    installer = _Installer(tmp_path, None)
    installer.extract(*fake("one", {"etc/x": b"1"}))
    with pytest.raises(PackageConflictError, match="two-1-r0 and one-1-r0 both contain /etc/x"):
        installer.extract(*fake("two", {"etc/x": b"2"}))
    installer = _Installer(tmp_path / "b", None)
    (tmp_path / "b").mkdir()
    first = installer.extract(*fake("one", {"etc/x": b"1"}))
    installer.extract(*fake("two", {"etc/x": b"2"}, replaces="one"))
    assert (tmp_path / "b/etc/x").read_bytes() == b"2" and first.dirs["etc"].files == []


def test_absolute_symlinks_stay_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    os.symlink("/usr", root / "link")          # absolute: must mean <root>/usr, not the host /usr
    installer = _Installer(root, None)
    installer.extract(*fake("p", {"link/escape-test": b"x"}))
    assert (root / "usr/escape-test").read_bytes() == b"x"
    assert not Path("/usr/escape-test").exists()


def test_scripts_tar_is_readable(installed):
    root, _result, _packages = installed
    data = (root / "lib/apk/db/scripts.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert all(m.mode == 0o755 and m.mtime <= EPOCH for m in tar)


# --- the same packages installed by the real apk-tools --------------------------

APK_WORLD = ["alpine-baselayout", "busybox", "musl", "apk-tools", "alpine-keys", "libc-utils",
             "tzdata", "busybox-suid", "e2fsprogs"]
# What apk --initdb and its script runner create that no package owns.
APK_ONLY = {"dev/console", "dev/null", "dev/random", "dev/urandom", "dev/zero", "var/cache/apk"}
# apk creates these before extracting and then leaves the existing mode alone (so its own
# `apk audit` reports "m proc/"); we apply the mode the package declares.
MODE_DIFFERS = {"proc", "lib/apk/exec"}


def tree(root: Path) -> dict[str, tuple]:
    return {entry[0]: (entry[1], entry[2], entry[3], entry[5]) for entry in snapshot(root)}


def test_same_result_as_a_real_apk_install(alpine, minirootfs, iso_repos, tmp_path_factory):  # noqa: F811
    """apk-tools 2.14.4 installs the same packages into an empty root in a chroot."""
    require_root()
    base = minirootfs / "spine-apk"
    shutil.copytree(alpine / "v3.19/iso-repo/x86_64", base / "repo/x86_64", dirs_exist_ok=True)
    (base / "target").mkdir()
    run(["chroot", str(minirootfs), "/sbin/apk", "--root", "/spine-apk/target", "--initdb",
         "--no-network", "--keys-dir", "/etc/apk/keys", "--repository", "/spine-apk/repo",
         "add", *APK_WORLD])
    theirs = base / "target"
    with exec_dir(tmp_path_factory, "ours") as scratch:
        ours = scratch / "root"
        install(iso_repos.resolve(APK_WORLD), ours, world=APK_WORLD)
        for name in ("installed", "triggers"):
            assert (ours / "lib/apk/db" / name).read_bytes() == \
                (theirs / "lib/apk/db" / name).read_bytes(), name
        assert (ours / "etc/apk/world").read_bytes() == (theirs / "etc/apk/world").read_bytes()
        mine, real = tree(ours), tree(theirs)
    assert len(real) > 1500 and APK_ONLY <= set(real)
    for path in sorted(set(mine) | set(real)):
        if path in APK_ONLY or path == "lib/apk/db/scripts.tar":   # same members, other order
            continue
        if path in MODE_DIFFERS:
            assert mine[path][1:] == real[path][1:], path
            continue
        assert mine.get(path) == real.get(path), path


def unsigned_apk(data_entries) -> tuple[bytes, bytes]:
    """A minimal unsigned apk (control + data) and its inflated data tar."""
    data_tar = tar_bytes(data_entries)
    data = gzip.compress(data_tar, mtime=0)
    pkginfo = ("pkgname = xt\npkgver = 1.0-r0\npkgdesc = x\nurl = x\nbuilddate = 1700000000\n"
               f"size = 100\narch = noarch\nlicense = MIT\n"
               f"datahash = {hashlib.sha256(data).hexdigest()}\n").encode()
    info = tarfile.TarInfo(".PKGINFO")
    info.size = len(pkginfo)
    control = tar_bytes([(info, pkginfo)])
    control = control[: 512 + (len(pkginfo) + 511) // 512 * 512]   # no end-of-archive blocks
    return gzip.compress(control, mtime=0) + data, data_tar


def test_xattr_checksums_match_real_apk(minirootfs, tmp_path):  # noqa: F811
    require_root()
    content = b"hello xattr\n"
    entries = []
    for name in ("usr", "usr/share", "usr/share/xt"):
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        entries.append((info, None))
    entries[-1][0].pax_headers = {"SCHILY.xattr.user.dir": "d"}
    info = tarfile.TarInfo("usr/share/xt/file")
    info.size, info.mode = len(content), 0o644
    info.pax_headers = {"APK-TOOLS.checksum.SHA1": hashlib.sha1(content).hexdigest(),
                        "SCHILY.xattr.user.beta": "two", "SCHILY.xattr.user.alpha": "one"}
    entries.append((info, content))
    apk_bytes, data_tar = unsigned_apk(entries)
    base = minirootfs / "spine-xattr"
    (base / "target").mkdir(parents=True)
    (base / "xt-1.0-r0.apk").write_bytes(apk_bytes)
    run(["chroot", str(minirootfs), "/sbin/apk", "--root", "/spine-xattr/target", "--initdb",
         "--no-network", "--allow-untrusted", "add", "/spine-xattr/xt-1.0-r0.apk"])
    theirs = stanzas((base / "target/lib/apk/db/installed").read_text())["xt"]
    pkg = Package("xt", "1.0-r0", checksum="Q1x")
    entry = _Installer(tmp_path, None).extract(pkg, VerifiedApk("Q1x", "k", {}, {}, data_tar))
    ours = db.render_entry(entry)
    files_part = theirs[theirs.index("F:"):].strip()
    assert ours[ours.index("F:"):].strip() == files_part
    assert "M:0:0:755:Q1nQlL7m+ffCWLVnNJDy96V2EGyz4=" in files_part
    assert os.getxattr(tmp_path / "usr/share/xt/file", "user.alpha") == b"one"
