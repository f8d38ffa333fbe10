"""bay0.main: settings from argv and the kernel command line; boot to READY or VIOLATION."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bay0 import invariants, main
from tests.test_bay0_pid1 import run_as_pid1


@pytest.mark.parametrize(("text", "expected"), [
    ("", {}),
    ("console=ttyS0 quiet  spine.slot=B", {"console": "ttyS0", "quiet": "", "spine.slot": "B"}),
    ('a="x y" b=1 a=2', {"a": "2", "b": "1"}),
    ('init=/sbin/bay0 spine.test.wedge=1\n', {"init": "/sbin/bay0", "spine.test.wedge": "1"}),
    ('x="quoted=eq"', {"x": "quoted=eq"}),
])
def test_parse_cmdline(text, expected):
    assert main.parse_cmdline(text) == expected


def test_config_argv_wins_over_cmdline_and_defaults_hold():
    config = main.parse_config(["--slot=B"], {"spine.slot": "A"})
    assert (config.slot, config.good_after, config.watchdog_timeout) == ("B", 120.0, 30)
    assert main.parse_config([], {"spine.slot": "A"}).slot == "A"
    assert main.parse_config([], {}).slot is None


def test_config_bad_values_are_reported_and_ignored():
    config = main.parse_config(["--slot=C"], {"spine.good_after": "soon", "spine.watchdog": "1",
                                              "spine.test.wedge": "1", "spine.test.other": "0"})
    assert config.slot is None and config.good_after == 120.0 and config.watchdog_timeout == 30
    assert config.problems == ("slot 'C' is not A or B",
                               "spine.good_after='soon' is not a number in 0..86400",
                               "spine.watchdog='1' is not a number in 2..3600")
    assert config.hook("wedge") and not config.hook("other") and not config.hook("absent")
    good = main.parse_config([], {"spine.good_after": "5", "spine.watchdog": "12"})
    assert (good.good_after, good.watchdog_timeout, good.problems) == (5.0, 12, ())


def test_unknown_arguments_are_reported_not_fatal():
    config = main.parse_config(["--debug", "--slot=B"], {})
    assert config.slot == "B"
    assert config.problems == ("unknown argument '--debug' (bay0 takes only --slot=A|B)",)


def _run_main(tmp_path, argv, *, check=None, poke=None):
    console = tmp_path / "console"

    def body(report):
        fd = os.open(console, os.O_WRONLY | os.O_CREAT, 0o600)
        os.dup2(fd, 1)
        if check is not None:
            invariants.check_system = check
        main.find_device = lambda: None
        report("started")
        main.main(argv)

    _, status = run_as_pid1(body, timeout=20, after_start=poke)
    return console.read_text(), status


def test_main_as_pid1_reports_violations_then_reboots(tmp_path):
    """The real host breaks the invariants: VIOLATION lines, then reboot(2) (SIGHUP in a PID ns)."""
    out, status = _run_main(tmp_path, ["--slot=A"])
    lines = out.splitlines()
    assert lines[0].startswith("bay0: event=start slot=A pid=1 ")
    violations = [x for x in lines if x.startswith("bay0: VIOLATION ")]
    assert any(x.startswith("bay0: VIOLATION / ") for x in violations), lines
    assert "READY" not in out
    assert lines[-1].startswith('bay0: event=reboot reason="invariant violated: ')
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGHUP


def test_main_as_pid1_reaches_ready_and_reboots_on_sigterm(tmp_path):
    def poke(host_pid, lines):
        deadline = time.monotonic() + 10
        while "READY" not in (tmp_path / "console").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(host_pid, signal.SIGTERM)

    out, status = _run_main(tmp_path, ["--slot=B"], check=lambda: [], poke=poke)
    lines = out.splitlines()
    assert "bay0: READY slot=B" in lines
    assert "bay0: event=watchdog.absent hint=\"load the watchdog driver (i6300esb in QEMU)\"" in lines
    assert lines[-1] == 'bay0: event=reboot reason="SIGTERM received"'
    assert os.WTERMSIG(status) == signal.SIGHUP


def test_kernel_hardening_writes_each_key_and_reports_absent_ones(tmp_path):
    import os

    from bay0 import main as bay0_main
    from bay0.log import Log, parse_line

    present = [key for key, _ in bay0_main.HARDENING if key != "vm/memfd_noexec"]
    for key in present:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_text("0\n")
    console = tmp_path / "console"
    log = Log(os.open(console, os.O_WRONLY | os.O_CREAT))
    outcome = bay0_main.harden_kernel(log, root=str(tmp_path))
    assert outcome["vm/memfd_noexec"] == "absent"
    for key, value in bay0_main.HARDENING:
        if key in present:
            assert (tmp_path / key).read_text() == value and outcome[key] == value
    event = parse_line(console.read_text().splitlines()[-1])
    assert event["event"] == "sysctl.hardened" and event["absent"] == "vm.memfd_noexec"


# Modules bay0 may import before READY: each extra one costs boot time under TCG,
# where every .pyc is read cold through dm-verity (docs/implementation/bay0.md).
HEAVY_BEFORE_READY = ("dataclasses", "inspect", "typing", "ctypes", "re", "enum", "signal",
                      "bay0.sys.mount", "bay0.inventory_store", "bay0.supervisor", "cryptography")


def test_the_boot_path_imports_nothing_heavy():
    root = str(Path(__file__).resolve().parent.parent)
    code = f"import sys; sys.path.insert(0, {root!r}); import bay0.main; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert [m for m in HEAVY_BEFORE_READY if m in out] == []


def test_config_is_an_immutable_value():
    a, b = main.Config("A", test={"wedge": "1"}), main.Config("A", test={"wedge": "1"})
    assert a == b and a != main.Config("B") and a.hook("wedge")
    assert main.Config("A").test == {} and main.Config("A").good_after == main.DEFAULT_GOOD_AFTER
    assert repr(main.Config("A", problems=("x",))).startswith("Config(slot='A', ")
    with pytest.raises(AttributeError):
        a.slot = "B"  # type: ignore[misc]
