"""A trained model as a self-contained directory: `python scripts/export.py --workdir=W --out=DIR`.

DIR gets the weights as safetensors, the config that rebuilds the model (no reference to the workdir or the body
checkpoint: the fine-tuned body is in DIR/body/, in its family's Hugging Face layout, which
`transformers.AutoModel.from_pretrained` loads), the task record and a model card (README.md) with the task, the
metric, the data shapes, the run's results and the command that trained it. `orca_jax.load_model(DIR)`,
`scripts/predict.py --model=DIR` and `scripts/evaluate.py --model=DIR` read it back. Upload it to the Hugging Face
Hub with `huggingface_hub.upload_folder(folder_path=DIR, repo_id=...)`. Exit status: 0 done; 2 the workdir cannot
be exported or DIR is in the way (the message says why); 1 writing failed (a full disk).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from etils import epath

from orca_jax.cli import run_command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="the --workdir of scripts/train.py")
    p.add_argument("--out", required=True, help="the directory to write (must not exist, or be empty)")
    p.add_argument("--which", choices=("best", "last"), default=None,
                   help="the best-validation or last epoch (default: what the run tested)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body():
        from orca_jax.inference import ModelError, export_model, load_model

        out = epath.Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:  # before loading
            raise ModelError(f"{out} exists and is not empty; choose another --out, or pass --overwrite to replace it.")
        model = load_model(args.workdir, args.which)
        out = export_model(model, args.out, overwrite=args.overwrite)
        files = sorted(os.path.relpath(os.path.join(root, name), out) for root, _, names in os.walk(out)
                       for name in names)
        print(json.dumps({"out": str(out), "which": model.which, "epoch": model.epoch, "files": files}))

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
