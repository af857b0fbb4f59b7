"""Optimizers with the official ORCA (PyTorch) semantics, as optax transformations.

PyTorch's `SGD(weight_decay=wd)` and `Adam(weight_decay=wd)` add wd * p to the gradient before the update
("coupled" L2), unlike AdamW, which decays the weights outside the adaptive step. ORCA's configs use all three, so
each is built explicitly: SGD = add_decayed_weights -> trace (heavy-ball momentum, dampening 0) -> -lr;
Adam = add_decayed_weights -> scale_by_adam -> -lr; AdamW = optax.adamw (same update as torch.optim.AdamW).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(
    name: str,
    learning_rate: float | optax.Schedule,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: Sequence[float] = (0.9, 0.98),
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    name = name.lower()
    b1, b2 = betas
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum), optax.scale_by_learning_rate(learning_rate)
        )
    if name == "adam":
        return optax.chain(
            optax.add_decayed_weights(weight_decay),
            optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
            optax.scale_by_learning_rate(learning_rate),
        )
    if name == "adamw":
        return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"optimizer {name!r} is not one of {OPTIMIZERS} (the official code's choices).")


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
