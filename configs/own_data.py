"""ORCA on your own arrays, without code: an .npz file (or a directory of .npy files) with x, y [, x_test, y_test].

    python scripts/train.py --config=configs/own_data.py --config.task.name=npz:data.npz --workdir=W
    python scripts/train.py --config=configs/own_data.py --config.task.name=npz:data.npz \\
        --config.task.kind=dense_1d --workdir=W                       # per-position regression targets
    python scripts/train.py --config=configs/own_data.py:image --config.task.name=npz:images.npz --workdir=W
    python scripts/train.py --config=configs/own_data.py:offline --config.task.name=npz:data.npz --workdir=W

`x` [N, length, channels] runs on a text body (default RoBERTa-base, aligned to CoNLL-2003 features); `:image` takes
`x` [N, height, width, channels] to Swin-base (aligned to CIFAR-10 features). `:offline` uses the packaged MiniLM
and the offline `python_docs` source set (no hub, no tensorflow-datasets). The kind of task (`task.kind`: see
orca_jax/data/kinds.py) defaults to classification for integer class ids; loss options (`task.pos_weight`,
`task.class_weighting`, `task.normalize_targets`, `task.clip_targets`) and the official hyperparameter ranges are
documented in orca_jax/config.py. The align stage's 60 epochs and the refine stage's 20 are a starting point: the
official configs use 20-60 align epochs and 10-200 refine epochs (see the benchmark configs for per-task values).
"""

from orca_jax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.task.name = "npz:data.npz"
    c.batch_size = 32
    c.align.maxsamples = 128
    c.optimizer.update(dict(name="adamw", learning_rate=1e-4, weight_decay=1e-5))
    c.refine.update(dict(epochs=20, warmup_epochs=2, decay_epochs=20, clip=1.0))
    if arg in (None, "text"):
        c.body.checkpoint, c.source.name = "roberta-base", "conll2003"
        c.embedder.target_seq_len = 64
    elif arg == "image":
        c.body.checkpoint, c.source.name = "microsoft/swin-base-patch4-window7-224-in22k", "cifar10"
    elif arg == "offline":
        from orca_jax.models.packaged import packaged_minilm

        c.body.checkpoint, c.source.name = packaged_minilm(), "python_docs"
        c.embedder.target_seq_len = 64
    elif arg == "smoke":  # seconds: pass a small body with --config.body.checkpoint
        c.source.name, c.source.size = "python_docs", 200
        c.embedder.target_seq_len = 8
        c.batch_size, c.eval_batch_size = 8, 16
        c.align.update(dict(epochs=2, maxsamples=8, checkpoint_every=1))
        c.refine.update(dict(epochs=2, warmup_epochs=1, decay_epochs=4))
        c.optimizer.learning_rate = 1e-3
    else:
        raise ValueError(f"Unknown variant {arg!r} of configs/own_data.py; known: text, image, offline, smoke.")
    return c
