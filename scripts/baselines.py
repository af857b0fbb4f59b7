"""Simple baselines on the split a run uses, in the run's metric: what ORCA has to beat to be worth it.

    python scripts/baselines.py --task=mnist1d --workdir=DIR [--seed=K]
    python scripts/baselines.py --config=configs/X.py[:variant] [--config.<field>=<value> ...] --workdir=DIR

The task and its split are built as `scripts/train.py` builds them from the same config (`task.*` and `seed`), so
give the run's own `--config` and overrides to compare with that run; `--task=NAME|npz:FILE|tfds:NAME` alone uses the
schema's defaults (orca_jax/config.py), and `--task` / `--seed` override the config's. Which baselines apply
follows the task's kind (orca_jax/baselines.py); `--baselines` picks some of them. Each is fitted on the train split,
tuned on the validation split and scored once on the test split; `DIR/baselines.md` (printed) and
`DIR/baselines.json` hold validation and test metric, the chosen hyperparameters and the seconds of each. Exit
status: 0 done; 2 the task, config or flags cannot be used (the message says why); 1 fitting failed.
"""

import sys

from absl import flags
from ml_collections import config_flags

from orca_jax.cli import run_app, run_command
from orca_jax.config import base_config
from orca_jax.config_checks import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file: the run whose split to use.",
                                          lock_config=True)
_TASK = flags.DEFINE_string("task", None, "A task name, npz:FILE or tfds:NAME (overrides the config's task.name).")
_SEED = flags.DEFINE_integer("seed", None, "The seed that draws the validation split (default: the config's).")
_BASELINES = flags.DEFINE_list("baselines", [], "Some of the baselines (default: all that apply to the task).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for baselines.json and baselines.md.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv

    def body():
        from orca_jax.baselines import TABLE_FILE, baselines_markdown, run_baselines

        if _CONFIG.value is None and not _TASK.value:
            raise ConfigError(["give --task=NAME (mnist1d, digits, npz:FILE, tfds:NAME) or --config=configs/X.py, the "
                               "config of the run to compare with"])
        config = base_config() if _CONFIG.value is None else _CONFIG.value
        with config.unlocked():
            config.task.name = _TASK.value or config.task.name
            config.seed = config.seed if _SEED.value is None else _SEED.value
        report, _ = run_baselines(config, _WORKDIR.value, names=_BASELINES.value,
                                  log=lambda line: print(line, flush=True))
        print(f"\n{_WORKDIR.value}/{TABLE_FILE}:\n\n{baselines_markdown(report)}")

    sys.exit(run_command(body))


if __name__ == "__main__":
    run_app(main)
