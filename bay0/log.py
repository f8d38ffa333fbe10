"""bay0's log: one structured line per event on the console, and a bounded file.

A line reads ``bay0: event=persona.start name=web pid=123``: the event name first,
then ``key=value`` pairs in the order given. A value that holds a space, a quote, an
``=`` or a control character is double-quoted with backslash escapes, so every line
splits back into the same pairs (``parse_line``). Two lines keep a fixed, older form
because the boot chain's tests match them: ``bay0: READY slot=A`` and
``bay0: VIOLATION <what>``.

Once /persist is mounted the same lines also go to ``/persist/logs/bay0.log``
(``logs`` is a directory the inventory reserves for bay0, so no persona can bind it),
prefixed with the uptime. The file is bounded: past ``max_bytes`` it is renamed to
``bay0.log.1`` (replacing the previous one) and a new file starts, so the log never
takes more than twice ``max_bytes``. Logging never raises: a console or disk that
fails must not take PID 1 down with it.
"""

from __future__ import annotations

import os
import time

PREFIX = "bay0: "
MAX_BYTES = 1 << 20
_QUOTED = "\"'=\\"  # with whitespace, what makes a value need quotes
# re (and the enum it imports) stays off the boot path: parse_line compiles this on use.
_PAIR = r'([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|\S*)'


def format_value(value: object) -> str:
    """``value`` as it appears after ``key=``: bare when safe, else quoted and escaped."""
    text = str(value)
    if text and not any(c.isspace() or c in _QUOTED for c in text):
        return text
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    escaped = "".join(c if c.isprintable() else _code(ord(c)) for c in escaped)
    return f'"{escaped}"'


def _code(point: int) -> str:
    if point < 0x100:
        return f"\\x{point:02x}"
    return f"\\u{point:04x}" if point < 0x10000 else f"\\U{point:08x}"


def format_event(event: str, fields: dict[str, object]) -> str:
    """The console line (without newline) for ``event`` with ``fields``."""
    parts = [f"event={event}"]
    parts += [f"{key}={format_value(value)}" for key, value in fields.items() if value is not None]
    return PREFIX + " ".join(parts)


def parse_line(line: str) -> dict[str, str]:
    """Split a structured line back into its pairs (tests and log readers use it)."""
    import re

    body = line[len(PREFIX):] if line.startswith(PREFIX) else line
    out = {}
    for key, raw in re.findall(_PAIR, body):
        if raw.startswith('"'):
            raw = re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)", _unescape, raw[1:-1])
        out[key] = raw
    return out


def _unescape(match) -> str:  # a re.Match
    code = match[1]
    if len(code) > 1:
        return chr(int(code[1:], 16))
    return {"n": "\n", "r": "\r", "t": "\t"}.get(code, code)


class Log:
    """Writes event lines to a console fd and, once attached, to a bounded file."""

    def __init__(self, console_fd: int = 1, *, clock=time.monotonic) -> None:
        self.console_fd = console_fd
        self.path: str | None = None
        self.max_bytes = MAX_BYTES
        self._clock = clock
        self._file_fd = -1
        self._size = 0

    @classmethod
    def for_pid1(cls) -> Log:
        """Log to stdout, which the kernel and switch_root hand PID 1 as the console;
        open /dev/console only when fd 1 is missing."""
        try:
            os.fstat(1)
            return cls(1)
        except OSError:
            pass
        try:
            return cls(os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC))
        except OSError:
            return cls(1)

    def event(self, event: str, **fields: object) -> None:
        """Write one structured line (``None`` values are left out)."""
        self.raw(format_event(event, fields))

    def ready(self, slot: str) -> None:
        """The stable boot-chain line ``bay0: READY slot=A``."""
        self.raw(f"{PREFIX}READY slot={slot}")

    def violation(self, what: str) -> None:
        """The stable boot-chain line ``bay0: VIOLATION <what>``."""
        self.raw(f"{PREFIX}VIOLATION {' '.join(what.split())}")

    def raw(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", errors="replace")
        _write_all(self.console_fd, data)
        if self._file_fd >= 0:
            self._to_file(f"{self._clock():.3f} ".encode() + data)

    def attach_file(self, path: str, max_bytes: int = MAX_BYTES) -> bool:
        """Also log to ``path`` (its directory is created, mode 0700); False when impossible."""
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            self.event("log.file_failed", path=path, error=e.strerror)
            return False
        self.detach_file()
        self.path, self.max_bytes, self._file_fd = path, max_bytes, fd
        self._size = os.fstat(fd).st_size
        return True

    def detach_file(self) -> None:
        """Stop writing the file (before /persist is unmounted)."""
        if self._file_fd >= 0:
            os.close(self._file_fd)
        self._file_fd = -1

    def _to_file(self, data: bytes) -> None:
        if self._size + len(data) > self.max_bytes and self.path:
            self._rotate()
        if self._file_fd >= 0 and _write_all(self._file_fd, data):
            self._size += len(data)

    def _rotate(self) -> None:
        assert self.path is not None
        try:
            os.replace(self.path, self.path + ".1")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                         | os.O_NOFOLLOW | os.O_TRUNC, 0o600)
        except OSError:
            self.detach_file()  # the disk went away: the console still has everything
            return
        os.close(self._file_fd)
        self._file_fd, self._size = fd, 0


def _write_all(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        return False
    return True


def rss_kib() -> int | None:
    """This process's resident memory (VmRSS) in KiB, for log lines."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            line = next((x for x in f if x.startswith("VmRSS:")), "")
        return int(line.split()[1]) if line else None
    except (OSError, ValueError, IndexError):
        return None
