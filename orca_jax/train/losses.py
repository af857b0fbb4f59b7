"""Training losses with the official (PyTorch) semantics, each exact under padding.

Every loss is `loss(outputs, targets, mask=None, **options) -> scalar float32`. `mask` (1 = real example,
0 = padding; any non-negative weights work) lets a fixed-shape last batch padded to the batch size give exactly the
loss of its real examples, with finite gradients even when padded targets are all zero. It has shape `[batch]`, or
for the element-wise losses (BCE, MSE) any shape that broadcasts from the left to the targets (e.g. a pixel mask).

- `cross_entropy`: softmax CE over integer labels, mean over examples; `class_weights` as torch's `weight=`
  (the mean is then weighted: sum w[y] * loss / sum w[y]; OpenML uses 1/frequency).
- `binary_cross_entropy`: `torch.nn.BCEWithLogitsLoss(pos_weight=...)`, mean over all elements (multi-label).
- `mse`: `torch.nn.MSELoss`, mean over all elements.
- `relative_l2`: the official `LpLoss(p=2).rel`, per example ||pred - target|| / ||target|| (flattened), summed
  over the batch by default (`size_average=False`, the Darcy training loss) or averaged (`reduction="mean"`).
- `nrmse` / `rmse`: the official PDEBench losses, per example RMS(pred - target) / RMS(target) (or without the
  denominator), averaged over the batch.

Outputs and targets must have the same shape (no silent broadcasting: the official PSICOV loss broadcast
(B, 512, 512) against (B, 1, 512, 512)); computation is in float32 whatever the model's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp


def _check_same_shape(name: str, outputs: jax.Array, targets: jax.Array) -> None:
    if outputs.shape != targets.shape:
        raise ValueError(
            f"{name}: outputs {outputs.shape} and targets {targets.shape} differ; reshape the targets to the head's "
            "output (e.g. add the channel axis: targets[..., None])."
        )


def _weights(mask: jax.Array | None, shape: tuple[int, ...]) -> jax.Array:
    """The mask as float32 weights broadcast (from the left) to `shape`; all ones when there is none."""
    if mask is None:
        return jnp.ones(shape, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    if mask.shape != shape[: mask.ndim]:
        raise ValueError(f"mask of shape {mask.shape} does not match the leading axes of {shape}.")
    return jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim)), shape)


def _weighted_sum(values: jax.Array, weights: jax.Array) -> jax.Array:
    # Padded rows may hold anything (out-of-range labels give NaN log-probabilities): select, do not multiply.
    return jnp.sum(jnp.where(weights > 0, values, 0.0) * weights)


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    # An all-padding batch (possible on a data shard) has loss 0, not 0 / 0.
    return _weighted_sum(values, weights) / jnp.maximum(jnp.sum(weights), jnp.finfo(jnp.float32).tiny)


def _per_example_mask(name: str, mask: jax.Array | None, batch: int) -> jax.Array:
    if mask is not None and jnp.ndim(mask) != 1:
        raise ValueError(f"{name} is per example: mask must be [batch], got shape {jnp.shape(mask)}.")
    return _weights(mask, (batch,))


def _norm(squares: jax.Array) -> jax.Array:
    """sqrt of a sum of squares with gradient 0 (not inf, hence NaN after masking) where the sum is 0."""
    positive = squares > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *, class_weights: jax.Array | None = None
) -> jax.Array:
    """logits [batch, classes], integer labels [batch]."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy takes logits [batch, classes] and labels [batch], got {logits.shape}, "
                         f"{labels.shape}.")
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    losses = -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    weights = _per_example_mask("cross_entropy", mask, labels.shape[0])
    if class_weights is not None:
        weights = weights * jnp.asarray(class_weights, jnp.float32)[labels]
    return _weighted_mean(losses, weights)


def binary_cross_entropy(
    logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None, *, pos_weight: float | jax.Array | None = None
) -> jax.Array:
    """Element-wise logits and {0, 1} (or soft) targets; `pos_weight` scalar or per class (last axis)."""
    _check_same_shape("binary_cross_entropy", logits, targets)
    x, y = logits.astype(jnp.float32), targets.astype(jnp.float32)
    # -[p y log s(x) + (1 - y) log(1 - s(x))] = (1 - y) x + (1 + (p - 1) y) softplus(-x), stably.
    scale = 1.0 if pos_weight is None else 1.0 + (jnp.asarray(pos_weight, jnp.float32) - 1.0) * y
    losses = (1.0 - y) * x + scale * jax.nn.softplus(-x)
    return _weighted_mean(losses, _weights(mask, losses.shape))


def mse(outputs: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    _check_same_shape("mse", outputs, targets)
    errors = jnp.square(outputs.astype(jnp.float32) - targets.astype(jnp.float32))
    return _weighted_mean(errors, _weights(mask, errors.shape))


def _per_example_ratio(
    name: str, outputs: jax.Array, targets: jax.Array, mask: jax.Array | None, normalized: bool
) -> tuple[jax.Array, jax.Array]:
    """(||pred - target|| / ||target|| per example, or ||pred - target|| when not `normalized`; the weights).
    Padded rows get denominator 1 so that zero targets give neither NaN losses nor NaN gradients."""
    _check_same_shape(name, outputs, targets)
    batch = outputs.shape[0]
    weights = _per_example_mask(name, mask, batch)
    diff = (outputs.astype(jnp.float32) - targets.astype(jnp.float32)).reshape(batch, -1)
    numerator = _norm(jnp.sum(jnp.square(diff), axis=1))
    if not normalized:
        return numerator, weights
    denominator = _norm(jnp.sum(jnp.square(targets.astype(jnp.float32).reshape(batch, -1)), axis=1))
    return numerator / jnp.where(weights > 0, denominator, 1.0), weights


def relative_l2(
    outputs: jax.Array, targets: jax.Array, mask: jax.Array | None = None, *, reduction: str = "sum"
) -> jax.Array:
    ratios, weights = _per_example_ratio("relative_l2", outputs, targets, mask, normalized=True)
    if reduction == "sum":
        return _weighted_sum(ratios, weights)
    if reduction == "mean":
        return _weighted_mean(ratios, weights)
    raise ValueError(f"relative_l2 reduction={reduction!r}; use 'sum' (official Darcy loss) or 'mean'.")


def nrmse(outputs: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    # The RMS's 1 / sqrt(n) cancels between numerator and denominator.
    ratios, weights = _per_example_ratio("nrmse", outputs, targets, mask, normalized=True)
    return _weighted_mean(ratios, weights)


def rmse(outputs: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    norms, weights = _per_example_ratio("rmse", outputs, targets, mask, normalized=False)
    return _weighted_mean(norms / math.sqrt(math.prod(outputs.shape[1:])), weights)


LOSSES: dict[str, Callable[..., jax.Array]] = {
    "cross_entropy": cross_entropy,
    "binary_cross_entropy": binary_cross_entropy,
    "mse": mse,
    "relative_l2": relative_l2,
    "nrmse": nrmse,
    "rmse": rmse,
}


def get_loss(name: str) -> Callable[..., jax.Array]:
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; known losses: {sorted(LOSSES)}.")
    return LOSSES[name]
