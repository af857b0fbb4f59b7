"""The config schema every `configs/*.py` file starts from (ml_collections), with the official defaults.

Sections: `task`, `data`, `body`, `embedder`, `head`, `source` (the proxy source set for alignment), `align`, `optimizer` (the
fine-tuning optimizer; the align stage uses its family at 10x its learning rate), `refine`, `mesh`. A field that a
config file or the command line sets but the schema lacks is an error (configs are locked), so a typo cannot
silently fall back to a default.
"""

import importlib.util
import os

import jax.numpy as jnp
from ml_collections import ConfigDict

from orca_jax.parallel.sharding import DEFAULT_RULES, MIN_SHARD_BYTES


# body.param_dtype / body.dtype names.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
EMBEDDER_INITS = ("auto", "body", "fresh")  # embedder.init
DENSE_1D_HEADS = ("pool", "linear")  # head.dense_1d
BODY_INITS = ("pretrained", "random")  # body.init


def base_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.batch_size = 32  # the task's batch size; the align stage also uses it (see train/align.py)
    c.eval_batch_size = 256  # evaluation only: at most this many per batch (the validation split in equal batches)
    # name: a registered task, npz:PATH (your arrays) or tfds:NAME (orca_jax/data/tasks.py). kind "" = the task's
    # own (orca_jax/data/kinds.py). test_fraction: held out as test where the data has none. train_size > 0: a
    # seeded subset. num_classes 0 = from the data. Loss options (orca_jax/train/task_loss.py): loss / metric /
    # class_weighting "" = the kind's; pos_weight, clip_targets <= 0 = none; normalize_targets none | elementwise
    # | global.
    c.task = ConfigDict(
        dict(
            name="mnist1d", kind="", data_dir="", val_fraction=0.1, test_fraction=0.2, train_size=0, num_classes=0,
            loss="", metric="", class_weighting="", pos_weight=0.0, clip_targets=0.0, normalize_targets="none",
            ignore_meta="",
        )
    )
    # Input pipelines (orca_jax/data/loader.py): batches read ahead on `threads` threads, or in `workers` processes.
    c.data = ConfigDict(dict(threads=2, prefetch=4, workers=0))
    # checkpoint: a hub id or a snapshot directory. param_dtype: how parameters and optimizer state are stored (keep
    # float32: at ORCA's learning rates bfloat16 rounds updates away); dtype: the compute dtype of matmuls and
    # convolutions (bfloat16 for speed on accelerators; softmax and layer-norm statistics stay float32). dropout: the
    # body's hidden and attention dropout (the official drop_out; 0 in the NAS-Bench-360 and PDE configs), < 0 keeps
    # the checkpoint's.
    # init: pretrained, or random (the checkpoint's architecture freshly initialised with `seed`: the baseline that
    # shows what pretraining contributes).
    c.body = ConfigDict(
        dict(checkpoint="roberta-base", init="pretrained", param_dtype="float32", dtype="float32", dropout=-1.0)
    )
    # target_seq_len: most tokens a 1D input becomes (official default 512); antialias: 2D resize (see embedders).
    # init: auto (official: copied from the body when the align stage runs, fresh otherwise) | body | fresh; "body"
    # without alignment separates what the body's initialisation gives from what alignment gives.
    # norm: the official layer norm of each 1D token (True); False keeps the patches' amplitude (docs/method.md).
    c.embedder = ConfigDict(dict(target_seq_len=512, antialias=False, init="auto", norm=True))
    # dense_1d: the 1D dense head, "pool" (official: each token's state average-pooled, no parameters) or "linear"
    # (a learned map of each token's state to its positions; docs/method.md).
    c.head = ConfigDict(dict(dense_1d="pool"))
    # name: python_docs (offline) or conll2003 for text bodies, cifar10 or digits (offline) for Swin.
    # cache_dir "" = ~/.cache/orca_jax/source_features; data_dir "" = tensorflow-datasets' default.
    c.source = ConfigDict(dict(name="conll2003", size=5000, seed=0, cache_dir="", data_dir=""))
    c.align = ConfigDict(
        dict(
            epochs=60,  # optimizer steps (one per epoch over all target classes); 0 skips the stage
            objective="otdd-exact",  # otdd-exact | otdd-gaussian | mmd | l2 | none (train/align.py OBJECTIVES)
            solver="annealed",  # annealed (official geomloss schedule) | converged
            epsilon=0.1,
            maxsamples=256,
            lr_multiplier=10.0,
            milestones=(20, 40, 60),
            gamma=0.2,
            checkpoint_every=10,
            # Beyond this many classes the align step is streamed a chunk of classes at a time, so host and device
            # memory do not grow with the classes (train/align.py::AlignStep); 0 = always all at once.
            chunk_classes=16,
            # Label matching after the alignment (orca_jax/train/label_matching.py; off with epochs=0): a source head
            # trained on the body's pooled source features (head_steps full-batch AdamW steps at head_lr, penalty
            # rho / N * sum max(0, |grad| - tau)^2), then the embedder alone for `epochs` one-step epochs towards
            # confident, class-separating source predictions (marginal_weight: the marginal entropy's weight); its
            # rate is the fine-tuning one x lr_multiplier, decayed by gamma at milestones.
            label_matching=ConfigDict(dict(epochs=0, lr_multiplier=10.0, milestones=(), gamma=1.0, checkpoint_every=10,
                                           marginal_weight=1.0, head_steps=500, head_lr=0.01, tau=0.4, rho=100.0)),
        )
    )
    c.optimizer = ConfigDict(
        dict(name="adamw", learning_rate=1e-4, weight_decay=0.0, momentum=0.9, b1=0.9, b2=0.98, eps=1e-8)
    )
    c.refine = ConfigDict(
        dict(
            epochs=0,  # 0 skips the stage
            finetune_method="all",  # all | layernorm | non-attn | frozen-body | lora (see train/finetune.py)
            # With finetune_method=lora: adapters of this rank on the body projections named in targets (qkv, out,
            # mlp_in, mlp_out), scaled by alpha / rank (orca_jax/models/lora.py).
            lora=ConfigDict(dict(rank=8, alpha=16.0, targets="qkv,out,mlp_in,mlp_out")),
            # PaRe (orca_jax/train/pare.py; off unless enabled): the fraction of the target's tokens replaced by
            # gated source tokens falls linearly from start_fraction (first epoch) towards end_fraction; the first
            # soft_epochs select by Gumbel soft top-k at temperature tau (the gate learns), later ones by top-k.
            # Source examples: the source section's set, through the body's own embedding.
            pare=ConfigDict(dict(enabled=False, start_fraction=0.5, end_fraction=0.1, soft_epochs=5, tau=0.9)),
            accum=1,  # micro-batches summed per optimizer step (the loss is not divided, as officially)
            clip=-1.0,  # global-norm bound, <= 0 for none
            warmup_epochs=5,
            decay_epochs=60,
            checkpoint_every=1,
            # best: test with the parameters of the best validation epoch; last: with the last epoch's (for
            # validation splits too small to select on).
            select="best",
            # An `aligned_embedder` directory of another run's workdir to start from (align.epochs must be 0), so a
            # sweep over refine settings aligns once; "" = none.
            init_embedder="",
        )
    )
    # Device mesh axes and parameter sharding rules: see orca_jax/parallel/sharding.py (the one place they are
    # documented). -1 on one axis: all remaining devices.
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, rules=DEFAULT_RULES, min_shard_bytes=MIN_SHARD_BYTES))
    return c


def config_module(path: str | os.PathLike):
    """A config file as a module: its `get_config`, and the tables some hold (the official hyperparameters)."""
    spec = importlib.util.spec_from_file_location("orca_jax_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_file(path: str | os.PathLike, variant: str | None = None) -> ConfigDict:
    """`get_config(variant)` of a config file, for programs that run configs without the command line's flags."""
    return config_module(path).get_config(variant)
