"""ORCA's MMD alternative to OTDD, with the calling shape of :class:`~orca_jax.ot.cached_loss.OTDDLoss`.

As the official ``MMD_loss``: per target class of n points, n source points drawn uniformly with replacement; a sum
of 5 Gaussian kernels whose base bandwidth is the mean off-diagonal pairwise squared distance of the joint sample
divided by 4 (2^(5//2)), times {1, 2, 4, 8, 16}, held constant for the gradient (``.data`` in the original); the
biased V-statistic mean(K_ss + K_tt − K_st − K_ts). Labels are unused; the per-class split and weighting are ORCA's.
Padding is handled with weights: the source sample of a class has as many real points as the target class.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from orca_jax.ot.cached_loss import check_target_batch
from orca_jax.ot.distance import require_key, value_and_grad
from orca_jax.ot.otdd import check_features

KERNEL_MUL = 2.0
KERNEL_NUM = 5


def multi_kernel_mmd(source: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """MMD² between equally weighted samples (both of the same padded size; ``weights`` 1/n on real points)."""
    total = jnp.concatenate([source, target])
    w = jnp.concatenate([weights, weights])
    sq = jnp.sum((total[:, None] - total[None]) ** 2, axis=-1)
    real = (w > 0).astype(total.dtype)
    m = jnp.sum(real)
    bandwidth = jax.lax.stop_gradient(real @ sq @ real / (m * m - m)) / KERNEL_MUL ** (KERNEL_NUM // 2)
    kernel = sum(jnp.exp(-sq / (bandwidth * KERNEL_MUL ** i)) for i in range(KERNEL_NUM))
    signed = jnp.concatenate([weights, -weights])
    return signed @ kernel @ signed


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MMDLoss:
    """Σ_c w_c · MMD²(random source sample, target class c); ``loss(tgt_x, mask, class_weights, key=key)``."""

    src_x: jax.Array

    @classmethod
    def build(cls, src_x) -> "MMDLoss":
        return cls(check_features(src_x, "src_x"))

    def value(self, tgt_x, mask=None, class_weights=None, *, key: jax.Array | None = None) -> jax.Array:
        """Differentiable w.r.t. ``tgt_x``; ``key`` draws the source samples (one independent draw per class).

        Under ``jit`` the inputs cannot be checked: NaN/inf on a real point make the value NaN."""
        tgt_x, mask, class_weights = check_target_batch(tgt_x, mask, class_weights, self.src_x.shape[1])
        keys = jax.random.split(require_key(key, "MMD"), tgt_x.shape[0])

        def one(args):
            x, m, k = args
            x = jnp.where(m[:, None], x, 0.0)  # padding may hold anything, NaN included
            idx = jax.random.randint(k, (x.shape[0],), 0, self.src_x.shape[0])
            count = jnp.sum(m)
            w = jnp.where(count > 0, m / jnp.maximum(count, 1).astype(x.dtype), 1.0 / m.shape[0])
            return jnp.where(count >= 2, multi_kernel_mmd(self.src_x[idx], x, w), 0.0)

        per_class = jax.lax.map(one, (tgt_x, mask, keys))
        return jnp.sum(class_weights * per_class)

    def __call__(self, tgt_x, mask=None, class_weights=None, *,
                 key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(value, d value / d tgt_x), compiled once per target batch shape."""
        tgt_x, mask, class_weights = check_target_batch(tgt_x, mask, class_weights, self.src_x.shape[1])
        return value_and_grad(self, tgt_x, mask, class_weights, require_key(key, "MMD"))
