"""Just enough ELF to copy a dynamically linked program into an initramfs.

Reads the interpreter (PT_INTERP) and the DT_NEEDED / DT_RUNPATH entries of 64-bit
little-endian ELF files, then resolves the library closure inside a sysroot (an
extracted package tree), following symlinks *within* that root. No host tool is run:
``ldd`` would execute the binary and look at the host's libraries.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bay0.errors import FormatError, NotFoundError

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29

# glibc's multiarch search order on Debian, then the plain directories.
DEFAULT_LIB_DIRS = (
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
)
# musl's loader searches only these. A tree may hold both libcs (the test Spine borrows
# glibc programs from Debian beside Alpine's musl ones), so a musl program must never
# be matched with a glibc library of the same soname, or the reverse.
MUSL_LIB_DIRS = ("lib", "usr/local/lib", "usr/lib")


@dataclass(frozen=True)
class ElfInfo:
    interpreter: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]


def parse(data: bytes, *, name: str = "file") -> ElfInfo | None:
    """Interpreter and dynamic dependencies of an ELF image; None when ``data`` is not ELF.

    Raises ``FormatError`` for ELF that is not 64-bit little-endian or is truncated.
    """
    if data[:4] != b"\x7fELF":
        return None
    if data[4] != 2 or data[5] != 1:
        raise FormatError(f"{name}: only 64-bit little-endian ELF is supported", "build for x86_64")
    try:
        return _parse64(data)
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise FormatError(f"{name}: truncated or malformed ELF ({e})", "fetch the package again") from e


def _parse64(data: bytes) -> ElfInfo:
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    interpreter = None
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_INTERP:
            interpreter = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return ElfInfo(interpreter, (), ())
    entries = []
    strtab_vaddr = None
    for pos in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == DT_NULL:
            break
        if tag == DT_STRTAB:
            strtab_vaddr = value
        entries.append((tag, value))
    if strtab_vaddr is None:
        return ElfInfo(interpreter, (), ())
    strtab = _vaddr_to_offset(loads, strtab_vaddr)

    def string(offset: int) -> str:
        end = data.index(b"\0", strtab + offset)
        return data[strtab + offset : end].decode()

    needed = tuple(string(v) for t, v in entries if t == DT_NEEDED)
    runpath = tuple(
        part for t, v in entries if t in (DT_RPATH, DT_RUNPATH) for part in string(v).split(":") if part
    )
    return ElfInfo(interpreter, needed, runpath)


def _vaddr_to_offset(loads: list[tuple[int, int, int]], vaddr: int) -> int:
    for start, offset, size in loads:
        if start <= vaddr < start + size:
            return vaddr - start + offset
    raise IndexError(f"address {vaddr:#x} is in no loadable segment")


def resolve_in_root(root: Path, path: str) -> Path:
    """Follow ``path`` (absolute inside ``root``) through symlinks without leaving ``root``.

    Raises ``NotFoundError`` when it does not exist or loops.
    """
    parts = list(PurePosixPath(path).parts[1:] if path.startswith("/") else PurePosixPath(path).parts)
    current = PurePosixPath("/")
    for _ in range(64):
        if not parts:
            return root / str(current).lstrip("/")
        part = parts.pop(0)
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        host = root / str(candidate).lstrip("/")
        if host.is_symlink():
            target = os.readlink(host)
            base = PurePosixPath("/") if target.startswith("/") else current
            parts = list(PurePosixPath(target).parts[1:] if target.startswith("/") else PurePosixPath(target).parts) + parts
            current = base
            continue
        current = candidate
    raise NotFoundError(f"{path}: too many symlinks inside {root}", "check the tree for loops")


def closure(root: Path, programs: list[str], lib_dirs: tuple[str, ...] | None = None) -> list[str]:
    """Every file (absolute in-root paths) the programs need: themselves, interpreter, libraries.

    Libraries are searched in ``lib_dirs`` when given, else in the directories of the
    program's own libc (musl or glibc, from its interpreter; a library inherits the
    choice of the program that needs it). Raises ``NotFoundError`` naming the library
    no search directory holds.
    """
    found: dict[str, None] = {}
    todo: list[tuple[str, tuple[str, ...] | None]] = [(p, lib_dirs) for p in programs]
    while todo:
        path, dirs = todo.pop(0)
        if path in found:
            continue
        real = resolve_in_root(root, path)
        if not real.is_file():
            raise NotFoundError(f"{path} is not in {root}", "extract the package that ships it")
        found[path] = None
        with real.open("rb") as f:
            info = parse(f.read(), name=path)
        if info is None:
            continue
        if info.interpreter:
            todo.append((info.interpreter, dirs))
            if dirs is None:
                dirs = MUSL_LIB_DIRS if "ld-musl" in info.interpreter else DEFAULT_LIB_DIRS
        for lib in info.needed:
            todo.append((_find_library(root, lib, info.runpath, dirs or DEFAULT_LIB_DIRS, path), dirs))
    return list(found)


def _find_library(root: Path, soname: str, runpath: tuple[str, ...], lib_dirs: tuple[str, ...], user: str) -> str:
    for directory in (*(r.lstrip("/") for r in runpath if "$" not in r), *lib_dirs):
        candidate = f"/{directory}/{soname}"
        try:
            if resolve_in_root(root, candidate).is_file():
                return candidate
        except NotFoundError:
            continue
    raise NotFoundError(f"{user} needs {soname}, which is not in {root}", "add the library's package")
