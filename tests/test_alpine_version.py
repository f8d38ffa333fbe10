"""apk version comparison and dependency atoms; the real apk-tools is the authority."""

from __future__ import annotations

import random

import pytest

from pipeline.alpine import version as v
from pipeline.alpine.deps import Dependency, parse_dependency, parse_provides
from pipeline.run import run
from tests.alpine_support import iso_repos, main_repos, minirootfs  # noqa: F401
from tests.conftest import require_root

# (a, b, apk version -t a b) -- every row checked against apk-tools 2.14.4.
TABLE = """
1.0 1.0 = | 1.0 1.1 < | 1.1 1.0 > | 2 10 < | 1.10 1.9 > | 01 1 = | 0 00 =
1.0_rc1 1.0 < | 2.0_rc1 2.0 < | 1.2_rc1 1.2 < | 1.2.0_rc1 1.2.0 < | 1.0 1.0_p1 <
1.0_alpha 1.0_beta < | 1.0_beta 1.0_rc < | 1.0_rc1 1.0_p1 < | 1_pre2 1_pre10 <
1.0_alpha1 1.0_alpha > | 1_rc 1_rc0 < | 1.0_p 1.0_p0 < | 1.0_rc1_p2 1.0_rc1 >
1.2_git 1.2 > | 1.0_alpha 1.0_al < | 1.2.4_git20230717-r4 1.2.4-r4 >
1.0a 1.0 > | 1a 1b < | 1.0a 1.0b < | 1.0a1 1.0a > | 1.0a1 1.0a2 < | 1.2a 1.2.1 <
1.01 1.1 < | 1.01 1.001 > | 1.0 1.00 > | 1.00 1.0 < | 1.05 1.04 > | 1.05 1.1 <
1.0.5 1.0.05 > | 1.00.5 1.0.5 < | 1.010 1.01 > | 1.0 1.0.0 < | 1.0.1 1.0_rc1 >
1.0 1.0-r0 < | 1.0-r1 1.0 > | 1.0-r1 1.0-r2 < | 1.0-r1 1.0_p1 < | 1.0_p1 1.0-r1 >
1.0_rc1-r1 1.0_rc1 > | 1.0_p1a 1.0_p1b = | 6.4_p20231125-r0 6.4-r0 >
1.0a 1.0_p1 > | 1.0.1 1.0a > | 1.0-r1 1.0a < | 3.1.7-r0 3.1.5-r0 > | 20230506-r0 20240226-r0 < | 1.36.1-r15 1.36.1-r19 <
"""
SYMBOL = {"<": v.LESS, "=": v.EQUAL, ">": v.GREATER}


def table_rows():
    for chunk in TABLE.replace("\n", "|").split("|"):
        if chunk.strip():
            a, b, op = chunk.split()
            yield a, b, op


@pytest.mark.parametrize(("a", "b", "op"), list(table_rows()))
def test_compare_table(a, b, op):
    assert v.compare(a, b) == SYMBOL[op]


def test_validity():
    for good in ("1.0", "1.2.4_git20230717-r4", "1.0a1", "2023d-r0", "1-r", "1.0_p1"):
        assert v.is_valid(good), good
    for bad in ("1_foo", "1-x", "1.0_rc1a", "1.0-r1a", "1__rc"):
        assert not v.is_valid(bad), bad


def test_sort_key_orders_like_apk():
    versions = ["1.0", "1.0_rc1", "1.0-r1", "1.0_p1", "0.9", "1.0.1", "1.0a"]
    assert sorted(versions, key=v.sort_key) == [
        "0.9", "1.0_rc1", "1.0", "1.0-r1", "1.0_p1", "1.0a", "1.0.1"]


@pytest.mark.parametrize(("atom", "version", "expected"), [
    ("foo", "1.0", True), ("foo=1.0-r0", "1.0-r0", True), ("foo=1.0", "1.0-r0", False),
    ("foo<2", "1.9", True), ("foo<2", "2", False), ("foo<=2", "2", True),
    ("foo>1.0", "1.0_p1", True), ("foo>1.0", "1.0_rc1", False), ("foo>=1.0", "1.0", True),
    ("foo~1.2", "1.2.9-r3", True), ("foo~1.2", "1.3", False), ("foo~1.2.3", "1.2", False),
    ("foo=~1.2", "1.2.1", True), ("foo>1", None, True),
])
def test_dependency_matches(atom, version, expected):
    assert parse_dependency(atom).matches(version) is expected


def test_dependency_parse_forms():
    assert parse_dependency("!busybox") == Dependency("busybox", conflict=True)
    assert parse_dependency("so:libc.musl-x86_64.so.1") == Dependency("so:libc.musl-x86_64.so.1")
    dep = parse_dependency("busybox><Q1RWLMZH10kdz0zUmHb2dljdFhLlQ=")
    assert dep.by_checksum and dep.matches("1", "Q1RWLMZH10kdz0zUmHb2dljdFhLlQ=")
    assert not dep.matches("1", "Q1other")
    assert parse_dependency("cmd:kdevelop!=23.08.4-r0").name == "cmd:kdevelop!"
    assert str(parse_dependency("musl>=1.2")) == "musl>=1.2"
    assert [str(p) for p in parse_provides("/bin/sh cmd:sh=1.36.1-r15")] == [
        "/bin/sh", "cmd:sh=1.36.1-r15"]


def test_bad_atoms_are_format_errors():
    from bay0.errors import FormatError

    for bad in ("foo=", "foo>>1", "foo=1.0_bogus", ""):
        with pytest.raises(FormatError):
            parse_dependency(bad)


def test_compare_agrees_with_real_apk(main_repos, minirootfs):  # noqa: F811
    """400 version pairs from the real v3.19/main index, judged by apk-tools 2.14.4."""
    require_root()
    versions = sorted({p.version for p in main_repos.packages})
    rng = random.Random(4)
    pairs = [tuple(rng.sample(versions, 2)) for _ in range(300)]
    pairs += [(versions[i], versions[i + 1]) for i in range(0, len(versions) - 1, 40)]
    pairs += [(a, b) for a, b, _ in table_rows()]
    script = "while read a b; do echo \"$a $b $(apk version -t $a $b)\"; done"
    proc = run(["chroot", str(minirootfs), "/bin/sh", "-c", script],
               input="".join(f"{a} {b}\n" for a, b in pairs).encode())
    for line in proc.stdout.decode().splitlines():
        a, b, op = line.split()
        assert v.compare(a, b) == SYMBOL[op], (a, b, op)
