"""The ORCA model: task embedder -> pretrained body -> task head, as one NNX module.

The align stage uses only `features` (the embedder's tokens mean-pooled, the space where source features live);
the refine stage uses `__call__`. Keeping both on one object means the aligned embedder is the very parameter
subtree that refining continues from, and "train only the embedder" is a mask over `('embedder', ...)` paths.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from orca_jax.models.embedders import ImageEmbedder, SequenceEmbedder
from orca_jax.models.swin import Swin
from orca_jax.models.text_encoder import TextEncoder


class OrcaModel(nnx.Module):
    def __init__(self, embedder: SequenceEmbedder | ImageEmbedder, body: TextEncoder | Swin, head: nnx.Module):
        if isinstance(embedder, SequenceEmbedder) != isinstance(body, TextEncoder):
            raise TypeError(
                f"{type(embedder).__name__} does not fit a {type(body).__name__} body: use SequenceEmbedder with "
                "the text encoder and ImageEmbedder with Swin."
            )
        self.embedder, self.body, self.head = embedder, body, head

    def features(self, x: jax.Array) -> jax.Array:
        """Embedder output mean-pooled over tokens (float32): what the align stage compares with source features."""
        return self.embedder.pooled(x)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        if isinstance(self.body, Swin):
            tokens, grid = self.embedder(x)
            out = self.body.encode(tokens, grid, rngs=rngs)
            pooled, sequence = out.pooler_output, out.last_hidden_state
        else:
            # ORCA's 1D path replaces RoBERTa's tanh pooler with a parameter-free mean over tokens.
            sequence = self.body.encode(self.embedder(x), rngs=rngs).last_hidden_state
            pooled = jnp.mean(sequence, axis=1)
        return self.head(pooled, sequence)
