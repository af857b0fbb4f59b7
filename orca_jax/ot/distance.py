"""The one interface of the align stage's distances to the source features (OTDD, MMD, l2).

The align step needs a distance's value, differentiable with respect to the embedded target batch, and the value
with its gradient. Some distances draw source points at random (MMD, l2) and need a key; OTDD is deterministic and
ignores it. Giving every distance the same call, key included, is what lets the align stage and any new distance
meet without a case per type (docs/extending.md).
"""

from __future__ import annotations

from typing import Protocol

import jax


class AlignDistance(Protocol):
    """`tgt_x` [classes, points, width] with `mask` [classes, points] marking the real points (padding may hold
    anything) and `class_weights` [classes]; `key` draws the source samples of a stochastic distance."""

    def value(self, tgt_x, mask=None, class_weights=None, *, key: jax.Array | None = None) -> jax.Array: ...

    def __call__(self, tgt_x, mask=None, class_weights=None, *,
                 key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]: ...


def require_key(key: jax.Array | None, name: str) -> jax.Array:
    if key is None:
        raise ValueError(f"{name} draws source points at random: pass key=jax.random.key(...).")
    return key


@jax.jit
def value_and_grad(distance: AlignDistance, tgt_x, mask, class_weights, key) -> tuple[jax.Array, jax.Array]:
    """(value, d value / d tgt_x) of a distance (a pytree), compiled once per distance type and batch shape."""
    return jax.value_and_grad(lambda x: distance.value(x, mask, class_weights, key=key))(tgt_x)
