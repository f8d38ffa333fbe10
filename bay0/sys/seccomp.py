"""A classic-BPF seccomp filter builder and loader (no libseccomp needed).

Program shape (x86_64):

1. ``arch != AUDIT_ARCH_X86_64`` → kill (ia32 via ``int 0x80`` lands here).
2. ``nr & 0x40000000`` (the x32 ABI) → kill.
3. ``nr > NEWEST`` and clone3/io_uring_* → ``ENOSYS`` so libc falls back;
   memfd_create → ``EPERM`` (an anonymous file would let code outside the signed
   image run despite noexec everywhere, and kernels before 6.3 lack vm.memfd_noexec).
4. A binary search over runs of syscall numbers with one outcome (consecutive
   allowed numbers form one run, each argument-filtered call its own, the gaps
   kill): about 80 runs, seven compares per call, ~220 instructions in all. BPF
   jumps are forward only and conditional offsets fit in 8 bits, so a branch
   point whose lower half is longer than that adds an unconditional ``JA``. Each
   leaf ``ALLOW``s, jumps to a call's argument check, or kills. The program's
   length matters beyond the compares: the kernel converts, JIT-compiles and
   pre-evaluates it for every syscall number at each launch (the former
   one-compare-per-number search was 760 instructions and loaded in ~215 µs here;
   an empty filter alone takes ~110 µs).
5. Anything else → ``SECCOMP_RET_KILL_PROCESS`` (logged by the kernel).

Argument checks compare the low 32 bits only where the kernel itself truncates the
argument to ``int`` (ioctl's request: the TIOCSTI high-bits trick, CVE-2019-10063).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import struct

from bay0.sys import seccomp_profiles as prof
from bay0.sys.libc import MACHINE, UnsupportedArchError
from bay0.sys.ns import CLONE_NEW_MASK
from bay0.sys.syscalls_x86_64 import NEWEST, SYSCALLS

# linux/filter.h, linux/bpf_common.h
BPF_LD_W_ABS = 0x20
BPF_ALU_AND_K = 0x54
BPF_JMP_JA = 0x05
BPF_JEQ_K = 0x15
BPF_JGT_K = 0x25
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06

# linux/seccomp.h
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

# struct seccomp_data offsets
OFF_NR = 0
OFF_ARCH = 4

TIOCSTI = 0x5412
TIOCLINUX = 0x541C
S_IFMT = 0o170000
ALLOWED_NODE_TYPES = (0, 0o100000, 0o010000, 0o140000)  # default=regular, regular, fifo, socket
PERSONALITY_OK = (0, 0xFFFFFFFF)  # PER_LINUX and the query value

KILL = ("ret", SECCOMP_RET_KILL_PROCESS)
ALLOW = ("ret", SECCOMP_RET_ALLOW)


class SeccompProfileError(ValueError):
    """An unknown seccomp profile name."""


def arg_low(index: int) -> int:
    """Offset of the low 32 bits of syscall argument ``index`` (little endian)."""
    return 16 + 8 * index


class _Asm:
    """A tiny assembler: instructions with symbolic forward jumps, resolved at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int = 0, jt: object = 0, jf: object = 0) -> None:
        self.code.append((code, jt, jf, k))

    def ret(self, value: int) -> None:
        self.op(BPF_RET_K, value)

    def load(self, offset: int) -> None:
        self.op(BPF_LD_W_ABS, offset)

    def assemble(self) -> bytes:
        out = bytearray()
        for i, (code, jt, jf, k) in enumerate(self.code):
            if code == BPF_JMP_JA and isinstance(k, str):
                k = self.labels[k] - (i + 1)
            jt, jf = (self.labels[j] - (i + 1) if isinstance(j, str) else j for j in (jt, jf))
            if not (0 <= jt <= 255 and 0 <= jf <= 255):
                raise AssertionError(f"BPF jump out of range at {i}")
            out += struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)
        if len(self.code) > 4096:
            raise AssertionError("BPF program longer than 4096 instructions")
        return bytes(out)


def _emit_one_of(asm: _Asm, values: tuple[int, ...], then: tuple[str, int], other: tuple[str, int]) -> None:
    """A already holds a value: return ``then`` if it is one of ``values``, else ``other``."""
    n = len(values)
    for i, value in enumerate(values):
        asm.op(BPF_JEQ_K, value, jt=n - i, jf=0)
    asm.ret(other[1])
    asm.ret(then[1])


def _emit_argument_check(asm: _Asm, name: str, families: tuple[int, ...]) -> None:
    if name == "socketpair":
        asm.load(arg_low(0))
        _emit_one_of(asm, tuple(f for f in families if f == prof.AF_UNIX), ALLOW, KILL)
    elif name == "socket":
        asm.load(arg_low(0))
        plain = tuple(f for f in families if f != prof.AF_NETLINK)
        if prof.AF_NETLINK in families:
            # netlink only for NETLINK_ROUTE (address and route queries)
            asm.op(BPF_JEQ_K, prof.AF_NETLINK, jt=0, jf=4)
            asm.load(arg_low(2))
            asm.op(BPF_JEQ_K, prof.NETLINK_ROUTE, jt=0, jf=1)
            asm.ret(SECCOMP_RET_ALLOW)
            asm.ret(SECCOMP_RET_KILL_PROCESS)
        _emit_one_of(asm, plain, ALLOW, KILL)
    elif name == "ioctl":
        asm.load(arg_low(1))
        _emit_one_of(asm, (TIOCSTI, TIOCLINUX), KILL, ALLOW)
    elif name == "clone":
        asm.load(arg_low(0))
        asm.op(BPF_JSET_K, CLONE_NEW_MASK, jt=0, jf=1)
        asm.ret(SECCOMP_RET_KILL_PROCESS)
        asm.ret(SECCOMP_RET_ALLOW)
    elif name == "personality":
        asm.load(arg_low(0))
        _emit_one_of(asm, PERSONALITY_OK, ALLOW, KILL)
    elif name in ("mknod", "mknodat"):
        asm.load(arg_low(1 if name == "mknod" else 2))
        asm.op(BPF_ALU_AND_K, S_IFMT)
        _emit_one_of(asm, ALLOWED_NODE_TYPES, ALLOW, KILL)
    else:  # pragma: no cover - the table and this function change together
        raise AssertionError(name)


def _emit_header(asm: _Asm) -> None:
    asm.load(OFF_ARCH)
    asm.op(BPF_JEQ_K, AUDIT_ARCH_X86_64, jt=1, jf=0)
    asm.ret(SECCOMP_RET_KILL_PROCESS)
    asm.load(OFF_NR)
    asm.op(BPF_JGE_K, X32_SYSCALL_BIT, jt=0, jf=1)
    asm.ret(SECCOMP_RET_KILL_PROCESS)
    asm.op(BPF_JGT_K, NEWEST, jt="enosys", jf=0)
    for name in prof.ENOSYS:
        asm.op(BPF_JEQ_K, SYSCALLS[name], jt="enosys", jf=0)
    for name in prof.EPERM:
        asm.op(BPF_JEQ_K, SYSCALLS[name], jt="eperm", jf=0)
    asm.op(BPF_JMP_JA, "tree")
    asm.label("enosys")
    asm.ret(SECCOMP_RET_ERRNO | errno.ENOSYS)
    asm.label("eperm")
    asm.ret(SECCOMP_RET_ERRNO | errno.EPERM)


def _segments(entries: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Split 0..NEWEST into runs of one outcome: ``(first number, "allow" | "kill" | name)``.

    Consecutive allowed numbers share a run; an argument-filtered call is a run of
    its own, named by the call. The allowlist's 294 numbers make about 80 runs.
    """
    outcome = {number: (name if name in prof.ARGUMENT_FILTERED else "allow") for number, name in entries}
    runs: list[tuple[int, str]] = []
    for number in range(NEWEST + 1):
        this = outcome.get(number, "kill")
        if not runs or runs[-1][1] != this or this not in ("allow", "kill"):
            runs.append((number, this))
    return runs


def _tree(runs: list[tuple[int, str]]) -> list[tuple[int, object, object, object]]:
    """A binary search over the runs' first numbers, as instructions with relative jumps.

    Each branch point is one ``JGE`` that falls into the lower half and jumps over it
    to the upper half, plus a ``JA`` only where the lower half is too long for an
    8-bit offset; each leaf is the run's outcome: ``RET`` or ``JA`` to the call's
    argument check (a label resolved by the assembler).
    """
    if len(runs) == 1:
        outcome = runs[0][1]
        if outcome == "allow":
            return [(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]
        if outcome == "kill":
            return [(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS)]
        return [(BPF_JMP_JA, 0, 0, f"arg:{outcome}")]
    mid = len(runs) // 2
    lower, upper = _tree(runs[:mid]), _tree(runs[mid:])
    if len(lower) <= 255:
        return [(BPF_JGE_K, len(lower), 0, runs[mid][0])] + lower + upper
    return [(BPF_JGE_K, 0, 1, runs[mid][0]), (BPF_JMP_JA, 0, 0, len(lower))] + lower + upper


@functools.lru_cache(maxsize=16)
def build_filter(profile: str, networked: bool) -> bytes:
    """The BPF program (8 bytes per instruction) for ``profile``; ``networked`` = has a veth.

    Raises ``SeccompProfileError`` for an unknown profile and ``UnsupportedArchError``
    off x86_64.
    """
    if profile not in prof.PROFILES:
        raise SeccompProfileError(f"unknown seccomp profile {profile!r}")
    if MACHINE != "x86_64":
        raise UnsupportedArchError(f"no seccomp table for {MACHINE}")
    families = prof.socket_families(profile, networked)
    names = set(prof.BASE) | set(prof.ARGUMENT_FILTERED)
    entries = sorted((SYSCALLS[name], name) for name in names)
    asm = _Asm()
    _emit_header(asm)
    asm.label("tree")
    for code, jt, jf, k in _tree(_segments(entries)):
        asm.op(code, k, jt, jf)
    for name in prof.ARGUMENT_FILTERED:
        asm.label(f"arg:{name}")
        _emit_argument_check(asm, name, families)
    return asm.assemble()


class sock_fprog(ctypes.Structure):  # noqa: N801 - kernel name
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class LoadableFilter:
    """A filter prepared before fork, so the sandboxed child only makes one syscall."""

    def __init__(self, program: bytes) -> None:
        self.buffer = ctypes.create_string_buffer(program, len(program))
        self.prog = sock_fprog(len(program) // 8, ctypes.addressof(self.buffer))
        self.prog_ref = ctypes.c_long(ctypes.addressof(self.prog))  # for a raw syscall argument
