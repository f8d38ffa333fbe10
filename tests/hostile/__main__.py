"""``python -m tests.hostile --report``: run the whole hostile suite and print the table.

``--host-only`` skips the QEMU boots. Exit status 1 when any case failed.
"""

from __future__ import annotations

import argparse
import os
import sys

from tests.hostile import guest, host
from tests.hostile.report import counts, evaluate, format_table
from tests.hostile.world import WorldUnavailable, make_world


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="print the case table (the default)")
    parser.add_argument("--host-only", action="store_true", help="do not boot QEMU")
    args = parser.parse_args(argv)
    os.environ.setdefault("TMPDIR", "/var/tmp")
    observations: dict = {}
    skips: dict[str, str] = {}
    try:
        world = make_world()
    except WorldUnavailable as e:
        skips["host"] = str(e)
    else:
        try:
            observations.update(host.run_all(world))
        finally:
            world.close()
    # the host's view of guest-only cases (memfd-exec): shown, not judged
    host_info = {k: observations.pop(k) for k in guest.PERSONA_CASES if k in observations}
    if args.host_only:
        skips["qemu"] = "--host-only: QEMU not booted"
    else:
        found, guest_skips = guest.run_all()
        observations.update(found)
        skips.update(guest_skips)
    rows = evaluate(observations, skips, host_info)
    errors = {k: v for k, v in observations.items() if k.startswith("error/")}
    print(format_table(rows, errors))
    return 1 if counts(rows)["fail"] or errors else 0


if __name__ == "__main__":
    sys.exit(main())
