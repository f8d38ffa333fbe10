"""The watchdog code against things that are not watchdogs: every failure is precise."""

from __future__ import annotations

import os

import pytest

from bay0 import watchdog
from bay0.log import Log
from bay0.main import Config, open_watchdog


def test_a_regular_file_is_refused_at_the_first_ioctl(tmp_path):
    fake = tmp_path / "watchdog"
    fake.write_bytes(b"")
    with pytest.raises(watchdog.WatchdogError) as info:
        watchdog.Watchdog.open(str(fake), 30)
    assert info.value.message == f"watchdog {fake}: WDIOC_GETSUPPORT failed: not a watchdog device"
    assert "i6300esb" in info.value.hint
    assert fake.read_bytes() == b""  # never the magic "V"


def test_dev_null_is_not_a_watchdog_either():
    with pytest.raises(watchdog.WatchdogError, match="/dev/null: WDIOC_GETSUPPORT failed: not a watchdog"):
        watchdog.Watchdog.open("/dev/null", 30)


def test_a_missing_device_names_the_open(tmp_path):
    with pytest.raises(watchdog.WatchdogError, match=r"watchdog .*/none: open failed: No such file"):
        watchdog.Watchdog.open(str(tmp_path / "none"), 30)


def test_find_device(tmp_path):
    (tmp_path / "b").write_bytes(b"")
    assert watchdog.find_device((str(tmp_path / "a"), str(tmp_path / "b"))) == str(tmp_path / "b")
    assert watchdog.find_device((str(tmp_path / "a"),)) is None


def test_schedule_is_a_third_of_the_timeout():
    dog = watchdog.Watchdog(-1, "/dev/x", 30, None, watchdog.WDIOF_CARDRESET)
    dog.last_ping = 100.0
    assert dog.interval == 10 and dog.due(100.0) == 110.0
    assert dog.last_reset_by_watchdog
    assert not watchdog.Watchdog(-1, "/dev/x", 30, None, 0).last_reset_by_watchdog


def test_keepalive_failure_is_an_error_not_a_silent_skip(tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    dog = watchdog.Watchdog(fd, "/dev/fake", 30, None, 0)
    with pytest.raises(watchdog.WatchdogError, match="/dev/fake: WDIOC_KEEPALIVE failed: not a watchdog"):
        dog.keepalive(1.0)
    os.close(fd)


def test_open_watchdog_logs_failure_and_continues(tmp_path, monkeypatch):
    out = tmp_path / "console"
    fake = tmp_path / "watchdog0"
    fake.write_bytes(b"")
    monkeypatch.setattr(watchdog, "DEVICES", (str(fake),))
    monkeypatch.setattr("bay0.main.find_device", lambda: watchdog.find_device((str(fake),)))
    log = Log(os.open(out, os.O_WRONLY | os.O_CREAT))
    assert open_watchdog(Config("A"), log) is None
    assert out.read_text() == (f"bay0: event=watchdog.failed error=\"watchdog {fake}: "
                               "WDIOC_GETSUPPORT failed: not a watchdog device\"\n")
    monkeypatch.setattr("bay0.main.find_device", lambda: None)
    assert open_watchdog(Config("A"), log) is None
    assert "event=watchdog.absent" in out.read_text()
