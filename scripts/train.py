"""Runs ORCA from a config file: `python scripts/train.py --config=configs/X.py[:variant] --workdir=DIR`.

Override any field with `--config.<field>=<value>` (e.g. `--config.align.epochs=10`); a mistyped field is an
error. Re-running with the same workdir resumes what a previous, interrupted run left there; `--restart` starts it
over. Exit status: 0 done; 1 the run failed (the message says why and what to do); 2 the config, the data, the
weight files or the workdir cannot be used (nothing was trained); 75 stopped by SIGTERM, 130 by Ctrl-C, after saving
a checkpoint (rerun the same command to resume; a second Ctrl-C stops at once, without saving).
"""

import json
import sys

from absl import flags
from ml_collections import config_flags

from orca_jax.cli import run_app, run_command
from orca_jax.pipeline import run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the summary.")
_RESTART = flags.DEFINE_bool("restart", False, "Delete the workdir's checkpoints and results and start over.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv

    def body():
        summary = run(_CONFIG.value, _WORKDIR.value, restart=_RESTART.value)
        print(json.dumps(summary, indent=2))

    sys.exit(run_command(body))


if __name__ == "__main__":
    run_app(main)
