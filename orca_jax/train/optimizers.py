"""Optimizers with the official ORCA (PyTorch) semantics, as optax transformations.

PyTorch's `SGD(weight_decay=wd)` and `Adam(weight_decay=wd)` add wd * p to the gradient before the update
("coupled" L2), unlike AdamW, which decays the weights outside the adaptive step. ORCA's configs use all three, so
each is built explicitly: SGD = add_decayed_weights -> trace (heavy-ball momentum, dampening 0) -> -lr;
Adam = add_decayed_weights -> scale_by_adam -> -lr; AdamW = scale_by_adam -> add_decayed_weights -> -lr (the
composition of optax.adamw, the same update as torch.optim.AdamW).

The refine stage's official loop (orca-reference.md (a) stage 4, (h) 15) adds a per-micro-batch learning-rate
schedule (`warmup_decay_schedule`) and gradient accumulation with clipping (`accumulate_gradients`). All three torch
updates are linear in the learning rate (AdamW's decay included), so the rate can be applied last, by
`optax.scale_by_learning_rate(schedule)` placed *after* the accumulation: its counter then advances on every
micro-batch, like the official scheduler, and each update uses the rate of the micro-batch that completes it. That
is why `update_direction` (everything but the rate) is separate from `make_optimizer`.

The two stages' optimizers, from the config's sections, are `align_optimizer` and `refine_optimizer`. Each updates
whatever parameters it is given: the stage passes only its trainable part (`orca_jax.train.finetune`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "adam", "adamw")


def update_direction(
    name: str,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: Sequence[float] = (0.9, 0.98),
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """The official optimizer's update before the learning rate scales it (by -lr); `momentum` is SGD's only."""
    name = name.lower()
    b1, b2 = betas
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum))
    if name == "adam":
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    if name == "adamw":
        return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), optax.add_decayed_weights(weight_decay))
    raise ValueError(f"optimizer {name!r} is not one of {OPTIMIZERS} (the official code's choices).")


def make_optimizer(
    name: str,
    learning_rate: float | optax.Schedule,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: Sequence[float] = (0.9, 0.98),
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """One optimizer step per call; the schedule, if any, counts these steps."""
    return optax.chain(
        update_direction(name, weight_decay=weight_decay, momentum=momentum, betas=betas, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    )


def align_learning_rate(finetune_lr: float, multiplier: float = 10.0) -> float:
    """The embedder's learning rate: the official code uses 10x the fine-tuning rate when that is <= 1e-3."""
    return finetune_lr * multiplier if finetune_lr <= 1e-3 else finetune_lr


def step_decay_schedule(base: float, milestones: Sequence[int] = (20, 40, 60), gamma: float = 0.2) -> optax.Schedule:
    """Official embedder schedule, one step per align epoch: base * gamma^(number of milestones m with epoch > m)."""
    milestones = tuple(int(m) for m in milestones)

    def schedule(count):
        count = jnp.asarray(count)
        drops = sum((count > m).astype(jnp.int32) for m in milestones) if milestones else 0
        return base * gamma**drops

    return schedule


def warmup_decay_schedule(base_lr: float, warmup_steps: int, decay_steps: int) -> optax.Schedule:
    """The official refine schedule (WarmupLR, a LambdaLR stepped every micro-batch): base_lr times a factor that
    rises linearly from 0 at step 0 to 1 at `warmup_steps`, then falls linearly to 0 at `decay_steps`.

    Official factor: step / warmup_steps during warm-up, else (decay_steps - step) / (decay_steps - warmup_steps).
    So with warm-up the very first micro-batch has rate 0 (with accum = 1 the first update is a no-op), without it
    the rate starts at base_lr, and a `decay_steps` beyond the end of training leaves the final rate above 0 (CIFAR-100:
    60 of 200 decay epochs, final factor ~0.72). Changed on purpose: past `decay_steps` the official factor turns
    negative (gradient ascent); here it stays 0. No shipped config gets there (decay_epochs >= epochs in all).
    """
    if not 0 <= warmup_steps < decay_steps:
        raise ValueError(
            f"warm-up/decay schedule needs 0 <= warmup_steps < decay_steps; got warmup_steps={warmup_steps}, "
            f"decay_steps={decay_steps}. Make decay_epochs larger than warmup_epochs."
        )

    def schedule(count):
        step = jnp.asarray(count, jnp.float32)
        warm = step / max(warmup_steps, 1)
        decay = (decay_steps - step) / (decay_steps - warmup_steps)
        return base_lr * jnp.maximum(jnp.where(step < warmup_steps, warm, decay), 0.0)

    return schedule


def _clip_like_torch(updates: optax.Updates, max_norm: float) -> optax.Updates:
    """torch.nn.utils.clip_grad_norm_: scale everything by min(1, max_norm / (global norm + 1e-6)).

    optax.clip_by_global_norm has no 1e-6; it differs by ~1e-6 relative, and the torch form keeps the refine stage
    comparable with the official loop step for step. The norm is taken in float32 whatever the gradients' dtype.
    """
    leaves = jax.tree.leaves(updates)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda x: (x * scale).astype(x.dtype), updates)


class AccumulationState(NamedTuple):
    count: jax.Array  # micro-batches seen, over all epochs
    grad_sum: optax.Updates  # the current cycle's running (clipped) sum
    inner: optax.OptState


def accumulate_gradients(
    inner: optax.GradientTransformation, every: int, steps_per_epoch: int, clip: float = 0.0
) -> optax.GradientTransformation:
    """The official loop's gradient accumulation and clipping, called once per micro-batch with its gradients.

    Official semantics, all kept (they change results):
    - gradients are summed, not averaged: the official loss is not divided by `every`;
    - with clip > 0 the running sum is clipped (torch form, `_clip_like_torch`) after *every* micro-batch, because
      the official code calls clip_grad_norm_ on the accumulating .grad after each backward. It costs one global
      norm per micro-batch, about as much as the summation itself;
    - `inner` (an `update_direction`) steps on the `every`-th micro-batch of each cycle and its update is returned;
      the other micro-batches return zeros and leave `inner`'s state alone;
    - cycles restart at every epoch, whose length is `steps_per_epoch` micro-batches: a cycle left incomplete at an
      epoch's end is discarded (the official `zero_grad()` at each epoch's start), so the trainer needs no reset,
      only to call this exactly `steps_per_epoch` times per epoch.
    optax.MultiSteps sums or averages, but neither clips partial sums nor restarts cycles at epoch boundaries.
    """
    if not 1 <= every <= steps_per_epoch:
        raise ValueError(
            f"accumulation over {every} micro-batches with {steps_per_epoch} per epoch would never (or never fully) "
            "step: use 1 <= accum <= micro-batches per epoch."
        )
    clipped = (lambda tree: _clip_like_torch(tree, clip)) if clip > 0 else (lambda tree: tree)
    if every == 1:  # nothing to sum: no running-sum buffer
        return optax.chain(optax.stateless(lambda updates, params: clipped(updates)), inner)

    def init(params):
        return AccumulationState(jnp.zeros([], jnp.int32), optax.tree_utils.tree_zeros_like(params), inner.init(params))

    def update(updates, state, params=None):
        position = state.count % steps_per_epoch  # micro-batch index within the epoch
        starts = position % every == 0
        grad_sum = clipped(jax.tree.map(lambda s, g: jnp.where(starts, g, s + g), state.grad_sum, updates))

        def step():
            return inner.update(grad_sum, state.inner, params)

        def wait():
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(step)[0])
            return zeros, state.inner

        new_updates, inner_state = jax.lax.cond((position + 1) % every == 0, step, wait)
        return new_updates, AccumulationState(optax.safe_int32_increment(state.count), grad_sum, inner_state)

    return optax.GradientTransformation(init, update)


def align_optimizer(optimizer_config, align_config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The embedder's optimizer and its schedule (one step per align epoch): the fine-tuning optimizer's family at
    `align.lr_multiplier` times its rate (`align_learning_rate`), decayed by `align.gamma` after each milestone."""
    opt = optimizer_config
    schedule = step_decay_schedule(
        align_learning_rate(opt.learning_rate, align_config.lr_multiplier), align_config.milestones,
        align_config.gamma,
    )
    optimizer = make_optimizer(opt.name, schedule, weight_decay=opt.weight_decay, momentum=opt.momentum,
                               betas=(opt.b1, opt.b2), eps=opt.eps)
    return optimizer, schedule


def refine_optimizer(optimizer_config, refine_config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The refine stage's optimizer, called once per micro-batch with that micro-batch's gradients (of the loss *not*
    divided by accum); accumulation, clipping, the per-micro-batch schedule and the discarding of an epoch's
    incomplete last cycle all happen inside (`accumulate_gradients`).

    `optimizer_config` is the config's `optimizer` section (name, learning_rate, weight_decay, momentum, b1, b2,
    eps); `refine_config` the `refine` section (accum, clip: global-norm bound, <= 0 for none, warmup_epochs,
    decay_epochs); `steps_per_epoch` the micro-batches the trainer feeds per epoch (official n_train). Warm-up and
    decay lengths are int(epochs * steps_per_epoch) micro-batches, as officially.
    """
    opt, refine = optimizer_config, refine_config
    schedule = warmup_decay_schedule(
        opt.learning_rate, int(refine.warmup_epochs * steps_per_epoch), int(refine.decay_epochs * steps_per_epoch)
    )
    direction = update_direction(
        opt.name, weight_decay=opt.weight_decay, momentum=opt.momentum, betas=(opt.b1, opt.b2), eps=opt.eps
    )
    return optax.chain(
        accumulate_gradients(direction, refine.accum, steps_per_epoch, refine.clip),
        optax.scale_by_learning_rate(schedule),
    )
