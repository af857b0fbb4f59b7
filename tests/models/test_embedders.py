"""ORCA's embedders: the official stride rule, output shapes, and initialisation copied from the body."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from orca_jax.models import TextEncoder, TextEncoderConfig
from orca_jax.models.embedders import ImageEmbedder, SequenceEmbedder, stacking_factor, tile_channels
from orca_jax.models.heads import ClassificationHead
from orca_jax.models.orca import OrcaModel
from tests.image_checkpoints import TWO_STAGES, tiny_swin


def text_body(width=16, positions=40, roberta=True):
    config = TextEncoderConfig(vocab_size=11, hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=2 * width, max_position_embeddings=positions, pad_token_id=1,
                               padding_offset_positions=roberta, layer_norm_eps=1e-5)
    body = TextEncoder(config, rngs=nnx.Rngs(0))
    # Distinctive norm parameters, so copying them is visible.
    body.embeddings.norm.scale.set_value(jnp.linspace(0.5, 1.5, width))
    body.embeddings.norm.bias.set_value(jnp.linspace(-0.2, 0.2, width))
    return body


@pytest.mark.parametrize(
    "length, target, stride",
    [(1000, 64, 20), (1000, 512, 2), (46, 512, 1), (256, 128, 2), (97, 10, 97), (1024, 512, 2), (40, 40, 1)],
)
def test_stacking_factor_is_the_smallest_divisor_that_fits(length, target, stride):
    assert stacking_factor(length, target) == stride  # ECG, DeepSEA, Satellite, Advection, a prime, Burgers, mnist1d


@pytest.mark.parametrize("length, channels, target, tokens", [(40, 1, 40, 40), (1000, 4, 512, 500), (60, 3, 16, 15)])
def test_sequence_embedder_shapes(length, channels, target, tokens):
    body = text_body(positions=520)
    embedder = SequenceEmbedder.from_body(body, channels, length, target_seq_len=target, rngs=nnx.Rngs(1))
    out = embedder(jnp.ones((2, length, channels)))
    assert out.shape == (2, tokens, 16)
    assert embedder.projection.kernel.shape == (length // tokens, channels, 16)


def test_sequence_embedder_copies_positions_and_norm_and_adds_positions_after_the_norm():
    body = text_body()
    embedder = SequenceEmbedder.from_body(body, 2, 12, target_seq_len=6, rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(embedder.position.embedding[...], body.embeddings.position.embedding[...])
    np.testing.assert_array_equal(embedder.norm.scale[...], body.embeddings.norm.scale[...])
    np.testing.assert_array_equal(embedder.norm.bias[...], body.embeddings.norm.bias[...])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 12, 2)), jnp.float32)
    tokens = embedder.projection(x)
    mean = tokens.mean(-1, keepdims=True)
    normed = (tokens - mean) / jnp.sqrt(tokens.var(-1, keepdims=True) + 1e-5) * embedder.norm.scale[...]
    expected = normed + embedder.norm.bias[...] + body.embeddings.position.embedding[2:8]  # RoBERTa: from 2
    np.testing.assert_allclose(embedder(x), expected, atol=1e-5)


def test_embedder_without_norm_keeps_the_amplitude_and_pools_linearly():
    """embedder.norm=False: tokens are projection + positions, so scaling the input scales the token's projection
    (the official norm would make it scale-free); `pooled` is still the tokens' mean, value and gradient."""
    body = text_body()
    embedder = SequenceEmbedder.from_body(body, 2, 12, target_seq_len=6, norm=False, rngs=nnx.Rngs(1))
    assert embedder.norm is None and embedder.width == 16
    embedder.projection.bias.set_value(jnp.linspace(-1.0, 1.0, 16))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 12, 2)), jnp.float32)
    positions = body.embeddings.position.embedding[2:8]
    np.testing.assert_allclose(embedder(x), embedder.projection(x) + positions, atol=1e-6)
    np.testing.assert_allclose(embedder(3 * x) - positions - embedder.projection.bias[...],
                               3 * (embedder(x) - positions - embedder.projection.bias[...]), atol=1e-5)
    np.testing.assert_allclose(embedder.pooled(x), embedder(x).mean(1), atol=1e-5)
    graphdef, params = nnx.split(embedder, nnx.Param)
    via = lambda f: jax.grad(lambda p: jnp.sum(jnp.sin(f(nnx.merge(graphdef, p), x))))(params)  # noqa: E731
    for a, b in zip(jax.tree.leaves(via(lambda m, v: m.pooled(v))), jax.tree.leaves(via(lambda m, v: m(v).mean(1)))):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_no_alignment_ablation_keeps_positions_but_resets_the_norm():
    body = text_body(roberta=False)
    embedder = SequenceEmbedder.from_body(body, 1, 8, target_seq_len=8, init_from_body=False, rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(embedder.position.embedding[...], body.embeddings.position.embedding[...])
    np.testing.assert_array_equal(embedder.norm.scale[...], np.ones(16))
    assert embedder.first_position == 0  # BERT counts positions from 0


def test_too_many_tokens_for_the_position_table():
    with pytest.raises(ValueError, match="lower target_seq_len"):
        SequenceEmbedder.from_body(text_body(positions=20), 1, 64, target_seq_len=64, rngs=nnx.Rngs(0))


def test_channels_first_input_is_rejected_with_the_fix():
    embedder = SequenceEmbedder.from_body(text_body(), 3, 12, target_seq_len=12, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"transpose\(0, 2, 1\)"):
        embedder(jnp.ones((2, 3, 12)))


def swin_body():
    return tiny_swin(embed_dim=8, **TWO_STAGES)


def test_tile_channels_repeats_rgb_then_cuts():
    kernel = np.arange(2 * 2 * 3 * 1).reshape(2, 2, 3, 1).astype(np.float32)
    tiled = np.asarray(tile_channels(kernel, 7))
    assert tiled.shape == (2, 2, 7, 1)
    np.testing.assert_array_equal(tiled[:, :, [0, 3, 6]], np.repeat(kernel[:, :, :1], 3, axis=2))
    np.testing.assert_array_equal(tiled[:, :, 4], kernel[:, :, 1])
    np.testing.assert_array_equal(np.asarray(tile_channels(kernel, 1)), kernel[:, :, :1])


@pytest.mark.parametrize("channels, size", [(1, (8, 8)), (5, (40, 24)), (3, (32, 32))])
def test_image_embedder_resizes_and_copies_the_patch_embedding(channels, size):
    body = swin_body()
    embedder = ImageEmbedder.from_body(body, channels, rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(embedder.projection.kernel[...],
                                  tile_channels(body.embeddings.projection.kernel[...], channels))
    np.testing.assert_array_equal(embedder.projection.bias[...], body.embeddings.projection.bias[...])
    np.testing.assert_array_equal(embedder.norm.scale[...], body.embeddings.norm.scale[...])
    tokens, grid = embedder(jnp.ones((2, *size, channels)))
    assert grid == (8, 8) and tokens.shape == (2, 64, 8)


def test_image_embedder_on_rgb_at_the_body_size_equals_the_body_embedding():
    body = swin_body()
    embedder = ImageEmbedder.from_body(body, 3, rngs=nnx.Rngs(1))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    ours, grid = embedder(images)
    theirs, their_grid = body.embeddings(images)
    assert grid == their_grid
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_orca_model_features_and_logits():
    body = text_body()
    rngs = nnx.Rngs(2)
    model = OrcaModel(SequenceEmbedder.from_body(body, 1, 12, target_seq_len=6, rngs=rngs), body,
                      ClassificationHead(16, 4, rngs=rngs))
    x = jnp.ones((3, 12, 1))
    assert model.features(x).shape == (3, 16)
    np.testing.assert_allclose(model.features(x), model.embedder(x).mean(1), atol=1e-6)
    assert model(x).shape == (3, 4)
    with pytest.raises(TypeError, match="does not fit"):
        OrcaModel(ImageEmbedder.from_body(swin_body(), 1, rngs=rngs), body, ClassificationHead(16, 4, rngs=rngs))


def mean_token_float64(patches, kernel, bias, scale, offset, eps):
    """mean_t LayerNorm(p_t W + b), formed token by token in float64: the direct definition."""
    tokens = np.asarray(patches, np.float64) @ np.asarray(kernel, np.float64).reshape(patches.shape[-1], -1)
    tokens += np.asarray(bias, np.float64)
    centred = tokens - tokens.mean(-1, keepdims=True)
    normed = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + eps)
    return normed.mean(1) * np.asarray(scale, np.float64) + np.asarray(offset, np.float64)


def distinctive(embedder, rng, width):
    """A bias and scale far from the initial 0 and 1, so that the centring and the scale are visible."""
    embedder.projection.bias.set_value(jnp.asarray(rng.normal(size=width) * 3 + 1, jnp.float32))
    embedder.norm.scale.set_value(jnp.asarray(rng.normal(size=width), jnp.float32))
    embedder.norm.bias.set_value(jnp.asarray(rng.normal(size=width), jnp.float32))


def assert_pooled_is_the_token_mean(embedder, x, mean_token):
    """`pooled` against `mean_token(embedder, x)` (the tokens formed, then averaged) in value and in the gradient of
    a nonlinear function of it with respect to every parameter."""
    graphdef, params = nnx.split(embedder)

    def value_and_grad(pool):
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(jnp.sin(pool(nnx.merge(graphdef, p), x)))))(params)

    (ours, our_grads), (theirs, their_grads) = value_and_grad(lambda e, x: e.pooled(x)), value_and_grad(mean_token)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    for ours, theirs in zip(jax.tree.leaves(our_grads), jax.tree.leaves(their_grads)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(np.abs(theirs).max()))


# Patches of k = stride x channels values: 10 < width (the patches' quadratic form), 32 >= width (the tokens are
# formed).
@pytest.mark.parametrize("length, channels, target", [(60, 2, 12), (64, 4, 8)])
def test_sequence_embedder_pooled_is_the_mean_token_in_value_and_gradient(length, channels, target):
    rng = np.random.default_rng(length)
    embedder = SequenceEmbedder.from_body(text_body(positions=520), channels, length, target_seq_len=target,
                                          rngs=nnx.Rngs(1))
    distinctive(embedder, rng, 16)
    x = jnp.asarray(rng.normal(size=(4, length, channels)) + 2.0, jnp.float32)  # off-centre inputs
    positions = np.asarray(embedder.position.embedding[...])[2 : 2 + embedder.num_tokens].mean(0)
    patches = np.asarray(x).reshape(4, embedder.num_tokens, -1)
    expected = mean_token_float64(patches, embedder.projection.kernel[...], embedder.projection.bias[...],
                                  embedder.norm.scale[...], embedder.norm.bias[...], 1e-5) + positions
    np.testing.assert_allclose(embedder.pooled(x), expected, rtol=1e-5, atol=1e-5)
    assert_pooled_is_the_token_mean(embedder, x, lambda e, x: jnp.mean(e(x), axis=1))


# Patches of 4 x 4 x channels = 48 < width, and 80 >= width; 30 x 34 resized to 34 x 30 leaves rows and columns that
# no patch fills.
@pytest.mark.parametrize("channels, width", [(3, 64), (5, 16)])
def test_image_embedder_pooled_is_the_mean_token_in_value_and_gradient(channels, width):
    rng = np.random.default_rng(channels)
    embedder = ImageEmbedder(channels, width, patch_size=(4, 4), image_size=(34, 30), layer_norm_eps=1e-5,
                             rngs=nnx.Rngs(0))
    distinctive(embedder, rng, width)
    x = jnp.asarray(rng.normal(size=(2, 30, 34, channels)) + 1.0, jnp.float32)
    assert_pooled_is_the_token_mean(embedder, x, lambda e, x: jnp.mean(e(x)[0], axis=1))
