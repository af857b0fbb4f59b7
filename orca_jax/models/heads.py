"""ORCA's task heads: what turns the body's output into a task's prediction, channels-last.

Every head is called as `head(pooled [batch, width], sequence [batch, tokens, width])` (`OrcaModel` passes both:
for text bodies `pooled` is the mean over tokens, for Swin its final layer norm + mean) and follows the official
code:
- `ClassificationHead`: a linear layer on `pooled`; logits `[batch, classes]`. Multi-label tasks use it too: their
  logits feed independent sigmoids, so only the loss (BCE instead of softmax CE) differs.
- `SequenceDenseHead` (1D dense outputs, e.g. PDEs): parameter-free. Each token's width-D state is average-pooled
  (PyTorch `AdaptiveAvgPool1d` bins) to `out_channels * stride` numbers, which are laid back out as the output
  sequence: with the embedder's stacking factor `stride`, tokens x stride = output length.
- `SequenceLinearHead` (1D dense outputs, `head.dense_1d=linear`; not official): a linear map of each token's state
  to its `stride` output positions, which can reach targets of any scale.
- `ImageDenseHead` (2D dense outputs): the SimMIM decoder of `SwinForMaskedImageModeling` (randomly initialised in
  ORCA: its checkpoint has none), a 1x1 convolution to `encoder_stride**2 * 3` channels and a pixel shuffle back to
  the image size (224), then parameter-free adaptive average pooling of the 3 channels to `out_channels` and of the
  image to the task's output size (pooling also upsamples, e.g. 224 -> 512, by repetition).

Adaptive pooling is computed as a contraction with a constant averaging matrix (one per axis, built from the static
shapes at trace time): exact PyTorch semantics for any in/out sizes, no gathers, and fast on accelerators. Dense
heads pool and return float32 whatever the body's dtype: regression metrics such as Darcy's relative L2 (~0.01) are
finer than bfloat16's resolution (~0.4 %). Heads with parameters take flax's `param_dtype` (storage, float32 by
default) and `dtype` (compute) like the bodies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from orca_jax.models.swin import Swin

_HIGHEST = jax.lax.Precision.HIGHEST


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] averaging weights of PyTorch's adaptive average pooling along one axis: output i is the
    mean of inputs [floor(i * in / out), ceil((i + 1) * in / out)). Bins overlap when the sizes do not divide, and
    repeat inputs when out_size > in_size."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"Adaptive pooling needs positive sizes, got in_size={in_size}, out_size={out_size}.")
    weights = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start, end = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def pixel_shuffle(x: jax.Array, upscale: int) -> jax.Array:
    """Depth-to-space on NHWC maps with PyTorch's `PixelShuffle` channel order: input channel c * r**2 + i * r + j
    becomes output channel c at offset (i, j) of each r x r block. (TensorFlow's depth_to_space orders channels
    (i * r + j) * C + c instead; torch's order keeps a ported 1x1 convolution the same function.)"""
    batch, height, width, channels = x.shape
    if channels % (upscale * upscale):
        raise ValueError(f"pixel_shuffle by {upscale} needs channels divisible by {upscale**2}, got {channels}.")
    out = channels // (upscale * upscale)
    x = x.reshape(batch, height, width, out, upscale, upscale).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(batch, height * upscale, width * upscale, out)


class ClassificationHead(nnx.Module):
    """Linear layer on the body's pooled output: logits `[batch, num_classes]` for softmax (classification) or
    independent sigmoids (multi-label)."""

    def __init__(self, width: int, num_classes: int, *, param_dtype=jnp.float32, dtype=jnp.float32, rngs: nnx.Rngs):
        self.linear = nnx.Linear(width, num_classes, param_dtype=param_dtype, dtype=dtype, rngs=rngs)

    def __call__(self, pooled: jax.Array, sequence: jax.Array) -> jax.Array:
        del sequence
        return self.linear(pooled)


class SequenceDenseHead(nnx.Module):
    """Parameter-free 1D dense head: `[batch, tokens, width]` -> `[batch, tokens * stride, out_channels]`.

    The official head pools each token to `n = out_channels * stride` numbers, `[batch, tokens, n]`, and reshapes
    that row-major to the channels-first target `[batch, out_channels, tokens * stride]`; here the same numbers are
    then moved channels-last, so the function equals the official one. With one channel (every official 1D task)
    token t gives outputs t * stride ... (t + 1) * stride - 1; with more, channel c takes the c-th contiguous block
    of the pooled numbers, as in the official reshape.
    """

    def __init__(self, out_channels: int, stride: int):
        if out_channels < 1 or stride < 1:
            raise ValueError(f"out_channels={out_channels} and stride={stride} must both be positive.")
        self.out_channels, self.stride = out_channels, stride

    def __call__(self, pooled: jax.Array, sequence: jax.Array) -> jax.Array:
        del pooled
        batch, tokens, width = sequence.shape
        weights = adaptive_pool_matrix(width, self.out_channels * self.stride)
        values = jnp.einsum("btd,nd->btn", sequence.astype(jnp.float32), weights, precision=_HIGHEST)
        return values.reshape(batch, self.out_channels, tokens * self.stride).transpose(0, 2, 1)


class SequenceLinearHead(nnx.Module):
    """A learned 1D dense head (`head.dense_1d=linear`, not in the official code): each token's state is mapped by
    one linear layer to its own `stride` output positions (t * stride ... (t + 1) * stride - 1) of every channel.
    The official head can only average blocks of a layer-normed state, whose scale is fixed, so
    targets whose amplitude varies (an identity map, a PDE's solution) are out of its reach."""

    def __init__(self, width: int, out_channels: int, stride: int, *, param_dtype=jnp.float32, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        if out_channels < 1 or stride < 1:
            raise ValueError(f"out_channels={out_channels} and stride={stride} must both be positive.")
        self.out_channels, self.stride = out_channels, stride
        self.linear = nnx.Linear(width, out_channels * stride, param_dtype=param_dtype, dtype=dtype, rngs=rngs)

    def __call__(self, pooled: jax.Array, sequence: jax.Array) -> jax.Array:
        del pooled
        batch, tokens, _ = sequence.shape
        values = self.linear(sequence).astype(jnp.float32)
        return values.reshape(batch, tokens, self.out_channels, self.stride).transpose(0, 1, 3, 2).reshape(
            batch, tokens * self.stride, self.out_channels)


class ImageDenseHead(nnx.Module):
    """SimMIM decoder + adaptive pooling: `[batch, grid_h * grid_w, width]` -> `[batch, *output_size, out_channels]`.

    `grid` is the final Swin grid (7 x 7 for 224 images), `encoder_stride` the body's total downsampling (32 for
    Swin with 4x4 patches and 4 stages), so the decoder reconstructs `grid * encoder_stride` pixels (224 x 224) in
    `reconstruction_channels` (3, as `SwinForMaskedImageModeling`) channels. The 1x1 convolution is initialised as
    transformers initialises Swin's (normal, std 0.02; bias 0).
    """

    def __init__(
        self,
        width: int,
        *,
        grid: tuple[int, int],
        encoder_stride: int,
        out_channels: int,
        output_size: tuple[int, int],
        reconstruction_channels: int = 3,
        param_dtype=jnp.float32,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if out_channels < 1 or min(output_size) < 1:
            raise ValueError(f"out_channels={out_channels} and output_size={output_size} must be positive.")
        self.grid, self.encoder_stride = tuple(grid), encoder_stride
        self.out_channels, self.output_size = out_channels, tuple(output_size)
        self.decoder = nnx.Conv(
            width, encoder_stride**2 * reconstruction_channels, kernel_size=(1, 1),
            kernel_init=nnx.initializers.normal(0.02), param_dtype=param_dtype, dtype=dtype, rngs=rngs,
        )

    def __call__(self, pooled: jax.Array, sequence: jax.Array) -> jax.Array:
        del pooled
        (grid_h, grid_w), (batch, tokens, width) = self.grid, sequence.shape
        if tokens != grid_h * grid_w:
            raise ValueError(
                f"ImageDenseHead was built for a {grid_h}x{grid_w} grid ({grid_h * grid_w} tokens) but got {tokens} "
                "tokens: build it with the grid of the body's last stage for the embedder's image size."
            )
        maps = self.decoder(sequence.reshape(batch, grid_h, grid_w, width))
        image = pixel_shuffle(maps, self.encoder_stride).astype(jnp.float32)
        rows = adaptive_pool_matrix(image.shape[1], self.output_size[0])
        cols = adaptive_pool_matrix(image.shape[2], self.output_size[1])
        channels = adaptive_pool_matrix(image.shape[3], self.out_channels)
        return jnp.einsum("bhwc,ih,jw,kc->bijk", image, rows, cols, channels, precision=_HIGHEST)

    @classmethod
    def from_body(
        cls, body: Swin, *, out_channels: int, output_size: tuple[int, int], image_size: tuple[int, int] | None = None,
        rngs: nnx.Rngs,
    ) -> ImageDenseHead:
        """The head for `body` fed `image_size` images (default: the body's, which ORCA's embedder resizes to)."""
        config = body.config
        image_size = tuple(image_size or config.image_size)
        stride = config.patch_size[0] * 2 ** (len(config.depths) - 1)
        if config.patch_size[0] != config.patch_size[1] or image_size[0] % stride or image_size[1] % stride:
            raise ValueError(
                f"The SimMIM decoder needs square patches and an image size divisible by the total stride {stride}; "
                f"got patch_size={config.patch_size}, image_size={image_size}."
            )
        grid = (image_size[0] // stride, image_size[1] // stride)
        return cls(
            config.num_features, grid=grid, encoder_stride=stride, out_channels=out_channels, output_size=output_size,
            param_dtype=body.param_dtype, dtype=body.dtype, rngs=rngs,
        )
