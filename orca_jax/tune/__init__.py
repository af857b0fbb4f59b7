"""Budgeted hyperparameter search: the recipe for a new task, found on validation and checked on test.

Why: ORCA's published numbers come from hyperparameters chosen per task, by a search that was never released; one
fixed recipe is far from what many tasks allow. A search here is an Optuna study over a space of config fields
(`spaces`), whose trials are ordinary runs shared by any number of worker processes and machines, with poor trials
stopped early (`study`), and whose answer is the chosen recipe re-run on fresh seeds beside the default one
(`report`). `scripts/tune.py` is the command line.
"""

from orca_jax.tune.report import final_runs, write_report
from orca_jax.tune.spaces import SPACES, Param, parse_space
from orca_jax.tune.study import PRUNERS, Search, metric_direction, open_study, prepare, run_workers, work

__all__ = ["PRUNERS", "SPACES", "Param", "Search", "final_runs", "metric_direction", "open_study", "parse_space",
           "prepare", "run_workers", "work", "write_report"]
