#!/usr/bin/env bash
# Run the whole test suite (unit, host integration with real tools, QEMU end to end).
# Fails on any failure and when no test ran.
set -uo pipefail
cd "$(dirname "$0")/.."
# Scratch (disk images, VM runs) goes to /var/tmp: /tmp is often a small tmpfs, and
# private keys made on the way must stay out of the repository tree.
export TMPDIR="${TMPDIR:-/var/tmp}"
bash scripts/setup.sh || exit 1
.venv/bin/pytest -q -p no:cacheprovider "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "test.sh: no tests ran" >&2
    exit 1
fi
exit "$status"
