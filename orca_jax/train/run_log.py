"""Per-epoch metrics of a stage, as JSON lines and TensorBoard scalars, written as the run goes.

The history itself lives in the stage's Orbax checkpoint, so after a restart the JSONL file is rewritten whole from
it (no duplicated or missing lines); TensorBoard (tensorboardX, no TensorFlow needed) gets each epoch's scalars as
they come, under `workdir/tensorboard/<stage>`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tensorboardX import SummaryWriter


class RunLog:
    def __init__(self, workdir: Path, stage: str):
        self.stage = stage
        self.jsonl = Path(workdir) / f"{stage}_metrics.jsonl"
        self.tensorboard = SummaryWriter(str(Path(workdir) / "tensorboard" / stage))

    def write(self, history: list[dict]) -> None:
        """Rewrites the JSONL file from `history` and sends the newest record's numbers to TensorBoard."""
        tmp = self.jsonl.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(record) + "\n" for record in history))
        tmp.replace(self.jsonl)
        record = history[-1]
        for name, value in record.items():
            if name != "epoch" and isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"{self.stage}/{name}", value, record["epoch"])
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()
