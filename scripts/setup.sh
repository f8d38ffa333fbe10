#!/usr/bin/env bash
# Install the system packages (Debian/Ubuntu) and the project venv. Idempotent and quick
# when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=$(grep -v '^#' .ci/apt-packages | tr '\n' ' ')
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing system packages:$missing"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi

if [ ! -x .venv/bin/spinectl ] || [ pyproject.toml -nt .venv/.installed ]; then
    echo "setup: creating the Python venv in .venv"
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test]'
    touch .venv/.installed
fi
