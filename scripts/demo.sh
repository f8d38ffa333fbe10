#!/usr/bin/env bash
# The main job on embedded defaults: set up, then run the operator flow end to end in ./demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
# Scratch (disk images, VM runs) stays on the project disk: /tmp is often a small tmpfs.
export TMPDIR="${TMPDIR:-$PWD/.tmp}"
mkdir -p "$TMPDIR"
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m spinectl.demo "$@"
