"""The dependency resolver: real fixture closures and small synthetic repositories."""

from __future__ import annotations

import functools
import shutil

import pytest

from pipeline.alpine import (
    MissingDependencyError,
    PackageConflictError,
    RepositorySpec,
    UnknownPackageError,
    open_repositories,
)
from pipeline.alpine.index import Index, parse_index_text
from pipeline.alpine.repository import RepoSet, Repository
from pipeline.run import run
from tests.alpine_support import iso_repos, main_repos, minirootfs  # noqa: F401
from tests.conftest import require_root

# The closure of python3 in v3.19, from the fixtures README.
PYTHON3_CLOSURE = {
    "gdbm", "libbz2", "libcrypto3", "libexpat", "libffi", "libgcc", "libncursesw", "libpanelw",
    "libssl3", "libstdc++", "mpdecimal", "musl", "ncurses-terminfo-base", "readline",
    "sqlite-libs", "xz-libs", "zlib",
}


def synthetic(*repos_text: str) -> RepoSet:
    repos = []
    for n, text in enumerate(repos_text):
        repo = Repository(RepositorySpec(f"idx{n}", (), f"repo{n}"))
        packages = parse_index_text(text.strip().replace("\n    ", "\n"), repository=repo)
        repo.index = Index("", tuple(packages), "test")
        repos.append(repo)
    return RepoSet(repos)


def stanza(name, version, *, deps="", provides="", prio=0, install_if="", checksum=None):
    lines = [f"C:{checksum or 'Q1' + name + version}", f"P:{name}", f"V:{version}"]
    lines += [f"D:{deps}"] * bool(deps) + [f"p:{provides}"] * bool(provides)
    lines += [f"k:{prio}"] * bool(prio) + [f"i:{install_if}"] * bool(install_if)
    return "\n".join(lines) + "\n\n"


def names(packages):
    return [p.name for p in packages]


def test_python3_closure_from_the_real_index(main_repos):  # noqa: F811
    resolved = main_repos.resolve(["python3"])
    found = set(names(resolved))
    assert PYTHON3_CLOSURE | {"python3"} <= found
    # install_if pulls the byte-code packages, as apk does
    assert found - PYTHON3_CLOSURE - {"python3"} == {"pyc", "python3-pyc", "python3-pycache-pyc0"}


def test_install_order_puts_dependencies_first(iso_repos):  # noqa: F811
    order = iso_repos.resolve(["alpine-baselayout", "busybox", "musl", "apk-tools"])
    position = {p.name: n for n, p in enumerate(order)}
    for pkg in order:
        for dep in pkg.depends:
            provider = next((p for p in order if p.name == dep.name
                             or dep.name in [x.name for x in p.provides]), None)
            if provider is not None and provider.name != pkg.name and dep.name != "/bin/sh":
                assert position[provider.name] < position[pkg.name], (provider.name, pkg.name)
    assert order[0].name == "alpine-baselayout-data"


def test_resolution_is_deterministic(iso_repos):  # noqa: F811
    world = ["busybox", "alpine-baselayout", "e2fsprogs", "chrony"]
    assert iso_repos.resolve(world) == iso_repos.resolve(list(reversed(world)))


def test_bin_sh_goes_to_the_highest_provider_priority(main_repos):  # noqa: F811
    chosen = names(main_repos.resolve(["alpine-baselayout"]))
    assert "busybox-binsh" in chosen and "dash-binsh" not in chosen
    # asking for another provider explicitly is honoured
    chosen = names(main_repos.resolve(["dash-binsh", "alpine-baselayout"]))
    assert "dash-binsh" in chosen and "busybox-binsh" not in chosen


def test_so_and_cmd_names(main_repos):  # noqa: F811
    assert names(main_repos.resolve(["so:libz.so.1"])) == ["musl", "zlib"]
    assert "coreutils" in names(main_repos.resolve(["cmd:sha512sum"])) or \
        "coreutils-sha512sum" in names(main_repos.resolve(["cmd:sha512sum"]))


def test_version_constraints_pick_the_right_version():
    repos = synthetic(stanza("foo", "1.0-r0") + stanza("foo", "2.0-r0") + stanza("foo", "3.0_rc1-r0"))
    assert repos.resolve(["foo"])[0].version == "3.0_rc1-r0"      # newest wins
    assert repos.resolve(["foo<2"])[0].version == "1.0-r0"
    assert repos.resolve(["foo<3.0"])[0].version == "3.0_rc1-r0"  # a pre-release of 3.0 is older
    assert repos.resolve(["foo<3.0_rc1"])[0].version == "2.0-r0"
    assert repos.resolve(["foo=2.0-r0"])[0].version == "2.0-r0"
    assert repos.resolve(["foo~1"])[0].version == "1.0-r0"
    assert repos.resolve(["foo>1.0-r0", "foo<=2.0-r0"])[0].version == "2.0-r0"


def test_versioned_and_unversioned_provides():
    repos = synthetic(
        stanza("app", "1-r0", deps="so:libx.so.1 virtual cmd:tool>=2")
        + stanza("libx", "1-r0", provides="so:libx.so.1=1")
        + stanza("virt-a", "1-r0", provides="virtual", prio=10)
        + stanza("virt-b", "1-r0", provides="virtual", prio=20)
        + stanza("tools", "3-r0", provides="cmd:tool=3-r0"))
    assert sorted(names(repos.resolve(["app"]))) == ["app", "libx", "tools", "virt-b"]


def test_unversioned_provide_without_priority_is_not_autoselected():
    repos = synthetic(stanza("app", "1-r0", deps="virtual")
                      + stanza("a", "1-r0", provides="virtual") + stanza("b", "1-r0", provides="virtual"))
    with pytest.raises(MissingDependencyError, match="app-1-r0 requires virtual, which no package provides"):
        repos.resolve(["app"])
    assert sorted(names(repos.resolve(["a", "app"]))) == ["a", "app"]


def test_earlier_repository_wins_a_tie():
    repos = synthetic(stanza("foo", "1-r0", checksum="Q1first"), stanza("foo", "1-r0", checksum="Q1second"))
    assert repos.resolve(["foo"])[0].checksum == "Q1first"


def test_install_if_is_applied():
    repos = synthetic(stanza("a", "1-r0") + stanza("b", "1-r0")
                      + stanza("a-b-glue", "1-r0", install_if="a b"))
    assert sorted(names(repos.resolve(["a"]))) == ["a"]
    assert sorted(names(repos.resolve(["a", "b"]))) == ["a", "a-b-glue", "b"]


def test_unknown_package(iso_repos):  # noqa: F811
    with pytest.raises(UnknownPackageError, match="unknown package 'no-such-thing'"):
        iso_repos.resolve(["busybox", "no-such-thing"])


def test_missing_dependency_names_both_sides():
    repos = synthetic(stanza("app", "1-r0", deps="so:libfoo.so.1"))
    with pytest.raises(MissingDependencyError,
                       match=r"^app-1-r0 requires so:libfoo.so.1, which no package provides$"):
        repos.resolve(["app"])


def test_unsatisfiable_version_names_what_exists():
    repos = synthetic(stanza("app", "1-r0", deps="lib>=2") + stanza("lib", "1.5-r0"))
    with pytest.raises(MissingDependencyError, match=r"app-1-r0 requires lib>=2, but only lib-1.5-r0"):
        repos.resolve(["app"])


def test_conflicts():
    repos = synthetic(stanza("a", "1-r0", deps="!b") + stanza("b", "1-r0") + stanza("c", "1-r0", deps="b"))
    with pytest.raises(PackageConflictError,
                       match=r"^c-1-r0 requires b, but b-1-r0 conflicts with a-1-r0 \(!b\)$"):
        repos.resolve(["a", "c"])
    with pytest.raises(PackageConflictError,
                       match=r"^c-1-r0 requires b, but b-1-r0 conflicts with the recipe \(!b\)$"):
        repos.resolve(["c", "!b"])
    with pytest.raises(PackageConflictError, match=r"b-1-r0 conflicts with the recipe \(!b\)"):
        repos.resolve(["b", "!b"])
    assert names(repos.resolve(["a"])) == ["a"]


def test_conflicting_versions_of_one_name():
    repos = synthetic(stanza("x", "1-r0", deps="lib=1-r0") + stanza("y", "1-r0", deps="lib=2-r0")
                      + stanza("lib", "1-r0") + stanza("lib", "2-r0"))
    with pytest.raises(PackageConflictError, match="only one lib can be installed"):
        repos.resolve(["x", "y"])


# --- the real apk-tools as the judge -------------------------------------------

APK_CASES = [
    (("main",), ["python3"]),
    (("main",), ["alpine-baselayout", "busybox", "musl", "apk-tools", "alpine-keys", "libc-utils"]),
    (("main",), ["coreutils", "e2fsprogs", "openssh", "chrony"]),
    (("main",), ["alpine-base"]),
    (("main",), ["dash-binsh", "alpine-baselayout"]),
    (("main",), ["cryptsetup", "kmod", "util-linux", "squashfs-tools", "e2fsprogs-extra"]),
    (("main",), ["openrc", "busybox-openrc", "alpine-conf"]),
    (("main",), ["bash", "curl", "git", "doas", "tzdata", "ca-certificates"]),
    (("main", "community"), ["py3-cryptography"]),
    (("main", "community"), ["python3", "py3-cryptography", "cryptsetup", "kmod", "busybox",
                             "musl", "alpine-baselayout"]),
    (("iso",), ["alpine-baselayout", "busybox", "musl", "apk-tools", "alpine-keys", "libc-utils",
                "tzdata", "chrony", "busybox-suid"]),
]
INDEXES = {"main": "v3.19/index/main", "community": "v3.19/index/community", "iso": "v3.19/iso-repo"}


@pytest.fixture(scope="module")
def apk_judge(alpine, minirootfs):  # noqa: F811
    """The minirootfs with the indexes under /spine-judge/repo and an empty apk root."""
    require_root()
    base = minirootfs / "spine-judge"
    for name, path in INDEXES.items():
        (base / "repo" / name / "x86_64").mkdir(parents=True, exist_ok=True)
        shutil.copy(alpine / path / "x86_64/APKINDEX.tar.gz", base / "repo" / name / "x86_64")
    (base / "target").mkdir(exist_ok=True)
    run(["chroot", str(minirootfs), "/sbin/apk", "--root", "/spine-judge/target", "--initdb",
         "--no-network", "add"])
    return minirootfs


@functools.cache
def _opened(alpine, repos):
    specs = [RepositorySpec.local(alpine / INDEXES[r] / "x86_64/APKINDEX.tar.gz", name=r)
             for r in repos]
    return open_repositories(specs, alpine / "keys", cache=False)


@pytest.mark.parametrize(("repos", "world"), APK_CASES, ids=lambda x: "+".join(x)[:40])
def test_resolution_matches_real_apk(alpine, apk_judge, repos, world):
    """The same package set (names and versions) as `apk add --simulate` into an empty root."""
    ours = sorted(f"{p.name} ({p.version})" for p in _opened(alpine, repos).resolve(world))
    argv = ["chroot", str(apk_judge), "/sbin/apk", "--root", "/spine-judge/target", "--no-network",
            "--keys-dir", "/etc/apk/keys"]
    for r in repos:
        argv += ["--repository", f"/spine-judge/repo/{r}"]
    out = run([*argv, "add", "--simulate", *world]).stdout.decode()
    real = sorted(line.split("Installing ", 1)[1] for line in out.splitlines() if "Installing " in line)
    assert ours == real
