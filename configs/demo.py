"""ORCA end to end, offline: mnist1d (generated locally) on the real pretrained MiniLM (all-MiniLM-L6-v2).

    python scripts/train.py --config=configs/demo.py --workdir=workdirs/demo               # align, then refine
    python scripts/train.py --config=configs/demo.py:no_align --workdir=workdirs/no_align  # refine only
    python scripts/train.py --config=configs/demo.py:smoke --workdir=/tmp/smoke            # seconds, for CI
    python scripts/sweep.py --config=configs/demo.py:ablation --sweep=ablations --seeds=0,1,2 \
        --workdir=workdirs/ablations                                                # docs/results.md's table

mnist1d's 40-value sequences become 20 tokens (stride 2) of MiniLM's width 384. The align stage pulls the embedded
digit classes towards MiniLM's own embedding-layer features of English sentences (`python_docs`); the refine stage
fine-tunes everything. `no_align` is the same model fine-tuned without alignment (the official ablation: embedder
initialised anew), so the two test accuracies show what alignment buys. `ablation` is the budget of the ablation
table in docs/results.md: 1,000 training examples (a seeded subset) and 15 refine epochs, 5 to 10 minutes a run on 2
CPU cores. At 15 epochs no variant's validation curve has flattened: the table compares the variants at a fixed
budget, and `--config.refine.epochs=100 --config.refine.decay_epochs=100` runs them to convergence on a bigger machine.
"""

from orca_jax.config import base_config
from orca_jax.models.packaged import packaged_minilm


def get_config(arg=None):
    c = base_config()
    c.task.name = "mnist1d"
    c.body.checkpoint = packaged_minilm()
    c.embedder.target_seq_len = 20
    c.source.name = "python_docs"
    c.batch_size = 32
    c.align.epochs = 60
    c.align.maxsamples = 128
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-4
    c.optimizer.weight_decay = 1e-5
    c.refine.epochs = 4
    c.refine.warmup_epochs = 1
    c.refine.decay_epochs = 4
    c.refine.clip = 1.0
    if arg == "no_align":
        c.align.epochs = 0
    elif arg == "ablation":
        c.task.train_size = 1000
        c.refine.update(dict(epochs=15, warmup_epochs=1, decay_epochs=15))
    elif arg == "successors":  # the successors sweep's budget on 2 cores (docs/results.md)
        c.task.train_size = 500
        c.refine.update(dict(epochs=8, warmup_epochs=1, decay_epochs=8))
    elif arg == "smoke":
        c.source.size = 300
        c.align.epochs = 2
        c.align.maxsamples = 16
        c.align.checkpoint_every = 1
        c.batch_size = 8
        c.task.train_size = 64
        c.refine.epochs = 1
    elif arg:
        raise ValueError(f"Unknown variant {arg!r} of configs/demo.py; known: no_align, ablation, successors, smoke.")
    return c
