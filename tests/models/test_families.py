"""The family record is the only place a body's kind is told apart: a third family registered there runs through
OrcaModel unchanged, and a body of no family is named."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from orca_jax.models import families
from orca_jax.models.families import FAMILIES, BodyFamily, family_of
from orca_jax.models.heads import ClassificationHead
from orca_jax.models.orca import OrcaModel


class ToyBody(nnx.Module):
    """A body of a made-up family: one linear layer over tokens."""

    def __init__(self, rngs):
        self.config = dataclasses.make_dataclass("C", [("hidden_size", int)])(4)
        self.mix = nnx.Linear(4, 4, rngs=rngs)

    def encode(self, tokens, rngs=None):
        return self.mix(tokens)


class ToyEmbedder(nnx.Module):
    def __init__(self, channels, rngs):
        self.projection = nnx.Linear(channels, 4, rngs=rngs)

    def __call__(self, x):
        return self.projection(x)


def test_a_registered_third_family_runs_through_the_model(monkeypatch):
    toy = BodyFamily(ToyBody, "a toy body", "toy", "NLC", "sequences", ToyEmbedder,
                     lambda body, shape, options, *, init_from_body, rngs: ToyEmbedder(shape[-1], rngs),
                     lambda body: body.config.hidden_size,
                     lambda body, tokens, layout, rngs: (body.encode(tokens).max(axis=1), body.encode(tokens)),
                     lambda body, inputs: (inputs, None), needs_tokenizer=False)
    monkeypatch.setitem(FAMILIES, "toy", toy)
    rngs = nnx.Rngs(0)
    body = ToyBody(rngs)
    assert family_of(body) is toy
    embedder = toy.build_embedder(body, (6, 3), None, init_from_body=False, rngs=rngs)
    model = OrcaModel(embedder, body, ClassificationHead(toy.width(body), 2, rngs=rngs))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 3)), jnp.float32)
    expected = model.head(body.encode(embedder(x)).max(axis=1), None)
    np.testing.assert_allclose(model(x), expected, rtol=1e-6)
    with pytest.raises(TypeError, match="does not fit a ToyBody body: use ToyEmbedder with it"):
        OrcaModel(nnx.Linear(3, 4, rngs=rngs), body, model.head)


def test_a_body_of_no_family_is_named():
    with pytest.raises(TypeError, match="Linear is not a body of a registered family \\(TextEncoder, Swin\\)"):
        family_of(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    assert families.FAMILIES["text"].layout == "NLC" and families.FAMILIES["image"].layout == "NHWC"
