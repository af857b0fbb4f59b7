"""The ORCA model: task embedder -> pretrained body -> task head, as one NNX module.

The align stage uses only `features` (the embedder's tokens mean-pooled, the space where source features live);
the refine stage uses `__call__`. Keeping both on one object means the aligned embedder is the very parameter
subtree that refining continues from, and "train only the embedder" is the path rule `embedder/.*`
(`orca_jax.train.finetune.ALIGN_RULES`). What differs between body families is asked of their record
(`orca_jax.models.families`).
"""

from __future__ import annotations

import jax
from flax import nnx

from orca_jax.models.families import family_of


class OrcaModel(nnx.Module):
    def __init__(self, embedder: nnx.Module, body: nnx.Module, head: nnx.Module):
        family = family_of(body)
        if not isinstance(embedder, family.embedder_type):
            raise TypeError(
                f"{type(embedder).__name__} does not fit a {type(body).__name__} body: use "
                f"{family.embedder_type.__name__} with it."
            )
        self.embedder, self.body, self.head = embedder, body, head
        # PaRe's gate and source head (orca_jax.train.pare.PareParts) while a refine stage with refine.pare trains.
        self.pare = nnx.data(None)

    def features(self, x: jax.Array) -> jax.Array:
        """Embedder output mean-pooled over tokens (float32): what the align stage compares with source features."""
        return self.embedder.pooled(x)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        pooled, sequence = family_of(self.body).encode(self.body, self.embedder, x, rngs)
        return self.head(pooled, sequence)
