"""The seccomp BPF builder, checked by running its programs in a tiny cBPF interpreter.

Pure: no kernel involved. The host tests in test_persona_sandbox.py load the same
programs for real and watch the kernel kill the probes.
"""

from __future__ import annotations

import errno
import struct

import pytest

from bay0.formats.inventory import SECCOMP_PROFILES
from bay0.sys import seccomp as sc
from bay0.sys import seccomp_profiles as prof
from bay0.sys.ns import CLONE_NEWNS, CLONE_NEWUSER
from bay0.sys.syscalls_x86_64 import NEWEST, SYSCALLS

KILL, ALLOW, ENOSYS = sc.SECCOMP_RET_KILL_PROCESS, sc.SECCOMP_RET_ALLOW, sc.SECCOMP_RET_ERRNO | errno.ENOSYS
AUDIT_ARCH_I386 = 0x40000003


def run_bpf(program: bytes, nr: int, args: tuple[int, ...] = (), arch: int = sc.AUDIT_ARCH_X86_64) -> int:
    """Evaluate a seccomp cBPF program on one struct seccomp_data."""
    full = (list(args) + [0] * 6)[:6]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *[a & (2**64 - 1) for a in full])
    code = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    a, pc = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        pc += 1
        if op == sc.BPF_LD_W_ABS:
            a = struct.unpack_from("<I", data, k)[0]
        elif op == sc.BPF_ALU_AND_K:
            a &= k
        elif op == sc.BPF_JMP_JA:
            pc += k
        elif op == sc.BPF_RET_K:
            return k
        else:
            taken = {sc.BPF_JEQ_K: a == k, sc.BPF_JGT_K: a > k, sc.BPF_JGE_K: a >= k,
                     sc.BPF_JSET_K: bool(a & k)}[op]
            pc += jt if taken else jf


def decide(profile: str, name: str, *args: int, networked: bool = False, **kw) -> int:
    return run_bpf(sc.build_filter(profile, networked), SYSCALLS[name], args, **kw)


@pytest.mark.parametrize("profile", list(SECCOMP_PROFILES))
def test_every_inventory_profile_builds_and_allows_its_base(profile: str) -> None:
    program = sc.build_filter(profile, False)
    assert len(program) % 8 == 0 and len(program) // 8 < 4096
    for name in prof.BASE:
        assert run_bpf(program, SYSCALLS[name]) == ALLOW, name


def test_everything_else_in_the_table_kills() -> None:
    program = sc.build_filter("default", False)
    allowed = set(prof.BASE) | set(prof.ARGUMENT_FILTERED)
    for name, number in SYSCALLS.items():
        if name in allowed or name in prof.ENOSYS or name in prof.EPERM:
            continue
        assert run_bpf(program, number) == KILL, name
    for name in ("ptrace", "mount", "unshare", "setns", "keyctl", "bpf", "perf_event_open",
                 "process_vm_readv", "userfaultfd", "open_by_handle_at", "kexec_load", "init_module"):
        assert run_bpf(program, SYSCALLS[name]) == KILL, name


@pytest.mark.parametrize("profile", list(prof.PROFILES))
@pytest.mark.parametrize("networked", [False, True])
def test_every_number_gets_its_table_outcome_from_a_short_program(profile: str, networked: bool) -> None:
    program = sc.build_filter(profile, networked)
    # the kernel converts, JIT-compiles and pre-evaluates the program at every launch:
    # the run-based search keeps it near 220 instructions (a compare per number was 760)
    assert len(program) // 8 <= 256
    by_number = {number: name for name, number in SYSCALLS.items()}
    for number in range(NEWEST + 1):
        name = by_number.get(number)
        if name in prof.ARGUMENT_FILTERED:
            continue  # decided by its arguments, see test_argument_filters
        expected = (ENOSYS if name in prof.ENOSYS else sc.SECCOMP_RET_ERRNO | errno.EPERM if name in prof.EPERM
                    else ALLOW if name in prof.BASE else KILL)
        assert run_bpf(program, number) == expected, (number, name)


def test_memfd_create_is_refused_with_eperm_in_every_profile() -> None:
    for profile in prof.PROFILES:
        for networked in (False, True):
            program = sc.build_filter(profile, networked)
            assert run_bpf(program, SYSCALLS["memfd_create"]) == sc.SECCOMP_RET_ERRNO | errno.EPERM, profile


def test_other_abis_are_killed_and_newer_calls_get_enosys() -> None:
    program = sc.build_filter("default", False)
    assert run_bpf(program, 20, arch=AUDIT_ARCH_I386) == KILL  # ia32 getpid
    assert run_bpf(program, 0x40000000 | SYSCALLS["getpid"]) == KILL  # x32
    assert run_bpf(program, NEWEST + 1) == ENOSYS
    for name in ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register"):
        assert run_bpf(program, SYSCALLS[name]) == ENOSYS, name


def test_argument_filters() -> None:
    assert decide("default", "clone", 0x11 | 0x3D0F00) == ALLOW  # fork/thread flags
    assert decide("default", "clone", CLONE_NEWUSER | 0x11) == KILL
    assert decide("default", "clone", CLONE_NEWNS) == KILL
    assert decide("default", "ioctl", 0, 0x5401) == ALLOW  # TCGETS
    assert decide("default", "ioctl", 0, sc.TIOCSTI) == KILL
    assert decide("default", "ioctl", 0, (1 << 32) | sc.TIOCSTI) == KILL  # high bits ignored
    assert decide("default", "ioctl", 0, sc.TIOCLINUX) == KILL
    assert decide("default", "personality", 0) == ALLOW
    assert decide("default", "personality", 0xFFFFFFFF) == ALLOW
    assert decide("default", "personality", 0x0040000) == KILL
    assert decide("default", "mknodat", 0, 0, 0o010600) == ALLOW  # fifo
    assert decide("default", "mknodat", 0, 0, 0o060600) == KILL  # block device
    assert decide("default", "mknod", 0, 0o020600) == KILL  # char device


@pytest.mark.parametrize("profile,networked,family,expected", [
    ("default", False, prof.AF_UNIX, ALLOW),
    ("default", True, prof.AF_INET, KILL),
    ("network-service", False, prof.AF_INET, ALLOW),
    ("network-service", False, prof.AF_INET6, ALLOW),
    ("network-service", False, prof.AF_NETLINK, KILL),
    ("network-service", True, prof.AF_NETLINK, ALLOW),
    ("network-service", True, 17, KILL),  # AF_PACKET
    ("network-service", True, 38, KILL),  # AF_ALG
    ("network-service", True, 40, KILL),  # AF_VSOCK
    ("network-service", True, 15, KILL),  # AF_KEY
    ("batch", False, prof.AF_UNIX, KILL),
])
def test_socket_families(profile: str, networked: bool, family: int, expected: int) -> None:
    assert decide(profile, "socket", family, 1, 0, networked=networked) == expected


def test_netlink_only_for_route_and_socketpair_only_unix() -> None:
    assert decide("network-service", "socket", prof.AF_NETLINK, 3, 9, networked=True) == KILL  # audit
    assert decide("default", "socketpair", prof.AF_UNIX) == ALLOW
    assert decide("default", "socketpair", prof.AF_INET) == KILL
    assert decide("batch", "socketpair", prof.AF_UNIX) == KILL


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(sc.SeccompProfileError):
        sc.build_filter("permissive", False)
