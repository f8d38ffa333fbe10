"""The one place where the host toolchain starts a subprocess.

argv lists only, never a shell; a minimal environment; stdin closed unless data is
given; ``SPINE_DEBUG=1`` (set by ``spinectl --debug``) echoes the exact command.
A failure raises ``ToolError`` naming the tool and showing a command to copy.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

from bay0.errors import ToolError

# What each tool is called in Debian, for the hint when it is missing.
DEBIAN_PACKAGES = {
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "veritysetup": "cryptsetup-bin",
    "cryptsetup": "cryptsetup-bin",
    "minisign": "minisign",
    "busybox": "busybox-static",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "qemu-system-x86_64": "qemu-system-x86",
    "sfdisk": "fdisk",
    "losetup": "mount",
    "depmod": "kmod",
    "objcopy": "binutils",
    "bwrap": "bubblewrap",
}

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def which(tool: str) -> str:
    """Return the absolute path of ``tool`` or raise ``ToolError`` with the package to install."""
    path = shutil.which(tool, path=BASE_ENV["PATH"] + ":" + os.environ.get("PATH", ""))
    if path is None:
        package = DEBIAN_PACKAGES.get(tool, tool)
        raise ToolError(f"{tool} is not installed", f"install it: apt-get install {package}")
    return path


def debug_enabled() -> bool:
    return os.environ.get("SPINE_DEBUG") == "1"


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    capture: bool = True,
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return the completed process; raise ``ToolError`` on failure.

    ``env`` is added to a minimal base environment (PATH, LC_ALL=C), never to ours.
    """
    argv = [str(a) for a in argv]
    tool = argv[0]
    resolved = which(tool) if "/" not in tool else tool
    full_env = dict(BASE_ENV)  # not even SOURCE_DATE_EPOCH: callers pass times explicitly
    full_env.update(env or {})
    command_line = shlex.join(argv)
    if debug_enabled():
        print(f"+ {command_line}", file=sys.stderr)
    try:
        proc = subprocess.run(
            [resolved, *argv[1:]],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"{tool} timed out after {timeout}s", f"run it by hand: {command_line}") from e
    except OSError as e:
        raise ToolError(f"{tool} could not start: {e.strerror}", f"check: {command_line}") from e
    if check and proc.returncode != 0:
        detail = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        last = detail[-1] if detail else f"exit status {proc.returncode}"
        raise ToolError(f"{tool} failed: {last}", f"run it by hand to see why: {command_line}")
    return proc
