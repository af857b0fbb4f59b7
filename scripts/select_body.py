"""Ranks candidate pretrained bodies for a task by the final distance of a short alignment, as the paper selects
bodies, and optionally checks the ranking against full runs.

    python scripts/select_body.py --config=configs/X.py[:variant] --bodies=roberta-base,bert-base-uncased \\
        --workdir=DIR [--align-epochs=10] [--sweep-after --top-k=2 --seeds=0,1,2]

Per body (a hub id or a checkpoint directory): `--align-epochs` align epochs, no refine, in `DIR/selection/`; prints
the ranking (lowest distance first) with each body's source-feature scale, and writes `DIR/ranking.json` and
`DIR/ranking.md`. The distance depends on each body's feature scale (the scale column: mean squared pairwise distance
of its source features); the paper compares raw distances anyway. `--sweep-after` then runs the config in full for
the `--top-k` best bodies (0: all) x `--seeds` in `DIR/sweep/` (see scripts/sweep.py) and adds their test metric to
the ranking. `--config.<field>=<value>` overrides apply to every run. Exit status: 0 done; 1 some run failed (see
the ranking and reports); 2 nothing could start; 75 stopped by SIGTERM, 130 by Ctrl-C (rerun to resume).
"""

import sys

from absl import flags
from ml_collections import config_flags

from orca_jax.cli import run_app, run_command
from orca_jax.config_checks import ConfigError
from orca_jax.parallel import is_main_process
from orca_jax.sweep.bodies import ranking_markdown, select_bodies

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_BODIES = flags.DEFINE_list("bodies", None, "Candidate bodies: hub ids or checkpoint directories, comma-separated.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the alignments, the ranking and the sweep.")
_ALIGN_EPOCHS = flags.DEFINE_integer("align-epochs", 10, "Align epochs of the short alignment per body.", lower_bound=1)
_SWEEP_AFTER = flags.DEFINE_bool("sweep-after", False, "Then run the config in full for the top bodies x seeds.")
_TOP_K = flags.DEFINE_integer("top-k", 0, "How many of the best-ranked bodies --sweep-after runs; 0: all.",
                              lower_bound=0)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the --sweep-after runs, comma-separated.")
flags.mark_flags_as_required(["config", "bodies", "workdir"])


def main(argv):
    del argv
    failed = False

    def body():
        nonlocal failed
        try:
            seeds = [int(s) for s in _SEEDS.value] if _SWEEP_AFTER.value else []
        except ValueError:
            raise ConfigError([f"--seeds={','.join(_SEEDS.value)} must be integers, e.g. 0,1,2"]) from None
        config = _CONFIG.value
        ranking = select_bodies(config, _BODIES.value, _WORKDIR.value, align_epochs=_ALIGN_EPOCHS.value,
                                sweep_seeds=seeds, top_k=_TOP_K.value)
        if is_main_process():
            print(ranking_markdown(ranking, config.align.objective, _ALIGN_EPOCHS.value))
            print(f"ranking: {_WORKDIR.value}/ranking.md")
        failed = any(e["error"] for e in ranking) or any(e.get("sweep", {}).get("failed") for e in ranking)

    status = run_command(body)
    sys.exit(1 if status == 0 and failed else status)


if __name__ == "__main__":
    run_app(main)
