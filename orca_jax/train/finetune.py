"""The refine stage's optimizer: the official fine-tuning update rule, with the fine-tune modes as parameter masks.

The trainer calls `update` once per micro-batch with that micro-batch's gradients (of the loss *not* divided by
accum) and applies what it returns; accumulation, clipping, the per-micro-batch schedule and the discarding of an
epoch's incomplete last cycle all happen inside (see `optimizers.accumulate_gradients`):

    optimizer = make_finetune_optimizer(config.optimizer, config.refine, steps_per_epoch)
    opt_state = optimizer.init(params)                       # params: the model's nnx.Param state
    grads = jax.grad(loss_fn)(params, batch)                 # every micro-batch, steps_per_epoch per epoch
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

Fine-tune modes (official `finetune_method`, `src/utils.py::set_param_grad`), mapped from the official (Hugging
Face) parameter names to ours:
- "all" (every config's): everything the official model has.
- "layernorm" (FPT-style): officially, freeze every name containing "layer" unless it contains "layernorm" or
  "LayerNorm". In the body that leaves exactly the norms inside the blocks and Swin's final norm trainable: text
  body `layers.N.attention_norm` / `mlp_norm` (RoBERTa `encoder.layer.N.attention.output.LayerNorm` /
  `output.LayerNorm`), Swin `layers.N.blocks.M.layernorm_before` / `layernorm_after` and `layernorm`. Swin's
  patch-merging norms (`layers.N.downsample.norm`) and relative position bias tables stay frozen, as officially
  (their names contain "layers" but not "layernorm"). Embedder and head train.
- "non-attn": freeze the body's attention `query` / `key` / `value` projections (bias included); the attention
  output projection and Swin's relative position bias tables train, as officially.
- "frozen-body" (linear probe over the embedder): the whole body frozen, embedder and head trained. The official code
  has no such mode; its nearest, the `predictor` stage (predictor_epochs > 0, used by no config), trains exactly the
  embedder and the predictor over a frozen body, and in ORCA the embedder is the part built for the new modality.
In every mode the body's own token embeddings and RoBERTa's tanh pooler stay frozen: ORCA's forward pass never uses
them (the embedder and mean pooling replace them), and the official model deletes them, so they are not in its
optimizer. Freezing them also spares their optimizer state (RoBERTa's word table alone holds 38M parameters).

A frozen parameter gets exactly zero updates (weight decay included) and no optimizer state (`optax.partition`
with `set_to_zero`). `trainable_filter` gives the same set as an nnx filter, for a trainer that differentiates only
the trainable part (`nnx.split(model, nnx.All(nnx.Param, trainable_filter(mode)), ...)`): the optimizer accepts that
subtree as well as the whole parameter state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax
from flax import nnx

from orca_jax.train.optimizers import accumulate_gradients, update_direction, warmup_decay_schedule

FINETUNE_MODES = ("all", "layernorm", "non-attn", "frozen-body")
PARTS = ("embedder", "body", "head")  # OrcaModel's children
UNUSED_BODY_PARTS = ("embeddings", "pooler")  # replaced by the embedder and mean pooling
BODY_NORMS = ("attention_norm", "mlp_norm", "layernorm_before", "layernorm_after", "layernorm")
ATTENTION_INPUTS = ("qkv",)  # the bodies' fused query/key/value projection


def _check_mode(mode: str) -> None:
    if mode not in FINETUNE_MODES:
        raise ValueError(f"finetune_method {mode!r} is not one of {FINETUNE_MODES}.")


def is_trainable(mode: str, path: Sequence[Any]) -> bool:
    """Whether the parameter at `path` (names from the OrcaModel down to the parameter) trains in `mode`."""
    _check_mode(mode)
    path = tuple(path)
    if not path or path[0] not in PARTS:
        raise ValueError(
            f"parameter path {path} does not start with one of {PARTS}: fine-tune modes apply to an OrcaModel's "
            "parameters (nnx.split(model, nnx.Param, ...)), or a subtree of them that keeps the full paths."
        )
    if path[0] != "body":
        return True
    if path[1] in UNUSED_BODY_PARTS or mode == "frozen-body":
        return False
    module = path[-2]  # the module holding the parameter (kernel, bias, scale, ...)
    if mode == "layernorm":
        return module in BODY_NORMS
    if mode == "non-attn":
        return module not in ATTENTION_INPUTS
    return True


def trainable_filter(mode: str) -> Callable[[tuple, Any], bool]:
    """`mode`'s trainable parameters as an nnx filter (combine it with nnx.Param)."""
    _check_mode(mode)
    return lambda path, value: is_trainable(mode, path)


def _names(keypath) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in keypath)


def trainable_mask(params, mode: str):
    """A pytree of bools, True where `mode` trains the parameter: `params`' structure down to its nnx Variables."""
    _check_mode(mode)
    return jax.tree_util.tree_map_with_path(
        lambda keypath, _: is_trainable(mode, _names(keypath)), params, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def make_finetune_optimizer(optimizer_config, refine_config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The refine stage's optimizer, called once per micro-batch (see the module docstring).

    `optimizer_config` is the config's `optimizer` section (name, learning_rate, weight_decay, momentum, b1, b2,
    eps); `refine_config` the `refine` section (finetune_method, accum, clip: global-norm bound, <= 0 for none,
    warmup_epochs, decay_epochs); `steps_per_epoch` the micro-batches the trainer feeds per epoch (official n_train).
    Warm-up and decay lengths are int(epochs * steps_per_epoch) micro-batches, as officially.
    """
    opt, refine = optimizer_config, refine_config
    mode = refine.finetune_method
    _check_mode(mode)
    schedule = warmup_decay_schedule(
        opt.learning_rate, int(refine.warmup_epochs * steps_per_epoch), int(refine.decay_epochs * steps_per_epoch)
    )
    direction = update_direction(
        opt.name, weight_decay=opt.weight_decay, momentum=opt.momentum, betas=(opt.b1, opt.b2), eps=opt.eps
    )
    train = optax.chain(
        accumulate_gradients(direction, refine.accum, steps_per_epoch, refine.clip),
        optax.scale_by_learning_rate(schedule),
    )

    def labels(params):
        return jax.tree.map(lambda trains: "train" if trains else "freeze", trainable_mask(params, mode))

    return optax.partition({"train": train, "freeze": optax.set_to_zero()}, labels)
