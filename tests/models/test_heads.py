"""The heads equal the official (PyTorch) head functions: adaptive pools, PixelShuffle, the SimMIM decoder."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from orca_jax.models.heads import (
    ClassificationHead, ImageDenseHead, SequenceDenseHead, SequenceLinearHead, adaptive_pool_matrix, pixel_shuffle,
)
from orca_jax.models.embedders import ImageEmbedder, SequenceEmbedder
from orca_jax.models.orca import OrcaModel
from orca_jax.train import losses
from tests.models.test_embedders import swin_body, text_body

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("in_size, out_size", [(768, 20), (10, 3), (7, 7), (5, 12), (224, 85), (224, 512)])
def test_adaptive_pool_matrix_matches_torch(in_size, out_size):
    x = RNG.normal(size=(2, 3, in_size)).astype(np.float32)
    expected = torch.nn.AdaptiveAvgPool1d(out_size)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(x @ adaptive_pool_matrix(in_size, out_size).T, expected, atol=1e-6)


def test_pixel_shuffle_matches_torch_channel_order():
    x = RNG.normal(size=(2, 3, 4, 2 * 9)).astype(np.float32)  # NHWC, 2 output channels, upscale 3
    expected = torch.nn.PixelShuffle(3)(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(np.asarray(pixel_shuffle(jnp.asarray(x), 3)), expected)


def test_classification_head_uses_pooled_output_only():
    head = ClassificationHead(8, 5, rngs=nnx.Rngs(0))
    pooled = jnp.asarray(RNG.normal(size=(3, 8)), jnp.float32)
    out = head(pooled, jnp.zeros((3, 4, 8)))
    assert out.shape == (3, 5)
    np.testing.assert_allclose(out, pooled @ head.linear.kernel[...] + head.linear.bias[...], rtol=1e-6)


@pytest.mark.parametrize("out_channels, stride", [(1, 4), (1, 1), (2, 3)])
def test_sequence_dense_head_is_the_official_pool_and_reshape(out_channels, stride):
    """Official: AdaptiveAvgPool1d(out_channels * stride) over the hidden dim, reshaped to (B, C, L); ours is that,
    channels last."""
    batch, tokens, width = 2, 6, 32
    sequence = RNG.normal(size=(batch, tokens, width)).astype(np.float32)
    pooled = torch.nn.AdaptiveAvgPool1d(out_channels * stride)(torch.tensor(sequence))
    expected = pooled.reshape(batch, out_channels, tokens * stride).permute(0, 2, 1).numpy()
    head = SequenceDenseHead(out_channels, stride)
    out = head(jnp.zeros((batch, width)), jnp.asarray(sequence))
    assert out.shape == (batch, tokens * stride, out_channels)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert not nnx.state(head, nnx.Param)  # parameter-free, as the official head


def test_sequence_linear_head_maps_each_token_to_its_own_positions():
    """head.dense_1d=linear: output position t * stride + i, channel c is the linear map's output c * stride + i
    of token t, so a token's state decides only its own positions."""
    batch, tokens, width, channels, stride = 2, 5, 8, 3, 4
    head = SequenceLinearHead(width, channels, stride, rngs=nnx.Rngs(0))
    sequence = RNG.normal(size=(batch, tokens, width)).astype(np.float32)
    out = np.asarray(head(jnp.zeros((batch, width)), jnp.asarray(sequence)))
    assert out.shape == (batch, tokens * stride, channels)
    mapped = sequence @ np.asarray(head.linear.kernel[...]) + np.asarray(head.linear.bias[...])
    for t in range(tokens):
        for i in range(stride):
            np.testing.assert_allclose(out[:, t * stride + i, :], mapped[:, t, i::stride], atol=1e-5)


def _torch_image_head(sequence, kernel, bias, grid, stride, out_channels, output_size):
    """The official 2D dense path: HF SwinForMaskedImageModeling's decoder, then ORCA's channel and spatial pools."""
    batch, _, width = sequence.shape
    x = torch.tensor(sequence).transpose(1, 2).reshape(batch, width, *grid)
    conv = torch.nn.Conv2d(width, kernel.shape[-1], kernel_size=1)
    conv.weight.data = torch.tensor(kernel).permute(3, 2, 0, 1)  # HWIO -> OIHW
    conv.bias.data = torch.tensor(bias)
    image = torch.nn.PixelShuffle(stride)(conv(x))  # (B, 3, H, W)
    b, c, h, w = image.shape
    channels = torch.nn.AdaptiveAvgPool1d(out_channels)(image.permute(0, 2, 3, 1).reshape(b, h * w, c))
    image = channels.reshape(b, h, w, out_channels).permute(0, 3, 1, 2)
    return torch.nn.AdaptiveAvgPool2d(output_size)(image).permute(0, 2, 3, 1).detach().numpy()


@pytest.mark.parametrize("out_channels, output_size", [(1, (11, 9)), (4, (40, 20))])  # down- and upsampling
def test_image_dense_head_matches_torch_decoder_and_pools(out_channels, output_size):
    grid, stride, width = (2, 3), 8, 12  # reconstructs 16 x 24 pixels
    head = ImageDenseHead(
        width, grid=grid, encoder_stride=stride, out_channels=out_channels, output_size=output_size, rngs=nnx.Rngs(0)
    )
    head.decoder.bias.set_value(jnp.asarray(RNG.normal(size=head.decoder.bias.shape), jnp.float32))
    sequence = RNG.normal(size=(2, 6, width)).astype(np.float32)
    out = head(jnp.zeros((2, width)), jnp.asarray(sequence))
    assert out.shape == (2, *output_size, out_channels)
    expected = _torch_image_head(
        sequence, np.asarray(head.decoder.kernel[...]), np.asarray(head.decoder.bias[...]), grid, stride,
        out_channels, output_size,
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.fixture(scope="module")
def swin():
    return swin_body()  # 32 x 32 images, 4 x 4 patches, two stages: total stride 8, final grid 4 x 4, width 16


def test_image_dense_head_from_swin_body_grid_and_token_check(swin):
    head = ImageDenseHead.from_body(swin, out_channels=1, output_size=(5, 7), rngs=nnx.Rngs(1))
    assert (head.grid, head.encoder_stride) == ((4, 4), 8)
    assert head.decoder.kernel.shape == (1, 1, 16, 8 * 8 * 3)
    with pytest.raises(ValueError, match="16 tokens"):
        head(jnp.zeros((2, 16)), jnp.zeros((2, 9, 16)))


def test_dense_heads_fit_orca_models_end_to_end(swin):
    """The 1D head's output length is the embedder's input length; the 2D head trains under jit (finite gradients
    reach the decoder) and outputs the task's size."""
    text = text_body(positions=40)
    embedder = SequenceEmbedder.from_body(text, 1, 24, target_seq_len=8, rngs=nnx.Rngs(1))  # stride 3, 8 tokens
    model = OrcaModel(embedder, text, SequenceDenseHead(1, embedder.stride))
    assert model(jnp.ones((2, 24, 1))).shape == (2, 24, 1)

    head = ImageDenseHead.from_body(swin, out_channels=2, output_size=(20, 20), rngs=nnx.Rngs(2))
    model = OrcaModel(ImageEmbedder.from_body(swin, 3, rngs=nnx.Rngs(1)), swin, head)
    x, y = jnp.ones((2, 20, 20, 3)), jnp.asarray(RNG.normal(size=(2, 20, 20, 2)), jnp.float32)
    grads = nnx.jit(nnx.grad(lambda m: losses.relative_l2(m(x), y)))(model)
    kernel_grad = np.asarray(grads.head.decoder.kernel[...])
    assert np.isfinite(kernel_grad).all() and np.abs(kernel_grad).max() > 0
