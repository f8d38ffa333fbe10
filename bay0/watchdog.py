"""The hardware watchdog (Documentation/watchdog/watchdog-api.rst), ioctls only.

Opening the device starts the timer. bay0 asks for a timeout, reads back the one the
driver chose (hardware rounds or clamps it), logs whether the last reset was the
watchdog's (``WDIOF_CARDRESET`` in ``WDIOC_GETBOOTSTATUS``), and pings with
``WDIOC_KEEPALIVE`` every timeout/3 — only from the main loop, after the invariant
checks pass. It never writes the magic ``V``: the fd is close-on-exec and never
closed, so if bay0 dies or wedges the timer runs out and the machine resets.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

from bay0.errors import SpineError
from bay0.frozen import Frozen

# linux/watchdog.h: _IOR/_IOWR('W', n, ...)
WDIOC_GETSUPPORT = 0x80285700
WDIOC_GETSTATUS = 0x80045701
WDIOC_GETBOOTSTATUS = 0x80045702
WDIOC_KEEPALIVE = 0x80045705
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707
WDIOF_CARDRESET = 0x0020
WDIOF_SETTIMEOUT = 0x0080
WDIOF_MAGICCLOSE = 0x0100
WDIOF_KEEPALIVEPING = 0x8000

DEVICES = ("/dev/watchdog0", "/dev/watchdog")
DEFAULT_TIMEOUT = 30
_INFO = struct.Struct("=II32s")  # struct watchdog_info: options, firmware_version, identity


class WatchdogError(SpineError):
    """The watchdog could not be opened, configured or pinged.

    (Local subclass until bay0/errors.py grows a device error class.)
    """

    default_hint = "the Spine kernel needs a watchdog driver (i6300esb in QEMU) loaded"


class Support(Frozen):
    """What ``WDIOC_GETSUPPORT`` reports."""

    __slots__ = ("identity", "options", "firmware")

    def __init__(self, identity: str, options: int, firmware: int) -> None:
        self._set(identity=identity, options=options, firmware=firmware)


class Watchdog:
    """An open watchdog device; ``keepalive`` is the only thing the main loop calls."""

    def __init__(self, fd: int, path: str, timeout: int, support: Support | None,
                 boot_status: int) -> None:
        self.fd = fd
        self.path = path
        self.timeout = timeout
        self.support = support
        self.boot_status = boot_status
        self.last_ping = 0.0

    @classmethod
    def open(cls, path: str, timeout: int = DEFAULT_TIMEOUT) -> Watchdog:
        """Open ``path`` (the timer starts), set ``timeout`` seconds and read it back.

        Raises ``WatchdogError`` naming the device and the step (open, an ioctl).
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise WatchdogError(f"watchdog {path}: open failed: {e.strerror}") from e
        try:
            support = _support(fd, path)
            if support is None or support.options & WDIOF_SETTIMEOUT:
                # A value out of the driver's range (EINVAL) leaves its own: read it back.
                _ioctl_int(fd, path, WDIOC_SETTIMEOUT, "WDIOC_SETTIMEOUT", timeout,
                           tolerate=(errno.EINVAL, errno.EOPNOTSUPP))
            chosen = _ioctl_int(fd, path, WDIOC_GETTIMEOUT, "WDIOC_GETTIMEOUT")
            if chosen <= 0:
                raise WatchdogError(f"watchdog {path}: the driver reports a timeout of {chosen}s")
            boot = _ioctl_int(fd, path, WDIOC_GETBOOTSTATUS, "WDIOC_GETBOOTSTATUS")
            dog = cls(fd, path, chosen, support, boot)
            dog.keepalive(time.monotonic())
        except WatchdogError:
            # Closing without "V" leaves a real watchdog running; a fake one is harmless.
            os.close(fd)
            raise
        return dog

    @property
    def last_reset_by_watchdog(self) -> bool:
        return bool(self.boot_status & WDIOF_CARDRESET)

    @property
    def interval(self) -> float:
        """How often to ping: a third of the timeout (Talos does the same)."""
        return self.timeout / 3

    def due(self, now: float) -> float:
        """The monotonic time of the next ping."""
        return self.last_ping + self.interval

    def keepalive(self, now: float) -> None:
        """Ping; raises ``WatchdogError``."""
        _ioctl_int(self.fd, self.path, WDIOC_KEEPALIVE, "WDIOC_KEEPALIVE")
        self.last_ping = now


def find_device(candidates: tuple[str, ...] = DEVICES) -> str | None:
    """The first watchdog device node that exists."""
    return next((p for p in candidates if os.path.exists(p)), None)


def _ioctl_int(fd: int, path: str, request: int, name: str, value: int = 0,
               tolerate: tuple[int, ...] = ()) -> int:
    buf = bytearray(struct.pack("=i", value))
    try:
        fcntl.ioctl(fd, request, buf, True)
    except OSError as e:
        if e.errno in tolerate:
            return value
        why = "not a watchdog device" if e.errno == errno.ENOTTY else e.strerror
        raise WatchdogError(f"watchdog {path}: {name} failed: {why}") from e
    return struct.unpack("=i", buf)[0]


def _support(fd: int, path: str) -> Support | None:
    buf = bytearray(_INFO.size)
    try:
        fcntl.ioctl(fd, WDIOC_GETSUPPORT, buf, True)
    except OSError as e:
        if e.errno == errno.ENOTTY:
            raise WatchdogError(f"watchdog {path}: WDIOC_GETSUPPORT failed: not a watchdog device") from e
        return None  # optional for drivers; the other ioctls still decide
    options, firmware, ident = _INFO.unpack(buf)
    return Support(ident.split(b"\0", 1)[0].decode(errors="replace"), options, firmware)
