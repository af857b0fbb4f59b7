"""Finds the recipe for a task: a budgeted hyperparameter search, then the chosen recipe re-run on fresh seeds.

    python scripts/tune.py --config=configs/X.py[:variant] --space=default --trials=30 --workdir=DIR \\
        [--workers=K] [--storage=URL] [--pruner=median|halving|none] [--trial-seeds=0,1] [--config.<field>=VALUE ...]
    python scripts/tune.py --config=configs/demo.py:ablation --space='lr=log:1e-6:1e-3,bs=8|16|32' --trials=12 \\
        --workdir=DIR

`--config.<field>=<value>` overrides hold for every trial, as in scripts/train.py; the space
(`orca_jax/tune/spaces.py`: default, nb360, pdebench, openml, or the inline form) is searched on top. Trials are
runs in `DIR/trials/<n>/seed<k>`, selected on validation only; the best recipe and the config as given are then run
on `--final-seeds` (a sweep in `DIR/final/`, beside the simple baselines on the same splits unless --nobaselines)
and `DIR/tune.md` reports them with intervals, the search's history, parameter importances, per-epoch curves and its
cost. The study lives in `DIR/study.db` (SQLite), or at `--storage`: an Optuna RDB URL (`postgresql://user@host/db`)
or a journal file path, which the same command on other machines shares (docs/scaling.md). `--workers=K` runs K
worker processes, each on its share of the GPUs (CUDA_VISIBLE_DEVICES) or CPU cores (affinity). Rerunning the
command continues the study: interrupted trials resume from their checkpoints, finished ones are kept, and
`--trials` may grow. Exit status: 0 done; 1 no trial finished, or a final run failed; 2 the search cannot start (a
bad space, seeds, flag or config, or DIR holds another search); 75 stopped by SIGTERM, 130 by Ctrl-C, after a
checkpoint (rerun to resume).
"""

import shlex
import sys

from absl import flags
from etils import epath
from ml_collections import config_flags

from orca_jax.cli import RunError, run_app, run_command, seeds_flag
from orca_jax.config_checks import ConfigError, check_config
from orca_jax.tune import (PRUNERS, Search, final_runs, metric_direction, open_study, parse_space, prepare,
                           run_workers, write_report)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_SPACE = flags.DEFINE_string("space", "default", "A space of orca_jax/tune/spaces.py, or inline: "
                             "'lr=log:1e-6:1e-3,bs=8|16|32'.")
_TRIALS = flags.DEFINE_integer("trials", None, "Trials in the whole study, over all workers and machines.",
                               lower_bound=1)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the search: the study, the trials and the report.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Worker processes on this machine, each on its share of the devices.",
                                lower_bound=1)
_STORAGE = flags.DEFINE_string("storage", "", "The study's storage: an Optuna RDB URL or a journal file path "
                               "(default: an SQLite file in --workdir).")
_PRUNER = flags.DEFINE_enum("pruner", "median", PRUNERS, "How poor trials are stopped early (none: never).")
_TRIAL_SEEDS = flags.DEFINE_list("trial-seeds", [], "Seeds each trial's validation metric is averaged over "
                                 "(default: the config's seed).")
_BASELINES = flags.DEFINE_boolean("baselines", True, "Also fit the simple baselines (orca_jax/baselines.py) on each "
                                  "final seed's split, shown beside the recipes.")
_FINAL_SEEDS = flags.DEFINE_list("final-seeds", ["1000", "1001", "1002"], "Fresh seeds of the final re-runs.")
flags.mark_flags_as_required(["config", "trials", "workdir"])


def base_command(argv: list[str]) -> str:
    """scripts/train.py with this command's --config and fixed overrides: the start of the chosen recipe's line."""
    kept = [a for a in argv[1:] if a.startswith("--config=") or a.startswith("--config.")]
    return " ".join(["python scripts/train.py", *map(shlex.quote, kept)])


def main(argv):
    del argv
    failed = False

    def body():
        nonlocal failed
        config = _CONFIG.value
        check_config(config)  # the recipe's own mistakes, before any worker starts
        try:
            space = parse_space(_SPACE.value, config)
        except ValueError as error:
            raise ConfigError([str(error)]) from None
        trial_seeds = seeds_flag(_TRIAL_SEEDS.value, "trial-seeds") or (config.seed,)
        final_seeds = seeds_flag(_FINAL_SEEDS.value, "final-seeds")
        if not final_seeds or set(final_seeds) & set(trial_seeds):
            raise ConfigError([f"--final-seeds={','.join(_FINAL_SEEDS.value)} must be seeds no trial used (trial "
                               f"seeds: {', '.join(map(str, trial_seeds))}): the test comparison needs fresh ones."])
        metric, direction = metric_direction(config)
        search = Search(config, space, str(epath.Path(_WORKDIR.value).absolute()), _TRIALS.value, trial_seeds,
                        metric, direction, _PRUNER.value, _STORAGE.value)
        prepare(search)
        run_workers(search, _WORKERS.value)
        study = open_study(search)
        if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
            raise RunError(f"no trial of the study finished; their errors are in {search.workdir}/trials and in the "
                           "study (optuna's user attribute 'error'). Fix the cause and rerun with a larger --trials.")
        records = final_runs(search, study, final_seeds, baselines=_BASELINES.value)
        write_report(search, study, records, base_command(sys.argv), metric)
        print(f"results: {search.workdir}/tune.md")
        failed = any(r.status == "failed" for r in records)

    status = run_command(body)
    sys.exit(1 if status == 0 and failed else status)


if __name__ == "__main__":
    run_app(main)
