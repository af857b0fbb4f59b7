"""ORCA's align stage on scikit-learn's 8x8 digits with a Swin body (the 2D path).

    python scripts/train.py --config=configs/digits.py --workdir=workdirs/digits
    python scripts/train.py --config=configs/digits.py:smoke --config.body.checkpoint=DIR --workdir=/tmp/smoke

The default body is the one ORCA uses for 2D tasks, microsoft/swin-base-patch4-window7-224-in22k (from the Hugging
Face hub or its cache), with the official source set: 5,000 augmented CIFAR-10 training images (through
tensorflow-datasets, which needs tensorflow to prepare them once). The embedder resizes the 8x8 single-channel
digits to 224x224 and tiles Swin's RGB patch weights over the one channel. The smoke variant uses the offline
`digits` source and tiny sizes; on a machine without the hub, point body.checkpoint at a local Swin snapshot.
"""

from orca_jax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.task.name = "digits"
    c.body.checkpoint = "microsoft/swin-base-patch4-window7-224-in22k"
    c.source.name = "cifar10"
    c.batch_size = 32
    c.align.maxsamples = 128
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-4
    if arg == "smoke":
        c.source.name = "digits"
        c.source.size = 200
        c.align.epochs = 2
        c.align.maxsamples = 8
        c.batch_size = 8
        c.align.checkpoint_every = 1
    elif arg:
        raise ValueError(f"Unknown variant {arg!r} of configs/digits.py; known: smoke.")
    return c
