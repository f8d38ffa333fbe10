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

# Scripts whose effect is reproduced (or known to be void on a fresh install).
HANDLED = {
    ("busybox", ".post-install"), ("busybox", ".trigger"),
    ("busybox-extras", ".post-install"), ("busybox-extras", ".trigger"),
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
