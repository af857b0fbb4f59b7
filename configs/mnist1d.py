"""ORCA's align stage on mnist1d (generated locally) with the real pretrained MiniLM as the body, offline.

    python scripts/train.py --config=configs/mnist1d.py --workdir=workdirs/mnist1d
    python scripts/train.py --config=configs/mnist1d.py:smoke --workdir=/tmp/smoke   # seconds, for CI

mnist1d inputs are sequences of 40 values with one channel; with target_seq_len 40 every value becomes a token
(stride 1). The source set is `python_docs` (English sentences from the standard library's docstrings, 10 labels):
the offline stand-in for CoNLL-2003. Expected: the OTDD between embedded mnist1d classes and the source features
falls during the 60 align epochs (see align_distance.png in the workdir).
"""

from orca_jax.config import base_config
from orca_jax.models.packaged import packaged_minilm


def get_config(arg=None):
    c = base_config()
    c.task.name = "mnist1d"
    c.body.checkpoint = packaged_minilm()
    c.embedder.target_seq_len = 40
    c.source.name = "python_docs"
    c.batch_size = 32
    c.align.maxsamples = 128
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-4
    if arg == "smoke":
        c.source.size = 300
        c.align.epochs = 3
        c.align.maxsamples = 16
        c.batch_size = 8
        c.align.checkpoint_every = 2
    elif arg:
        raise ValueError(f"Unknown variant {arg!r} of configs/mnist1d.py; known: smoke.")
    return c
