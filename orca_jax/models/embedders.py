"""ORCA's task-specific embedders: raw task inputs -> tokens of the pretrained body's width.

Both follow the official code's architecture and initialisation, with JAX's channels-last layout:
- `SequenceEmbedder` (1D inputs `[batch, length, channels]`, for the text encoder): a stacking convolution with
  kernel = stride = s, where s is the smallest divisor of the length giving at most `target_seq_len` tokens; then
  layer norm; then the body's pretrained position embeddings, added after the norm (the official order, which
  differs from the body's own LN(word + position)). Positions start where the body's family starts them
  (RoBERTa: 2).
- `ImageEmbedder` (2D inputs `[batch, height, width, channels]`, for Swin): bilinear resize to the body's image
  size, a patch convolution whose pretrained RGB weights are tiled over however many input channels the task has,
  and the body's patch-embedding layer norm. Like the official embedder it replaces Swin's whole embedding module,
  so absolute position embeddings (absent from the Swin checkpoints ORCA uses) and embedding dropout are not used.

Both also give `pooled(x)`, their tokens' mean, which is all the align stage compares with source features. A
token is a layer norm of a linear map of one patch of k input values, so when k is below the width the mean can be
formed from the patches alone (`mean_normalised_projection`): the [batch, tokens, width] tokens, whose passes were
two thirds of an align step at ECG's sizes, are never formed.

`from_body(..., init_from_body=True)` copies the pretrained pieces (as new arrays: a parameter aliasing the body's
buffer would be deleted with it when a train step donates its inputs) as the official code does when the align stage
runs; `init_from_body=False` is the official initialisation of the no-alignment ablation. Either way the embedder
takes the body's parameter and compute dtypes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from orca_jax.models.swin import Swin
from orca_jax.models.text_encoder import TextEncoder

# PyTorch's xavier_uniform_(gain=sqrt(2)) of the official 1D convolution.
_XAVIER_GAIN_SQRT2 = nnx.initializers.variance_scaling(2.0, "fan_avg", "uniform")
_FULL = jax.lax.Precision.HIGHEST


def mean_normalised_projection(patches: jax.Array, projection: nnx.Conv, norm: nnx.LayerNorm) -> jax.Array:
    """mean_t LayerNorm(patches[:, t] @ W + b) in float32 for patches [batch, tokens, k], W = the projection's
    kernel as [k, width] (a convolution whose stride is its kernel maps each patch on its own).

    Exact algebra, not an approximation: with W', b' the kernel and bias centred over the width, token t centred is
    z_t = p_t W' + b', its variance (p_t G p_tᵀ + 2 p_t W' b' + b'·b') / width with G = W' W'ᵀ [k, k], and so
    mean_t z_t r_t = ((Σ_t r_t p_t) W' + (Σ_t r_t) b') / T with r_t = 1/√(var_t + eps). That costs O(k²) per token
    instead of O(k · width), so it is used when k < width; otherwise the tokens are formed. The small products run
    at full float32 precision (accelerators' default matmul precision would round the quadratic form's terms).
    """
    batch, tokens, k = patches.shape
    kernel = projection.kernel[...].astype(jnp.float32).reshape(k, -1)
    bias = projection.bias[...].astype(jnp.float32)
    patches = patches.astype(jnp.float32)
    width = kernel.shape[1]
    if k >= width:  # the Gram matrix would cost more than the tokens
        return jnp.mean(norm(jnp.matmul(patches, kernel, precision=_FULL) + bias).astype(jnp.float32), axis=1)
    kernel = kernel - jnp.mean(kernel, axis=1, keepdims=True)
    bias = bias - jnp.mean(bias)
    gram = jnp.matmul(kernel, kernel.T, precision=_FULL)
    linear = 2.0 * jnp.matmul(kernel, bias, precision=_FULL)
    quadratic = jnp.sum(jnp.matmul(patches, gram, precision=_FULL) * patches, axis=-1)
    variance = (quadratic + jnp.matmul(patches, linear, precision=_FULL) + jnp.dot(bias, bias)) / width
    r = jax.lax.rsqrt(jnp.maximum(variance, 0.0) + norm.epsilon)
    weighted = jnp.einsum("bt,btk->bk", r, patches, precision=_FULL)
    mean = (jnp.matmul(weighted, kernel, precision=_FULL) + jnp.sum(r, axis=1)[:, None] * bias) / tokens
    return mean * norm.scale[...].astype(jnp.float32) + norm.bias[...].astype(jnp.float32)


def stacking_factor(length: int, target_seq_len: int) -> int:
    """Smallest divisor s of `length` with length / s <= target_seq_len (the official rule: no padding)."""
    if length < 1 or target_seq_len < 1:
        raise ValueError(f"length={length} and target_seq_len={target_seq_len} must both be positive.")
    return next(s for s in range(1, length + 1) if length % s == 0 and length // s <= target_seq_len)


class SequenceEmbedder(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        length: int,
        width: int,
        *,
        target_seq_len: int,
        num_positions: int,
        first_position: int,
        layer_norm_eps: float,
        norm: bool = True,
        param_dtype=jnp.float32,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.stride = stacking_factor(length, target_seq_len)
        self.length, self.in_channels = length, in_channels
        self.num_tokens = length // self.stride
        if first_position + self.num_tokens > num_positions:
            raise ValueError(
                f"{self.num_tokens} tokens (length {length} / stride {self.stride}) need positions up to "
                f"{first_position + self.num_tokens - 1}, but the body has {num_positions} position embeddings; "
                "lower target_seq_len."
            )
        self.projection = nnx.Conv(
            in_channels, width, kernel_size=(self.stride,), strides=(self.stride,), padding="VALID",
            kernel_init=_XAVIER_GAIN_SQRT2, param_dtype=param_dtype, dtype=dtype, rngs=rngs,
        )
        # The official layer norm makes each token scale-free: a patch's amplitude reaches the body only through the
        # projection's bias. `norm=False` keeps it (embedder.norm, for targets that depend on input amplitudes).
        self.norm = (nnx.LayerNorm(width, epsilon=layer_norm_eps, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
                     if norm else None)
        self.position = nnx.Embed(num_positions, width, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.first_position = first_position

    def _check(self, x: jax.Array) -> None:
        if x.ndim != 3 or x.shape[1:] != (self.length, self.in_channels):
            raise ValueError(
                f"Expected inputs [batch, {self.length}, {self.in_channels}] (channels last), got {x.shape}; "
                "official-layout [batch, channels, length] inputs need x.transpose(0, 2, 1)."
            )

    def _positions(self) -> jax.Array:
        return self.position(jnp.arange(self.num_tokens) + self.first_position)

    @property
    def width(self) -> int:
        return self.projection.out_features

    def __call__(self, x: jax.Array) -> jax.Array:
        self._check(x)
        tokens = self.projection(x.astype(self.projection.dtype))
        return (tokens if self.norm is None else self.norm(tokens)) + self._positions()[None]

    def pooled(self, x: jax.Array) -> jax.Array:
        """The tokens' mean [batch, width], float32, without forming them."""
        self._check(x)
        patches = x.reshape(x.shape[0], self.num_tokens, self.stride * self.in_channels)
        positions = jnp.mean(self._positions().astype(jnp.float32), axis=0)
        if self.norm is None:  # linear: the mean token is the projection of the mean patch
            kernel = self.projection.kernel[...].astype(jnp.float32).reshape(patches.shape[-1], -1)
            mean_patch = jnp.mean(patches.astype(jnp.float32), axis=1)
            bias = self.projection.bias[...].astype(jnp.float32)
            return jnp.matmul(mean_patch, kernel, precision=_FULL) + bias + positions
        return mean_normalised_projection(patches, self.projection, self.norm) + positions

    @classmethod
    def from_body(
        cls,
        body: TextEncoder,
        in_channels: int,
        length: int,
        *,
        target_seq_len: int,
        init_from_body: bool = True,
        norm: bool = True,
        rngs: nnx.Rngs,
    ) -> SequenceEmbedder:
        config = body.config
        embedder = cls(
            in_channels, length, config.hidden_size, target_seq_len=target_seq_len,
            num_positions=config.max_position_embeddings, first_position=config.first_position,
            layer_norm_eps=config.layer_norm_eps, norm=norm, param_dtype=body.param_dtype, dtype=body.dtype,
            rngs=rngs,
        )
        # The position table is copied in both official branches; the norm only when the embedder is aligned.
        embedder.position.embedding.set_value(jnp.copy(body.embeddings.position.embedding[...]))
        if init_from_body and norm:
            embedder.norm.scale.set_value(jnp.copy(body.embeddings.norm.scale[...]))
            embedder.norm.bias.set_value(jnp.copy(body.embeddings.norm.bias[...]))
        return embedder


def tile_channels(kernel: np.ndarray | jax.Array, in_channels: int) -> jax.Array:
    """HWIO patch kernel for `in_channels` inputs: the pretrained input channels repeated, then cut to length."""
    reps = math.ceil(in_channels / kernel.shape[2])
    return jnp.tile(jnp.asarray(kernel), (1, 1, reps, 1))[:, :, :in_channels]


class ImageEmbedder(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        *,
        patch_size: tuple[int, int],
        image_size: tuple[int, int],
        layer_norm_eps: float,
        antialias: bool = False,
        param_dtype=jnp.float32,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_channels, self.image_size, self.antialias = in_channels, tuple(image_size), antialias
        self.projection = nnx.Conv(
            in_channels, embed_dim, kernel_size=tuple(patch_size), strides=tuple(patch_size), padding="VALID",
            kernel_init=nnx.initializers.truncated_normal(0.02), param_dtype=param_dtype, dtype=dtype, rngs=rngs,
        )
        self.norm = nnx.LayerNorm(embed_dim, epsilon=layer_norm_eps, param_dtype=param_dtype, dtype=dtype, rngs=rngs)

    @property
    def width(self) -> int:
        return self.projection.out_features

    def _resized(self, x: jax.Array) -> jax.Array:
        """The resize is bilinear with half-pixel centres and, by default, no antialiasing: what torchvision's
        `Resize` did on tensors when ORCA was published (it matters only when downsizing, e.g. 512 -> 224)."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"Expected NHWC inputs [batch, height, width, {self.in_channels}], got {x.shape}; official-layout "
                "NCHW inputs need x.transpose(0, 2, 3, 1)."
            )
        x = x.astype(self.norm.dtype)
        if x.shape[1:3] != self.image_size:
            shape = (x.shape[0], *self.image_size, x.shape[3])
            x = jax.image.resize(x, shape, method="linear", antialias=self.antialias)
        return x

    @property
    def num_tokens(self) -> int:
        """Tokens per image: the patch grid of the resized input."""
        (ph, pw), (height, width) = self.projection.kernel_size, self.image_size
        return (height // ph) * (width // pw)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, tuple[int, int]]:
        """Tokens `[batch, grid_h * grid_w, embed_dim]` (row-major) and the grid, as Swin's `encode` takes them."""
        x = self.projection(self._resized(x))
        grid = (x.shape[1], x.shape[2])
        return self.norm(x.reshape(x.shape[0], grid[0] * grid[1], x.shape[3])), grid

    def pooled(self, x: jax.Array) -> jax.Array:
        """The tokens' mean [batch, embed_dim], float32, without forming them (patches in the kernel's HWI order)."""
        x = self._resized(x)
        (ph, pw), (batch, height, width, channels) = self.projection.kernel_size, x.shape
        grid = (height // ph, width // pw)  # a VALID convolution drops the rows and columns a patch cannot fill
        x = x[:, : grid[0] * ph, : grid[1] * pw]
        patches = x.reshape(batch, grid[0], ph, grid[1], pw, channels).transpose(0, 1, 3, 2, 4, 5)
        return mean_normalised_projection(patches.reshape(batch, -1, ph * pw * channels), self.projection, self.norm)

    @classmethod
    def from_body(
        cls, body: Swin, in_channels: int, *, init_from_body: bool = True, antialias: bool = False, rngs: nnx.Rngs
    ) -> ImageEmbedder:
        config = body.config
        source = body.embeddings
        embedder = cls(
            in_channels, config.embed_dim, patch_size=config.patch_size, image_size=config.image_size,
            layer_norm_eps=float(source.norm.epsilon), antialias=antialias, param_dtype=body.param_dtype,
            dtype=body.dtype, rngs=rngs,
        )
        if init_from_body:
            embedder.projection.kernel.set_value(tile_channels(source.projection.kernel[...], in_channels))
            embedder.projection.bias.set_value(jnp.copy(source.projection.bias[...]))
            embedder.norm.scale.set_value(jnp.copy(source.norm.scale[...]))
            embedder.norm.bias.set_value(jnp.copy(source.norm.bias[...]))
        return embedder
