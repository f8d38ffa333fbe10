"""Install scripts: we do not run them; we emulate the few whose effect a system needs.

Running package scripts at build time would execute package code on the build
host (as root, through chroot) with its clock, randomness and environment, and
the result would differ between hosts. Instead every script is recorded (in
``scripts.tar`` as apk does, and in ``InstalledSet.skipped_scripts``) and the
effects that matter are reproduced here, deterministically:

- busybox ``.post-install`` / ``.trigger`` run ``busybox --install -s``: create a
  symlink ``<applet path> -> /bin/busybox`` for each line of
  ``/etc/busybox-paths.d/busybox`` (the applet list busybox ships for this),
  only where nothing exists yet, so real binaries of other packages win — the
  state apk reaches after its triggers run. Same for busybox-extras.
- busybox-suid's trigger first runs ``bbsuid --install``: each of its applets
  (a list compiled into bbsuid, copied below from aports' bbsuid.c) becomes a
  symlink to /bin/bbsuid unless a real file is there.
- alpine-baselayout's scripts add the ``shadow`` group and make /etc/shadow
  root:shadow 0640; alpine-baselayout-data already ships both, so a fresh
  install needs nothing (checked by a test).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.alpine.fsops import clean_member_name, resolve_dir

APPLET_LISTS = {
    "busybox": ("etc/busybox-paths.d/busybox", "/bin/busybox"),
    "busybox-extras": ("etc/busybox-paths.d/busybox-extras", "/bin/busybox-extras"),
}

# The scripts apk runs when installing into an empty root (upgrade and
# deinstall scripts never run there).
FRESH_INSTALL = (".pre-install", ".post-install", ".trigger")

# Compiled into /bin/bbsuid (aports main/busybox/bbsuid.c); unchanged since 2012.
BBSUID_APPLETS = ("/bin/mount", "/bin/umount", "/bin/su", "/usr/bin/crontab", "/usr/bin/passwd",
                  "/usr/bin/traceroute", "/usr/bin/traceroute6", "/usr/bin/vlock")

# Scripts whose effect is reproduced (or known to be void on a fresh install).
HANDLED = {
    ("busybox", ".post-install"), ("busybox", ".trigger"),
    ("busybox-extras", ".post-install"), ("busybox-extras", ".trigger"),
    ("busybox-suid", ".trigger"),
}


def install_applet_links(root: Path, package: str, mtime: int | None) -> list[str]:
    """Create the applet symlinks of ``package`` (busybox/busybox-extras); return them."""
    list_path, binary = APPLET_LISTS[package]
    listing = root / list_path
    if not listing.is_file() or not (root / binary.lstrip("/")).exists():
        return []
    made = []
    for line in sorted(set(listing.read_text().split())):
        rel = clean_member_name(line, package)
        parent = resolve_dir(root, os.path.dirname(rel))
        link = parent / os.path.basename(rel)
        if os.path.lexists(link):
            continue
        os.symlink(binary, link)
        if mtime is not None:
            os.utime(link, (mtime, mtime), follow_symlinks=False)
        made.append("/" + rel)
    return made


def install_bbsuid_links(root: Path, mtime: int | None) -> list[str]:
    """``bbsuid --install``: replace a symlink (or nothing) by a link to /bin/bbsuid."""
    if not (root / "bin/bbsuid").is_file():
        return []
    made = []
    for applet in BBSUID_APPLETS:
        rel = applet.lstrip("/")
        link = resolve_dir(root, os.path.dirname(rel)) / os.path.basename(rel)
        if os.path.lexists(link):
            if not link.is_symlink():
                continue
            link.unlink()
        os.symlink("/bin/bbsuid", link)
        if mtime is not None:
            os.utime(link, (mtime, mtime), follow_symlinks=False)
        made.append(applet)
    return made
