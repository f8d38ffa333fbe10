#!/usr/bin/env bash
# The main job on embedded defaults: set up, then run the operator flow end to end in ./demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
# Scratch (disk images, VM runs) goes to /var/tmp: /tmp is often a small tmpfs, and
# private keys made on the way must stay out of the repository tree.
export TMPDIR="${TMPDIR:-/var/tmp}"
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m spinectl.demo "$@"
