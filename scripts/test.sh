#!/usr/bin/env bash
# The README's test command: installs what it needs (scripts/setup_env.sh), then runs the whole suite, slow
# tests included, with JAX on 8 fake CPU devices (tests/conftest.py), in one worker process per core up to 4
# (pytest-xdist: most of a test's time is single-threaded XLA compilation; each worker holds its own models, so
# more workers cost memory). Arguments go to pytest; `-n 0` runs in one process.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup_env.sh"
cd "$root"
workers=$(nproc)
[ "$workers" -le 4 ] || workers=4
exec .venv/bin/python -m pytest -n "$workers" --dist worksteal "$@"
