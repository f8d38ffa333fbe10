"""End-to-end boots under QEMU (TCG): the initramfs picks a slot, spends a try, reads it
end to end on its last try, falls back, and powers off when nothing is bootable. /sbin/bay0 is a test double here."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import qemu

pytestmark = pytest.mark.qemu


def init_lines(result: qemu.VmResult) -> list[str]:
    return result.lines("spine-init: ")


def assert_no_shell(result: qemu.VmResult) -> None:
    for marker in ("# ", "can't access tty", "BusyBox v", "Kernel panic"):
        assert not any(line.startswith(marker) for line in result.console.splitlines()), marker


def test_boots_slot_a_to_ready_with_a_try_spent(disk, boot) -> None:
    result = boot(disk)
    assert result.outcome == qemu.POWEROFF
    assert "bay0: READY slot=A" in result.lines("bay0: ")
    assert any("root /dev/mapper/spine_root squashfs ro," in line for line in result.lines("bay0-double:"))
    persist = next(line for line in result.lines("bay0-double: persist"))
    assert "/dev/mapper/persist ext4" in persist
    assert {"nodev", "nosuid", "noexec"} <= set(persist.split()[-1].split(","))
    state = disk.state()
    assert state.last_boot == "A"
    assert state.slot("A").tries_left == 2 and state.slot("B").tries_left == 3
    assert any("persist: first boot, creating LUKS2" in line for line in init_lines(result))
    assert any(line.startswith("spine-init: watchdog armed: watchdog0 resets the machine in 120 s")
               for line in init_lines(result))
    assert disk.read("persist", 24, 48).rstrip(b"\0") == b"spine-persist"  # first boot finished
    assert_no_shell(result)


def test_a_persist_volume_without_its_filesystem_is_left_alone(disk, boot) -> None:
    # A LUKS volume past first boot (label spine-persist) whose ext4 is gone: report it,
    # never re-create it (that would wipe data); the slot still boots and bay0 decides.
    import subprocess

    key = disk.read("spine_state", 65536, 512)
    volume = disk.path.with_suffix(".persist")
    volume.write_bytes(bytes(disk.parts["persist"][1]))
    subprocess.run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--label",
                    "spine-persist", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                    "--key-file", "-", str(volume)], input=key, check=True)
    disk.write_at("persist", 0, volume.read_bytes())
    volume.unlink()
    result = boot(disk)
    assert any("persist: the LUKS volume holds no ext4 filesystem: left alone" in line
               for line in init_lines(result))
    assert "bay0: READY slot=A" in result.lines("bay0: ")
    assert result.lines("bay0-double: persist")[0].strip() == "bay0-double: persist"


def with_tries(disk, name: str, tries: int) -> None:
    import dataclasses

    state = disk.state()
    disk.set_state(state.with_slot(name, dataclasses.replace(state.slot(name), tries_left=tries)))


def test_corrupt_a_on_its_last_try_is_read_in_full_marked_bad_and_b_boots(disk, boot) -> None:
    # On a slot's last try the initramfs reads it end to end through dm-verity first.
    disk.corrupt("spine_a", block=20)
    with_tries(disk, "A", 1)
    result = boot(disk)
    assert result.outcome == qemu.POWEROFF
    assert "bay0: READY slot=B" in result.lines("bay0: ")
    lines = init_lines(result)
    assert any("slot A: verifying /dev/vda2" in line for line in lines)
    assert any("slot A: dm-verity check failed" in line for line in lines)
    assert any("slot A: marked bad" in line for line in lines)
    assert not any("slot B: verifying" in line for line in lines)  # B has tries left: no read-through
    state = disk.state()
    assert state.slot("A").priority == 0 and not state.slot("A").bootable
    assert state.slot("B").tries_left == 2 and state.last_boot == "B"


def test_both_slots_corrupt_powers_off_without_a_shell(disk, boot) -> None:
    # spine.verify=full reads every slot end to end on every boot, tries left or not.
    from tests.e2e.conftest import APPEND

    disk.corrupt("spine_a", block=20)
    disk.corrupt("spine_b", block=30)
    result = boot(disk, append=APPEND + " spine.verify=full")
    assert result.outcome == qemu.POWEROFF
    assert not result.lines("bay0: ")
    lines = init_lines(result)
    assert lines[-2:] == ["spine-init: no bootable slot", "spine-init: powering off"]
    state = disk.state()
    assert not state.slot("A").bootable and not state.slot("B").bootable
    assert_no_shell(result)


def corrupt_good_slot_a(disk, tries: int) -> None:
    from bay0.formats import bootctl as bcf

    disk.set_state(bcf.mark_good(disk.state(), "A"))
    with_tries(disk, "A", tries)
    for block in range(1, 700):  # the squashfs metadata the mount reads is in here
        disk.corrupt("spine_a", block=block)


def test_corrupt_good_slot_out_of_tries_is_caught_at_boot_and_b_boots(disk, boot) -> None:
    # A good slot spends tries too (bay0 refills them once it confirms the slot): one
    # that stopped reaching that point is read end to end on its last try, so a corrupt
    # good slot cannot restart the machine in a loop.
    corrupt_good_slot_a(disk, tries=1)
    result = boot(disk)
    assert result.outcome == qemu.POWEROFF
    assert "bay0: READY slot=B" in result.lines("bay0: ")
    assert any("slot A: dm-verity check failed" in line for line in init_lines(result))
    assert not disk.state().slot("A").bootable


def test_corruption_met_at_runtime_restarts_the_machine_and_costs_a_try(disk, boot) -> None:
    # With tries left there is no read-through: dm-verity's restart-on-corruption fires
    # when the root is read (-no-reboot turns it into an exit), and the try is spent.
    corrupt_good_slot_a(disk, tries=3)
    result = boot(disk)
    assert result.outcome == qemu.REBOOT
    assert not result.lines("bay0: ")
    assert not any("verifying" in line for line in init_lines(result))
    state = disk.state()
    assert state.last_boot == "A" and state.slot("A").tries_left == 2 and state.slot("A").good


def test_blank_boot_control_powers_off(disk, boot) -> None:
    disk.write_at("spine_state", 0, bytes(8192))
    result = boot(disk)
    assert result.outcome == qemu.POWEROFF
    assert any("no valid boot-control record on /dev/vda4" in line for line in init_lines(result))
    assert not result.lines("bay0: ")
    assert_no_shell(result)


def patched_initrd(boot_kit, e2e_dir, name: str, patch) -> Path:
    """The test initramfs built from a copy of initramfs/ that ``patch(tree)`` changed."""
    import dataclasses
    import shutil

    from pipeline import initramfs
    from pipeline.paths import PROJECT_ROOT

    tree = e2e_dir / name
    shutil.copytree(PROJECT_ROOT / "initramfs", tree, dirs_exist_ok=True)
    patch(tree)
    spec = dataclasses.replace(initramfs.test_spec(boot_kit[0]), init_dir=tree)
    return initramfs.build_initramfs(spec, e2e_dir / f"{name}.cpio.gz")


def edit_init(old: str, new: str):
    """A patch for patched_initrd: replace ``old`` (which must occur once) in /init."""
    def patch(tree: Path) -> None:
        init = (tree / "init").read_text()
        assert init.count(old) == 1, old
        (tree / "init").write_text(init.replace(old, new))
    return patch


def test_an_unexpected_init_failure_powers_off_not_a_shell(disk, boot_kit, e2e_dir, boot) -> None:
    # An initramfs whose bootctl.sh is missing: sourcing it makes the shell exit,
    # and the EXIT trap must power off rather than let the kernel panic or a shell run.
    initrd = patched_initrd(boot_kit, e2e_dir, "broken-init", lambda tree: (tree / "lib" / "bootctl.sh").unlink())
    result = boot(disk, initrd=initrd)
    assert result.outcome == qemu.POWEROFF
    assert init_lines(result)[-1] == "spine-init: powering off"
    assert not result.lines("bay0: ")
    assert_no_shell(result)


def test_flashed_b_boots_on_trial_then_stays_once_marked_good(disk, boot) -> None:
    from bay0.formats import bootctl as bcf

    a = disk.state().slot("A")
    disk.set_state(bcf.activate(disk.state(), "B", version="test-b", root_hash=a.root_hash,
                                salt=a.salt, data_size=a.data_size, hash_offset=a.hash_offset))
    result = boot(disk)
    assert "bay0: READY slot=B" in result.lines("bay0: ")
    assert disk.state().slot("B").tries_left == 2 and not disk.state().slot("B").good
    disk.set_state(bcf.mark_good(disk.state(), "B"))  # what `spinectl mark-good` does offline
    assert disk.state().slot("B").tries_left == bcf.DEFAULT_TRIES  # marking refills the tries
    result = boot(disk)
    assert "bay0: READY slot=B" in result.lines("bay0: ")
    assert disk.state().slot("B").tries_left == bcf.DEFAULT_TRIES - 1 and disk.state().slot("B").good


def test_a_wedged_payload_is_reset_by_the_i6300esb_watchdog(disk, boot) -> None:
    from tests.e2e.conftest import APPEND

    result = boot(disk, append=APPEND + " bay0double=wedge", timeout=120)
    assert "bay0-double: wedged" in result.lines("bay0-double:")
    assert result.outcome == qemu.WATCHDOG


def test_a_wedged_init_is_reset_by_the_watchdog_it_armed_and_the_try_stays_spent(
        disk, boot_kit, e2e_dir, boot) -> None:
    # /init stops right before the handover (root and persist mounted, the try spent):
    # nobody pings the watchdog /init armed, so it must reset the machine.
    from tests.e2e.conftest import APPEND

    initrd = patched_initrd(boot_kit, e2e_dir, "wedged-init", edit_init(
        "\nhand_over\n", '\nsay "test: wedged before the handover"\nwhile :; do sleep 3600; done\n'))
    result = boot(disk, initrd=initrd, append=APPEND + " spine.init_watchdog=15", timeout=120)
    assert result.outcome == qemu.WATCHDOG, result.console[-2000:]
    lines = init_lines(result)
    assert any(line.startswith("spine-init: watchdog armed: watchdog0 resets the machine in 15 s")
               for line in lines)
    assert any(line.startswith("spine-init: test: wedged before the handover") for line in lines)
    assert not result.lines("bay0")
    assert disk.state().slot("A").tries_left == 2  # the reset does not give the try back
    assert_no_shell(result)


def test_a_payload_that_never_opens_the_watchdog_is_reset_after_the_handover(disk, boot) -> None:
    # The handover leaves the watchdog counting: a bay0 stuck before it opens the device
    # (a hung import, say) is reset too.
    from tests.e2e.conftest import APPEND

    result = boot(disk, append=APPEND + " spine.init_watchdog=15 bay0double=idle", timeout=120)
    assert "bay0-double: idle" in result.lines("bay0-double:")
    assert result.outcome == qemu.WATCHDOG, result.console[-2000:]
    assert "watchdog did not stop" in result.console  # closed without the magic "V"


def test_a_machine_told_to_power_off_is_not_reset_by_the_watchdog(disk, boot_kit, e2e_dir, boot) -> None:
    # Both slots corrupt and power off failing (patched out): /init disarms the watchdog
    # before it powers off, so the machine stays halted instead of being reset into the
    # same failure. With the watchdog left armed (15 s) QEMU would report a reset.
    from tests.e2e.conftest import APPEND

    initrd = patched_initrd(boot_kit, e2e_dir, "no-poweroff", edit_init(
        "\tpoweroff -f\n\techo o >/proc/sysrq-trigger 2>/dev/null\n", "\n"))
    disk.corrupt("spine_a", block=20)
    disk.corrupt("spine_b", block=30)
    result = boot(disk, initrd=initrd, append=APPEND + " spine.verify=full spine.init_watchdog=15",
                  timeout=40)
    assert init_lines(result)[-2:] == ["spine-init: no bootable slot", "spine-init: powering off"]
    assert result.outcome == qemu.TIMEOUT, result.console[-2000:]  # halted, never reset
    assert_no_shell(result)
