"""The warden's decisions: errors answered deliberately, SIGHUP rescans, startup with no
inventory stays up, mark-good through the real boot-control code."""

from __future__ import annotations

import os
import signal

import pytest

from bay0 import bootmark, main
from bay0 import inventory_store as inv_store
from bay0.formats import bootctl
from bay0.log import Log, parse_line
from bay0.supervisor import ContainmentError, PersonaFault


class Rebooted(Exception):
    pass


class FakeMachine:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def reboot(self, reason):
        self.calls.append(("reboot", reason))
        raise Rebooted(reason)

    def poweroff(self, reason):
        self.calls.append(("poweroff", reason))
        raise Rebooted(reason)


@pytest.fixture
def warden(tmp_path):
    console = tmp_path / "console"
    log = Log(os.open(console, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    w = main.Warden(main.Config("A"), log, FakeMachine(), None, check=lambda: [])
    w.store_root = str(tmp_path / "persist/spine")
    w.events = lambda name: [e for e in map(parse_line, console.read_text().splitlines())
                             if e.get("event") == name]
    return w


def test_violations_reboot_after_logging(warden, tmp_path):
    warden.check = lambda: ["/persist is mounted without noexec"]
    with pytest.raises(Rebooted, match="invariant violated: /persist is mounted without noexec"):
        warden.verify_invariants()
    assert "bay0: VIOLATION /persist is mounted without noexec" in (tmp_path / "console").read_text()


@pytest.mark.parametrize(("signo", "call"), [(signal.SIGTERM, "reboot"), (signal.SIGINT, "reboot"),
                                             (signal.SIGUSR2, "poweroff"), (signal.SIGPWR, "poweroff")])
def test_signals(warden, signo, call):
    with pytest.raises(Rebooted):
        warden.on_signal(signo)
    assert warden.machine.calls[0][0] == call


def test_other_signals_are_logged_and_ignored(warden):
    warden.on_signal(signal.SIGWINCH)
    assert warden.events("signal.ignored") == [{"event": "signal.ignored", "signal": "SIGWINCH"}]


def test_errors_are_answered(warden):
    with pytest.raises(Rebooted, match="containment failure: escaped"):
        warden.on_error(ContainmentError("escaped"))
    with pytest.raises(Rebooted, match="unexpected KeyError in the main loop"):
        warden.on_error(KeyError("x"))
    purged = []
    warden.supervisor = type("S", (), {"units": {"web": 1},
                                       "purge": lambda self, n, r: purged.append((n, r))})()
    warden.on_error(PersonaFault("web", "bad"))
    assert purged == [("web", "error: PersonaFault: bad")]
    assert warden.events("error")[-1]["error"] == "PersonaFault: bad"


def test_startup_without_stage_or_inventory_runs_nothing_and_stays_up(warden, monkeypatch):
    monkeypatch.setattr(inv_store, "find_partition", lambda *a, **k: None)
    for _ in warden.startup():
        pass
    assert warden.events("stage.absent")
    none = warden.events("inventory.none")[0]
    assert none["reason"] == "no inventory has been imported yet" and none["personas"] == "0"
    assert warden.supervisor is None and not warden.machine.calls


def test_a_broken_stage_is_logged_and_the_boot_goes_on(warden, monkeypatch):
    def twice(*a, **k):
        raise inv_store.FormatError("partition spine_stage found 2 times (/dev/vda5, /dev/sdb1)")

    monkeypatch.setattr(inv_store, "find_partition", twice)
    list(warden.startup())
    assert warden.events("stage.failed")[0]["error"].startswith("partition spine_stage found 2 times")
    assert warden.events("inventory.none")


def test_sighup_rescans_in_steps(warden, monkeypatch):
    monkeypatch.setattr(inv_store, "find_partition", lambda *a, **k: None)
    warden.on_signal(signal.SIGHUP)
    assert warden.job is not None and warden.events("inventory.rescan")
    warden.tick(0.0)
    assert warden.job is None and warden.events("stage.absent")


def test_mark_good_through_the_tick(warden, tmp_path, monkeypatch):
    bc = bootctl.activate(bootctl.BootControl(), "A", version="1", root_hash="a" * 64, salt="",
                          data_size=4096, hash_offset=4096)
    state = tmp_path / "state"
    state.write_bytes(bootctl.initial_region(bootctl.consume_try(bc, "A")).ljust(1 << 20, b"\0"))
    monkeypatch.setattr(inv_store, "find_partition", lambda name: str(state))
    clock = [0.0]
    warden.marker = bootmark.BootMarker("A", 10, clock=lambda: clock[0])
    monkeypatch.setattr(main, "JOB_SLICE", 0.0)  # one read (1 MiB) per tick
    warden.root_device = str(tmp_path / "root.img")
    (tmp_path / "root.img").write_bytes(bytes(3 << 20))
    warden.job = warden.verify_root()
    warden.tick(0.0)
    assert not warden.events("slot.good")
    clock[0] = 11.0
    warden.tick(0.0)  # uptime reached, but the root is still being read
    assert warden.job is not None and not warden.events("slot.good")
    while warden.job is not None:
        warden.tick(0.0)
    assert warden.root_verified and warden.events("root.verified")[0]["bytes"] == str(3 << 20)
    warden.tick(0.0)
    assert warden.events("slot.good")[0]["slot"] == "A"
    assert bootctl.read_region(state.read_bytes()[:8192])[0].slot("A").good


def test_no_mark_good_without_the_root_read_end_to_end(warden, tmp_path, monkeypatch):
    monkeypatch.setattr(bootmark, "root_device", lambda: (_ for _ in ()).throw(
        FileNotFoundError("the root (0:31) is not on a block device")))
    warden.marker = bootmark.BootMarker("A", 0, clock=lambda: 100.0)
    list(warden.verify_root())
    assert warden.events("root.unverified")[0]["error"] == "the root (0:31) is not on a block device"
    warden.tick(0.0)
    assert not warden.root_verified and not warden.events("slot.good") and not warden.events("slot.mark_failed")


def test_a_root_read_error_reboots_other_errors_leave_it_unconfirmed(warden, monkeypatch):
    def failing(errno_):
        def read_through(device):
            yield
            raise OSError(errno_, os.strerror(errno_))
        return read_through

    warden.root_device = "/dev/dm-0"
    monkeypatch.setattr(bootmark, "read_through", failing(1))
    list(warden.verify_root())
    assert warden.events("root.unverified")[0]["error"] == "Operation not permitted"
    monkeypatch.setattr(bootmark, "read_through", failing(5))  # what dm-verity gives a bad block
    with pytest.raises(Rebooted, match="the root device /dev/dm-0 failed a read"):
        list(warden.verify_root())
    assert warden.events("root.read_failed")[0]["error"] == "Input/output error"
    assert not warden.root_verified


def test_ready_hands_over_to_startup_then_the_root_read(warden, tmp_path, monkeypatch):
    monkeypatch.setattr(inv_store, "find_partition", lambda *a, **k: None)
    warden.root_device = str(tmp_path / "root.img")
    (tmp_path / "root.img").write_bytes(bytes(8192))
    list(warden.after_ready())
    names = [e["event"] for e in map(parse_line, (tmp_path / "console").read_text().splitlines())]
    assert names.index("startup.done") < names.index("root.verified")
    assert warden.root_verified
