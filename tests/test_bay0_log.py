"""bay0's structured log lines and the bounded log file."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from bay0.log import Log, format_event, parse_line


def test_event_line_format():
    line = format_event("persona.start", {"name": "web", "pid": 123, "skip": None, "why": "a b=c"})
    assert line == 'bay0: event=persona.start name=web pid=123 why="a b=c"'


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), st.text(max_size=30), max_size=5))
def test_lines_split_back_into_the_same_pairs(fields):
    fields.pop("event", None)
    line = format_event("x.y", fields)
    assert "\n" not in line
    assert parse_line(line) == {"event": "x.y", **fields}


def test_stable_boot_chain_lines(tmp_path):
    out = tmp_path / "console"
    log = Log(os.open(out, os.O_WRONLY | os.O_CREAT))
    log.ready("B")
    log.violation("/persist is mounted\nwithout noexec")
    assert out.read_text() == "bay0: READY slot=B\nbay0: VIOLATION /persist is mounted without noexec\n"


def test_file_copy_is_bounded_and_rotates(tmp_path):
    console = os.open(tmp_path / "console", os.O_WRONLY | os.O_CREAT)
    log = Log(console, clock=lambda: 1.5)
    path = tmp_path / "persist/logs/bay0.log"
    assert log.attach_file(str(path), max_bytes=300)
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    for i in range(40):
        log.event("tick", n=i)
    assert path.stat().st_size <= 300 and (tmp_path / "persist/logs/bay0.log.1").stat().st_size <= 300
    last = path.read_text().splitlines()[-1]
    assert last == "1.500 bay0: event=tick n=39"
    assert len((tmp_path / "console").read_text().splitlines()) == 40  # the console has everything


def test_file_problems_never_raise(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    log = Log(os.open(tmp_path / "console", os.O_WRONLY | os.O_CREAT))
    assert not log.attach_file(str(blocker / "logs/bay0.log"))
    assert "event=log.file_failed" in (tmp_path / "console").read_text()
    bad = Log(987654)  # a closed console fd
    bad.event("still.fine")


def test_symlinked_log_file_is_not_followed(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/bay0.log").symlink_to(tmp_path / "target")
    log = Log(os.open(tmp_path / "console", os.O_WRONLY | os.O_CREAT))
    assert not log.attach_file(str(tmp_path / "logs/bay0.log"))
    assert not (tmp_path / "target").exists()


def test_rss_is_read_from_proc():
    from bay0.log import rss_kib

    assert 1000 < rss_kib() < 10_000_000
