"""A trained model's metric on any labelled data: `python scripts/evaluate.py --model=DIR --data=npz:labelled.npz`.

DIR is a workdir of `scripts/train.py` or an export of `scripts/export.py`; the data holds inputs `x` and targets
`y` (and `meta_<name>` arrays for metrics that read per-example metadata, e.g. PSICOV's `meta_length`), in an .npz
file or a directory of .npy files (`npz:DIR`). Prints, as JSON, the task's metric and the other metrics of its
family, computed exactly as the run computed its test metric (`orca_jax.train.refine.evaluate` and
`orca_jax.train.metrics`): on the run's own test split it reproduces summary.json's test metric. Exit status: 0
done; 2 the model directory or the data cannot be used (the message says why); 1 the evaluation failed.
"""

from __future__ import annotations

import argparse
import json
import sys

from orca_jax.cli import run_command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a workdir of scripts/train.py or an export of scripts/export.py")
    p.add_argument("--data", required=True, help="npz:FILE.npz holding x and y, or npz:DIR holding x.npy and y.npy")
    p.add_argument("--which", choices=("best", "last"), default=None,
                   help="a workdir's best-validation or last epoch (default: what the run tested)")
    p.add_argument("--batch_size", type=int, default=None, help="rows per batch (default: the run's eval_batch_size)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body():
        from orca_jax.inference import load_model
        from orca_jax.inference.inputs import META_PREFIX, check_inputs, check_targets, read_arrays
        from orca_jax.inference.model import task_info

        # The data is checked against the task record before the model is built or anything compiled.
        arrays, info = read_arrays(args.data, targets=True), task_info(args.model)
        x = check_inputs(arrays["x"], info)
        y = check_targets(arrays["y"], info, len(x))
        model = load_model(args.model, args.which)
        meta = {name[len(META_PREFIX):]: values for name, values in arrays.items() if name.startswith(META_PREFIX)}
        result = model.evaluate(x, y, meta=meta, batch_size=args.batch_size, progress=True)
        print(json.dumps(result, indent=2))

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
