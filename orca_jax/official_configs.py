"""The official ORCA hyperparameters (one YAML per task in the official code) as orca-jax configs, shared by
`configs/nb360.py`, `configs/pdebench.py` and `configs/openml.py`.

A row holds the YAML's values in its own vocabulary (`epochs` = fine-tuning epochs, `align_epochs` = its
`embedder_epochs`, `lr` of the fine-tuning optimizer; the align stage uses 10x, as officially). Everything the rows
do not set is the official default already in `orca_jax.config.base_config` (OTDD-exact, epsilon 0.1, step decay
0.2x after align epochs 20/40/60, betas (0.9, 0.98), full fine-tuning).

The `smoke` variant of every task keeps the task and its input shapes but makes the run tiny, for tests and a
first check of a set-up: offline source sets (`python_docs`, `digits`), 200 source examples, 16 training examples
(64 for the 100-class tasks), one align and one refine epoch, batches of 8, and at most 32 tokens per 1D input, so
that a small body (`--config.body.checkpoint=DIR`) with few positions fits.
"""

from __future__ import annotations

import dataclasses

from ml_collections import ConfigDict

from orca_jax.config import base_config

# body name in the official configs -> (checkpoint, the paper's source set, the offline stand-in for smoke runs)
BODIES = {
    "roberta": ("roberta-base", "conll2003", "python_docs"),
    "swin": ("microsoft/swin-base-patch4-window7-224-in22k", "cifar10", "digits"),
}
SMOKE = dict(source_size=200, batch_size=8, max_tokens=32)


@dataclasses.dataclass(frozen=True)
class Official:
    body: str  # "roberta" | "swin"
    epochs: int
    align_epochs: int
    batch_size: int
    accum: int
    clip: float  # <= 0: none
    optimizer: str  # SGD | Adam | AdamW
    lr: float
    weight_decay: float
    momentum: float
    warmup: int
    decay: int
    maxsamples: int = 128
    target_seq_len: int = 512
    dropout: float = 0.0


def parse_variant(arg: str | None, known: list[str], default: str, config_file: str) -> tuple[str, bool]:
    """'TASK' or 'TASK,smoke' (None: `default`) -> (task, smoke)."""
    name, _, flag = (arg or default).partition(",")
    if name not in known or flag not in ("", "smoke"):
        variants = [v for k in known for v in (k, f"{k},smoke")]
        raise ValueError(f"Unknown variant {arg!r} of {config_file}; known: {', '.join(variants)}.")
    return name, flag == "smoke"


def official_config(task: str, row: Official, *, smoke: bool, eval_batch_size: int = 64, smoke_train_size: int = 16,
                    **task_options) -> ConfigDict:
    """The config of `task` with the official hyperparameters `row` and `task_options` (config.task fields: the
    official loss options). `smoke_train_size`: the smoke run's training examples (the align stage needs a class
    with two of them, which 16 random examples of 100 classes lack about one time in three)."""
    c = base_config()
    c.task.name = task
    c.task.update(task_options)
    checkpoint, source, offline_source = BODIES[row.body]
    c.body.checkpoint, c.body.dropout = checkpoint, row.dropout
    c.source.name = source
    c.embedder.target_seq_len = row.target_seq_len
    c.batch_size, c.eval_batch_size = row.batch_size, eval_batch_size
    c.align.update(epochs=row.align_epochs, maxsamples=row.maxsamples)
    c.optimizer.update(name=row.optimizer.lower(), learning_rate=row.lr, weight_decay=row.weight_decay,
                       momentum=row.momentum)
    c.refine.update(epochs=row.epochs, accum=row.accum, clip=row.clip, warmup_epochs=row.warmup,
                    decay_epochs=row.decay)
    if smoke:
        c.source.update(name=offline_source, size=SMOKE["source_size"])
        c.task.train_size = smoke_train_size
        c.batch_size = c.eval_batch_size = SMOKE["batch_size"]
        c.embedder.target_seq_len = min(row.target_seq_len, SMOKE["max_tokens"])
        c.align.update(epochs=1, maxsamples=SMOKE["batch_size"], checkpoint_every=1)
        c.refine.update(epochs=1, accum=1, warmup_epochs=1, decay_epochs=2)
    return c
