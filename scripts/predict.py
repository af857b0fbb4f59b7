"""Predictions of a trained model on new inputs: `python scripts/predict.py --model=DIR --inputs=npz:new.npz
--out=predictions.npz`.

DIR is a workdir of `scripts/train.py` or an export of `scripts/export.py`. The inputs are `x` in an .npz file
(`npz:FILE.npz`) or `DIR/x.npy` (`npz:DIR`, memory-mapped), laid out as the training inputs were (channels last), any
number of rows: they are streamed through the model in batches, sharded over the devices. The output file holds
`outputs` (as the run's test_outputs.npz: logits for class and label kinds, values in the targets' units
otherwise) and, by kind, `probabilities` and `classes` (classification), `probabilities` and `labels` (multi-label,
binary maps). Inputs that do not fit the model (shape, channels, layout, dtype, NaN) are refused before anything
is compiled. Exit status: 0 done; 2 the model directory or the inputs cannot be used (the message says why);
1 the prediction failed (a full disk, non-finite outputs).
"""

from __future__ import annotations

import argparse
import io
import json
import sys

import numpy as np
from etils import epath

from orca_jax.cli import RunError, run_command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a workdir of scripts/train.py or an export of scripts/export.py")
    p.add_argument("--inputs", required=True, help="npz:FILE.npz holding x, or npz:DIR holding x.npy")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--which", choices=("best", "last"), default=None,
                   help="a workdir's best-validation or last epoch (default: what the run tested)")
    p.add_argument("--batch_size", type=int, default=None, help="rows per batch (default: the run's eval_batch_size)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body():
        from orca_jax.inference import load_model
        from orca_jax.inference.inputs import check_inputs, read_arrays
        from orca_jax.inference.model import task_info

        # The inputs are checked against the task record before the model is built or anything compiled.
        x = check_inputs(read_arrays(args.inputs, targets=False)["x"], task_info(args.model))
        model = load_model(args.model, args.which)
        predictions = model.predict(x, batch_size=args.batch_size, progress=True)
        bad = int(np.sum(~np.isfinite(predictions["outputs"])))
        if bad:
            raise RunError(f"{bad} of the model's outputs are NaN or infinite on finite inputs: the model is broken "
                           "(a run that diverged?); nothing was written.")
        if model.info.class_names:
            predictions["class_names"] = np.asarray(model.info.class_names)
        buffer = io.BytesIO()
        np.savez(buffer, **predictions)
        out = epath.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(buffer.getvalue())
        print(json.dumps({"out": str(out), "examples": int(len(x)), "kind": model.kind,
                          "arrays": {k: list(v.shape) for k, v in predictions.items()}}))

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
