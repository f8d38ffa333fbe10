"""The product path with the real bay0: build the test Spine (pipeline.build), provision
a disk image (pipeline.disk), boot it (direct kernel boot) → `bay0: READY slot=A`."""

from __future__ import annotations

import re

import pytest

from bay0.formats.minisign import SecretKey
from pipeline import qemu
from pipeline.build import build_spine
from pipeline.disk.layout import LayoutSpec
from pipeline.disk.provision import ProvisionRequest, provision
from pipeline.paths import PROJECT_ROOT
from pipeline.recipe import load_recipe
from tests.e2e.conftest import APPEND

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def test_real_bay0_reaches_ready_on_a_provisioned_disk(boot_kit, e2e_dir) -> None:
    kernel, initrd = boot_kit
    key = SecretKey.generate()
    keys = e2e_dir / "trust"
    keys.mkdir()
    (keys / "test.pub").write_text(key.public_key.to_text())
    recipe = load_recipe(PROJECT_ROOT / "pipeline" / "recipes" / "spine-test.toml").with_trust_keys((keys,))
    built = build_spine(recipe, key, e2e_dir / "real.spine")
    from pipeline import spine

    artifact = spine.open_spine(built.out, [key.public_key])
    spec = LayoutSpec(esp_mib=64, slot_mib=64, state_mib=1, stage_mib=8, persist_min_mib=40)
    disk = e2e_dir / "real-disk.img"
    with open(disk, "wb") as f:
        f.truncate(spec.minimum_bytes)
    provision(str(disk), ProvisionRequest(spec, artifact=artifact))

    result = qemu.boot(qemu.VmConfig(disk=disk, kernel=kernel.vmlinuz, initrd=initrd, append=APPEND,
                                     timeout=300, console_log=e2e_dir / "real.console"),
                       stop_when=r"bay0: READY slot=")
    print(f"\n[real bay0] READY after {result.matched_at}s wall")
    assert result.outcome == qemu.MATCHED, result.console[-2000:]
    assert "bay0: READY slot=A" in result.lines("bay0: ")
    # /init read the Spine's prefetch list (interpreter, libraries, bay0's modules) ahead
    prefetched = re.search(r"^spine-init: prefetch: (\d+) files read ahead", result.console, re.M)
    assert prefetched and int(prefetched.group(1)) >= 10, result.console[-2000:]
    assert not [line for line in result.lines("bay0: ") if "VIOLATION" in line]
    disk.unlink()
