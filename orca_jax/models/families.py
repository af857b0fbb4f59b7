"""Body families: what the rest of orca-jax needs to know about a kind of pretrained body, in one record each.

A family is a body module (the text encoder for 1D inputs, Swin for 2D) together with the task inputs it takes, the
source sets it embeds, the embedder that replaces its own embedding for a task, the width of its output and how its
forward pass yields the pooled and per-token outputs a head reads. The model, the pipeline, the config checks and the
source features ask `family_of(body)` (or an architecture's `family`) instead of testing the body's type, so a new
family is a body module, its key table beside it, and one entry of `FAMILIES` (and of `pretrained.ARCHITECTURES`
for each checkpoint `model_type` that loads into it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from orca_jax.models.embedders import ImageEmbedder, SequenceEmbedder
from orca_jax.models.swin import Swin
from orca_jax.models.text_encoder import TextEncoder


@dataclasses.dataclass(frozen=True)
class BodyFamily:
    module: type  # the body's NNX module
    name: str  # how messages call a body of the family: "a text body"
    modality: str  # the modality of the source sets it embeds (orca_jax.data.sources)
    layout: str  # the task inputs it takes (orca_jax.data.types.LAYOUTS)
    inputs: str  # what those inputs are, for messages
    embedder_type: type  # the task embedder that replaces the body's own embedding
    # (body, task input shape without the batch axis, the config's `embedder` section, *, init_from_body, rngs)
    build_embedder: Callable[..., nnx.Module]
    width: Callable[[Any], int]  # body -> width of its output tokens (the head's input)
    # (body, tokens [batch, n, token width], layout: the image grid or None, rngs) -> (pooled [batch, width],
    # sequence [batch, tokens, width]): the body's forward pass from tokens, whoever embedded them
    encode_tokens: Callable[..., tuple[jax.Array, jax.Array]]
    # (body, source inputs: token ids [batch, n] or images) -> (tokens, layout) through the body's own embedding
    source_tokens: Callable[..., tuple[jax.Array, Any]]
    needs_tokenizer: bool  # its source inputs are text its checkpoint's tokenizer must encode

    def embed(self, embedder, x) -> tuple[jax.Array, Any]:
        """(tokens, layout) of task inputs through the task embedder."""
        out = embedder(x)
        return out if isinstance(out, tuple) else (out, None)

    def encode(self, body, embedder, x, rngs) -> tuple[jax.Array, jax.Array]:
        """(pooled, sequence) of task inputs: embedder, then the body."""
        return self.encode_tokens(body, *self.embed(embedder, x), rngs)


def _text_embedder(body, input_shape, options, *, init_from_body: bool, rngs: nnx.Rngs) -> SequenceEmbedder:
    length, channels = input_shape
    return SequenceEmbedder.from_body(body, channels, length, target_seq_len=options.target_seq_len,
                                      init_from_body=init_from_body, norm=options.norm, rngs=rngs)


def _text_encode(body, tokens, layout, rngs):
    # ORCA's 1D path replaces RoBERTa's tanh pooler with a parameter-free mean over tokens.
    sequence = body.encode(tokens, rngs=rngs).last_hidden_state
    return jnp.mean(sequence, axis=1), sequence


def _text_source_tokens(body, ids):
    return body.embeddings(ids, None, None, None, None), None


def _image_embedder(body, input_shape, options, *, init_from_body: bool, rngs: nnx.Rngs) -> ImageEmbedder:
    return ImageEmbedder.from_body(body, input_shape[-1], init_from_body=init_from_body, antialias=options.antialias,
                                   rngs=rngs)


def _image_encode(body, tokens, grid, rngs):
    out = body.encode(tokens, grid, rngs=rngs)
    return out.pooler_output, out.last_hidden_state


def _image_source_tokens(body, images):
    size = tuple(body.config.image_size)
    if images.shape[1:3] != size:
        images = jax.image.resize(images, (images.shape[0], *size, images.shape[3]), method="linear", antialias=False)
    return body.embeddings(images)


FAMILIES: dict[str, BodyFamily] = {
    "text": BodyFamily(TextEncoder, "a text body", "text", "NLC", "sequences", SequenceEmbedder, _text_embedder,
                       lambda body: body.config.hidden_size, _text_encode, _text_source_tokens, needs_tokenizer=True),
    "image": BodyFamily(Swin, "a Swin body", "image", "NHWC", "images", ImageEmbedder, _image_embedder,
                        lambda body: body.config.num_features, _image_encode, _image_source_tokens,
                        needs_tokenizer=False),
}


def family_of(body: nnx.Module) -> BodyFamily:
    """The family `body` belongs to; a body of no registered family is an error naming the known ones."""
    for family in FAMILIES.values():
        if isinstance(body, family.module):
            return family
    known = ", ".join(family.module.__name__ for family in FAMILIES.values())
    raise TypeError(f"{type(body).__name__} is not a body of a registered family ({known}); add one to "
                    "orca_jax.models.families.FAMILIES.")
