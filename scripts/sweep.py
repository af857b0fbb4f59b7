"""Runs a named sweep of config overrides over seeds and reports means with 95 % Student-t intervals.

    python scripts/sweep.py --config=configs/X.py[:variant] --sweep=ablations --seeds=0,1,2 --workdir=DIR
    python scripts/sweep.py --config=configs/demo.py --sweep=objectives --variants=otdd-annealed,no-align \\
        --seeds=0,1,2 --workdir=DIR --config.refine.epochs=8

`--config.<field>=<value>` overrides apply to every run; the sweep's variants and `--seeds` are set on top. Each
run lives in `DIR/<variant>/seed<k>`; rerunning the command skips finished runs and resumes interrupted ones. The
answer is `DIR/results.md` (with `results.csv`, `runs.csv`, `distance_vs_metric.png`, `results_bars.png`).
`--baselines` adds the simple baselines of scripts/baselines.py, fitted on each seed's split, as rows
`baseline: <name>` of the same tables (in `DIR/baselines/seed<k>`, reused by a rerun on unchanged data). Sweeps
and their variants: `orca_jax/sweep/variants.py` (`SWEEPS`). Compiled programs are cached (`--compile_cache`, on by
default), so the later runs of the same shapes load them instead of compiling. Exit status: 0 every run
finished; 1 some failed (their errors are in the reports; the others ran); 2 the sweep cannot start (unknown sweep,
variant or seeds, or another sweep holds DIR); 75 stopped by SIGTERM, 130 by Ctrl-C, after a checkpoint (rerun to
resume).
"""

import sys

from absl import flags
from ml_collections import config_flags

from orca_jax.cli import run_app, run_command, seeds_flag
from orca_jax.config_checks import ConfigError
from orca_jax.parallel import is_main_process
from orca_jax.sweep.runner import run_sweep
from orca_jax.sweep.variants import SWEEPS, select_variants

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_SWEEP = flags.DEFINE_enum("sweep", None, sorted(SWEEPS), "A built-in sweep of orca_jax/sweep/variants.py.")
_VARIANTS = flags.DEFINE_list("variants", [], "A subset of the sweep's variants (those they align from are added).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds, comma-separated.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the sweep: one sub-workdir per run, and the reports.")
_BASELINES = flags.DEFINE_bool("baselines", False, "Also fit the simple baselines on each seed's split and report "
                               "them beside the runs.")
flags.mark_flags_as_required(["config", "sweep", "workdir"])


def main(argv):
    del argv
    failed = False

    def body():
        nonlocal failed
        try:
            variants = select_variants(SWEEPS[_SWEEP.value], _VARIANTS.value)
        except ValueError as error:
            raise ConfigError([str(error)]) from None
        seeds = seeds_flag(_SEEDS.value, "seeds")
        records = run_sweep(_CONFIG.value, variants, seeds, _WORKDIR.value, baselines=_BASELINES.value)
        if is_main_process():
            print(f"results: {_WORKDIR.value}/results.md")
        failed = any(r.status == "failed" for r in records)

    status = run_command(body)
    sys.exit(1 if status == 0 and failed else status)


if __name__ == "__main__":
    run_app(main)
