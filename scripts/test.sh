#!/usr/bin/env bash
# The README's test command: installs what it needs (scripts/setup_env.sh), then runs the whole suite, slow
# tests included, with JAX on 8 fake CPU devices (tests/conftest.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup_env.sh"
cd "$root"
exec .venv/bin/python -m pytest "$@"
