"""Per-epoch metrics of a stage, as JSON lines and TensorBoard scalars, written as the run goes by process 0.

The history itself lives in the stage's Orbax checkpoint, so after a restart the JSONL file is rewritten whole from
it (no duplicated or missing lines); TensorBoard (tensorboardX, no TensorFlow needed) gets each epoch's scalars as
they come, under `workdir/tensorboard/<stage>` (local workdirs only: tensorboardX cannot write to object stores).
"""

from __future__ import annotations

import json
import sys

from etils import epath

from orca_jax.parallel import is_main_process
from orca_jax.workdir import write_file


def _import_summary_writer():
    """tensorboardX's writer imports torch whenever it is installed, only to accept torch tensors (which we never
    pass), and that import is over a second of every run's start-up. Hidden from that one import (its `except
    ImportError` falls back to NumPy), and visible again right after, so code that does use torch is unaffected."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


SummaryWriter = _import_summary_writer()


class RunLog:
    def __init__(self, workdir: epath.PathLike, stage: str):
        self.stage = stage
        self.jsonl = epath.Path(workdir) / f"{stage}_metrics.jsonl"
        local = "://" not in str(workdir)
        self.tensorboard = SummaryWriter(str(epath.Path(workdir) / "tensorboard" / stage)) if (
            local and is_main_process()) else None

    def write(self, history: list[dict]) -> None:
        """Rewrites the JSONL file from `history` and sends the newest record's numbers to TensorBoard."""
        write_file(self.jsonl, "".join(json.dumps(record) + "\n" for record in history))
        if self.tensorboard is None:
            return
        record = history[-1]
        for name, value in record.items():
            if name != "epoch" and isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"{self.stage}/{name}", value, record["epoch"])
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
