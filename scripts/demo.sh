#!/usr/bin/env bash
# The main job on embedded defaults: set up, then run the operator flow end to end in ./demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m spinectl.demo "$@"
