"""Session fixtures for QEMU boots: the kernel + initramfs (cached across sessions by
input digest), one test root image, and a fresh provisioned disk per test.

Scratch files live under the cache directory, not /tmp: a disk image and a root tree
are tens of MiB and /tmp may be a small tmpfs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from pipeline import initramfs, qemu
from pipeline.paths import cache_dir
from tests.conftest import require_tool
from tests.e2e import vmdisk

APPEND = "console=ttyS0 quiet panic=-1 spine.debug=1"


@pytest.fixture(scope="session")
def e2e_dir():
    base = cache_dir() / "e2e-work"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def boot_kit():
    """(Kernel, initramfs path) of the test recipe."""
    require_tool("qemu-system-x86_64", "apt-get", "dpkg-deb", "depmod", "sfdisk", "mksquashfs")
    return initramfs.cached_test_initramfs()


@pytest.fixture(scope="session")
def test_image(alpine, e2e_dir):
    return vmdisk.build_test_image(alpine, e2e_dir)


@pytest.fixture
def disk(test_image, e2e_dir, request) -> vmdisk.TestDisk:
    """A disk with the test image in both slots; A boots first, B is the fallback."""
    image, ident = test_image
    d = vmdisk.make_disk(e2e_dir / f"{request.node.name}.img")
    vmdisk.provision(d, image, ident)
    yield d
    d.path.unlink(missing_ok=True)


@pytest.fixture
def boot(boot_kit, e2e_dir, request):
    """boot(disk, **VmConfig fields) -> VmResult by direct kernel boot; prints wall time."""
    kernel, initrd = boot_kit

    def run(d: vmdisk.TestDisk, **fields) -> qemu.VmResult:
        cfg = qemu.VmConfig(disk=d.path, kernel=kernel.vmlinuz, initrd=initrd, append=APPEND,
                            timeout=180, console_log=e2e_dir / f"{request.node.name}.console")
        for key, value in fields.items():
            setattr(cfg, key, value)
        result = qemu.boot(cfg)
        print(f"\n[{request.node.name}] {result.outcome} after {result.wall_seconds:.1f}s wall")
        return result

    return run
