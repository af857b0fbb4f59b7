"""ORCA's crude `l2` alignment objective (official `src/utils.py::l2`), for ablations: the mean Euclidean distance
between the target class's points and as many source points drawn at random, paired by index.

The official function averages that over the source loader's batches, which in expectation is one random pairing;
here each call draws one pairing per class (uniformly with replacement, like the MMD objective). Labels are unused;
the per-class split and frequency weighting are ORCA's. Called as every `orca_jax.ot.distance.AlignDistance`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from orca_jax.ot.cached_loss import check_target_batch
from orca_jax.ot.distance import require_key, value_and_grad
from orca_jax.ot.otdd import check_features


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class L2Loss:
    """Σ_c w_c · mean_i ‖t_i − s_i‖ over the real points t_i of class c and random source points s_i."""

    src_x: jax.Array

    @classmethod
    def build(cls, src_x) -> "L2Loss":
        return cls(check_features(src_x, "src_x"))

    def value(self, tgt_x, mask=None, class_weights=None, *, key: jax.Array | None = None) -> jax.Array:
        tgt_x, mask, class_weights = check_target_batch(tgt_x, mask, class_weights, self.src_x.shape[1])
        idx = jax.random.randint(require_key(key, "The l2 objective"), tgt_x.shape[:2], 0, self.src_x.shape[0])
        diff = jnp.where(mask[..., None], tgt_x - self.src_x[idx], 0.0)  # padding may hold anything, NaN included
        squares = jnp.sum(jnp.square(diff), axis=-1)
        # sqrt with a zero (not infinite) gradient where a point coincides with its partner or is padding
        distance = jnp.where(squares > 0, jnp.sqrt(jnp.where(squares > 0, squares, 1.0)), 0.0)
        per_class = jnp.sum(distance, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)
        return jnp.sum(class_weights * per_class)

    def __call__(self, tgt_x, mask=None, class_weights=None, *,
                 key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(value, d value / d tgt_x), compiled once per target batch shape."""
        tgt_x, mask, class_weights = check_target_batch(tgt_x, mask, class_weights, self.src_x.shape[1])
        return value_and_grad(self, tgt_x, mask, class_weights, require_key(key, "The l2 objective"))
