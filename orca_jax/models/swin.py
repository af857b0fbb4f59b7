"""The Swin Transformer (v1) body in Flax NNX, numerically equal to transformers' `SwinModel`.

Images enter as NHWC, `[batch, height, width, channels]` (the JAX convention; transformers takes NCHW). Two ways in:
- `body(images)`: Swin's own patch embedding (conv with kernel = stride = patch size, layer norm, optional absolute
  position embeddings, dropout), then the stages;
- `body.encode(tokens, grid)`: skip the patch embedding. `tokens` are `[batch, height * width, embed_dim]` in
  row-major grid order and `grid = (height, width)`; ORCA's 2D embedder replaces Swin's patch embedding this way.

Both return a `SwinOutput`: `last_hidden_state` `[batch, tokens, width]` after the final layer norm,
`pooler_output` `[batch, width]` (its mean over tokens) and, with `output_hidden_states=True`, the hidden states
as transformers defines them: the embedding output, then each stage's output (after its patch merging, so the
last entry is the last stage before the final norm), as tokens (`hidden_states`) and as NHWC maps
(`reshaped_hidden_states`; transformers' are NCHW).

Everything that depends on the image size is computed from the shapes at trace time (numpy constants, no
parameters, no gathers): the relative-position bias is built from its learned table with two one-hot contractions,
and the shifted-window masks are constants. As in transformers, a stage's grid that is not a multiple of the window
is padded with zeros after the block's first layer norm (the padded tokens take part in attention, as there), and
patch merging pads odd grids.

Small grids follow the original Swin (Liu et al., `SwinTransformerBlock`): a block whose grid has a side no larger
than the window uses a window of that side and no shift. transformers 5.24 shrinks the window too but keeps the
full-size bias, which fails with a shape error when a side is strictly smaller than the window; here the bias of
the shrunken window reads the same learned table at the offsets that window can hold (the centre of the table),
which is the original semantics with the checkpoint's table.

`param_dtype` (storage) and `dtype` (compute) are flax's two dtypes, both float32 by default; softmax, layer-norm
statistics and the relative-position bias stay float32 (see `orca_jax.models.layers`).

Training-time randomness follows transformers: dropout (hidden, attention probabilities) and drop path, which
transformers applies to the attention branch only (the original Swin also applies it to the MLP branch). All of
it is on exactly when the call receives `rngs` (an `nnx.Rngs` with a `dropout` stream); the module holds
parameters only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from orca_jax.models.hf_config import fields_from_hf
from orca_jax.models.layers import ACTIVATIONS, Dense, attention, check_activation, dropout

# transformers builds these layer norms with PyTorch's default epsilon, not config.layer_norm_eps.
_TORCH_LAYER_NORM_EPS = 1e-5
# The additive mask value of shifted-window attention in the original Swin and in transformers (not -inf).
_SHIFT_MASK_VALUE = -100.0


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"Expected an int or a (height, width) pair, got {value!r}.")
    return pair  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class SwinConfig:
    image_size: tuple[int, int] = (224, 224)  # only sizes the absolute position embeddings
    patch_size: tuple[int, int] = (4, 4)
    num_channels: int = 3
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.1
    hidden_act: str = "gelu"
    use_absolute_embeddings: bool = False
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "image_size", _pair(self.image_size))
        object.__setattr__(self, "patch_size", _pair(self.patch_size))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(
                f"depths={self.depths} and num_heads={self.num_heads} must be non-empty and of equal length "
                "(one entry per stage)."
            )
        for stage, (width, heads) in enumerate(zip(self.stage_widths, self.num_heads)):
            if width % heads:
                raise ValueError(
                    f"Stage {stage} has width {width} (embed_dim={self.embed_dim} * 2**{stage}), not divisible by "
                    f"num_heads[{stage}]={heads}; choose heads that divide the width."
                )
        if self.window_size < 1:
            raise ValueError(f"window_size={self.window_size} must be a positive integer.")
        check_activation(self.hidden_act)

    @property
    def stage_widths(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    @property
    def num_features(self) -> int:
        """Width of the last stage: the width of `last_hidden_state` and `pooler_output`."""
        return self.stage_widths[-1]

    @property
    def patch_grid(self) -> tuple[int, int]:
        """The grid of `image_size`: the only grid absolute position embeddings fit."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def drop_path_rates(self) -> tuple[float, ...]:
        """Per block, rising linearly from 0 to drop_path_rate over all blocks (as transformers)."""
        total = sum(self.depths)
        return tuple(self.drop_path_rate * i / max(total - 1, 1) for i in range(total))

    @classmethod
    def from_hf(cls, config: dict) -> SwinConfig:
        if config.get("model_type") != "swin":
            raise ValueError(
                f"model_type={config.get('model_type')!r} is not Swin v1 ('swin'); Swin v2 and other variants are not "
                "supported."
            )
        return cls(**fields_from_hf(cls, config))


@struct.dataclass
class SwinOutput:
    last_hidden_state: jax.Array  # [batch, tokens, num_features], after the final layer norm
    pooler_output: jax.Array  # [batch, num_features]: mean of last_hidden_state over tokens
    hidden_states: tuple[jax.Array, ...] | None = None  # embedding output, then each stage's output: [batch, tokens, width]
    reshaped_hidden_states: tuple[jax.Array, ...] | None = None  # the same as [batch, height, width, channels]


def block_window(grid: tuple[int, int], window_size: int, shifted: bool) -> tuple[int, int]:
    """(window, shift) a block uses on `grid`: a side no larger than the window shrinks it and turns the shift off."""
    if min(grid) <= window_size:
        return min(grid), 0
    return window_size, window_size // 2 if shifted else 0


@functools.lru_cache(maxsize=None)
def _offset_one_hot(window: int, table_window: int) -> np.ndarray:
    """[window, window, 2*table_window-1]: 1 where the last index is the offset q - k, shifted to start at 0."""
    q, k, d = np.ogrid[:window, :window, : 2 * table_window - 1]
    return (d == q - k + table_window - 1).astype(np.float32)


def relative_position_index(window_size: int) -> np.ndarray:
    """transformers' `relative_position_index` [window², window²] into the ((2w-1)², heads) bias table."""
    coords = np.stack(np.meshgrid(np.arange(window_size), np.arange(window_size), indexing="ij")).reshape(2, -1)
    relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + window_size - 1
    return relative[..., 0] * (2 * window_size - 1) + relative[..., 1]


@functools.lru_cache(maxsize=None)
def shift_mask(padded_grid: tuple[int, int], window: int, shift: int) -> np.ndarray | None:
    """[num_windows, window², window²] additive mask of shifted windows (0 within a region, -100 across); None if
    unshifted. Regions and window order are transformers' (and the original Swin's)."""
    if shift == 0:
        return None
    height, width = padded_grid

    def regions(n):
        i = np.arange(n)
        return (i >= n - window).astype(np.int64) + (i >= n - shift)

    image = regions(height)[:, None] * 3 + regions(width)[None, :]
    windows = image.reshape(height // window, window, width // window, window).transpose(0, 2, 1, 3)
    windows = windows.reshape(-1, window * window)
    return np.where(windows[:, None, :] != windows[:, :, None], _SHIFT_MASK_VALUE, 0.0).astype(np.float32)


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """[batch, H, W, C] (H, W multiples of window) -> [batch, windows, window², C], windows in row-major order."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // window, window, width // window, window, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, -1, window * window, channels)


def window_merge(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
    """Inverse of `window_partition`."""
    batch, _, _, channels = windows.shape
    x = windows.reshape(batch, height // window, width // window, window, window, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height, width, channels)


class WindowAttention(nnx.Module):
    """Multi-head self-attention within windows, with Swin's learned relative-position bias. Query, key and value
    come from one fused [width, 3 * width] projection (the checkpoint's three tensors are its column blocks)."""

    def __init__(
        self, width: int, heads: int, window_size: int, config: SwinConfig, *, param_dtype, dtype, rngs: nnx.Rngs
    ):
        kw = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.qkv = Dense(width, 3 * width, use_bias=config.qkv_bias, **kw)
        self.out = Dense(width, width, **kw)
        table_shape = ((2 * window_size - 1) ** 2, heads)
        init = nnx.initializers.truncated_normal(0.02)
        self.relative_position_bias_table = nnx.Param(init(rngs.params(), table_shape, param_dtype))
        self.heads = heads
        self.window_size = window_size
        self.dropout = config.attention_probs_dropout_prob

    def relative_position_bias(self, window: int) -> jax.Array:
        """[heads, window², window²] float32 bias for a window of side `window` (≤ the table's window)."""
        side = 2 * self.window_size - 1
        table = self.relative_position_bias_table[...].astype(jnp.float32).reshape(side, side, self.heads)
        one_hot = jnp.asarray(_offset_one_hot(window, self.window_size))
        # bias[h, (qi, qj), (ki, kj)] = table[qi - ki, qj - kj, h]: two one-hot contractions instead of a gather.
        bias = jnp.einsum("ikd,jle,deh->hijkl", one_hot, one_hot, table, precision=jax.lax.Precision.HIGHEST)
        return bias.reshape(self.heads, window * window, window * window)

    def __call__(self, windows: jax.Array, bias: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        """windows [batch, num_windows, tokens, width]; bias [num_windows or 1, heads, tokens, tokens] float32."""
        batch, num_windows, tokens, width = windows.shape
        qkv = self.qkv(windows).reshape(batch, num_windows, tokens, 3, self.heads, width // self.heads)
        context = attention(qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :], bias, self.dropout, rngs)
        return self.out(context.reshape(batch, num_windows, tokens, width))


class SwinBlock(nnx.Module):
    """Pre-norm block: x += drop_path(attention over (shifted) windows of LN(x)); x += MLP(LN(x))."""

    def __init__(
        self, width: int, heads: int, shifted: bool, drop_path: float, config: SwinConfig, *, param_dtype, dtype, rngs
    ):
        kw = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        hidden = int(config.mlp_ratio * width)
        self.layernorm_before = nnx.LayerNorm(width, epsilon=config.layer_norm_eps, **kw)
        self.attention = WindowAttention(width, heads, config.window_size, config, **kw)
        self.layernorm_after = nnx.LayerNorm(width, epsilon=config.layer_norm_eps, **kw)
        self.mlp_in = Dense(width, hidden, **kw)
        self.mlp_out = Dense(hidden, width, **kw)
        self.shifted = shifted
        self.drop_path = drop_path
        self.window_size = config.window_size
        self.activation = config.hidden_act
        self.dropout = config.hidden_dropout_prob

    def attention_bias(self, padded_grid: tuple[int, int], window: int, shift: int) -> jax.Array:
        """Relative-position bias plus the shifted-window mask: [num_windows or 1, heads, window², window²]."""
        bias = self.attention.relative_position_bias(window)[None]
        mask = shift_mask(padded_grid, window, shift)
        return bias if mask is None else bias + jnp.asarray(mask)[:, None]

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        """x: [batch, height, width, channels]."""
        batch, height, width, channels = x.shape
        window, shift = block_window((height, width), self.window_size, self.shifted)
        pad_h, pad_w = -height % window, -width % window
        h = self.layernorm_before(x)
        h = jnp.pad(h, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        padded = (height + pad_h, width + pad_w)
        if shift:
            h = jnp.roll(h, (-shift, -shift), axis=(1, 2))
        h = self.attention(window_partition(h, window), self.attention_bias(padded, window, shift), rngs)
        h = window_merge(dropout(h, self.dropout, rngs), window, *padded)
        if shift:
            h = jnp.roll(h, (shift, shift), axis=(1, 2))
        x = x + dropout(h[:, :height, :width], self.drop_path, rngs, per_sample=True)
        h = self.mlp_out(ACTIVATIONS[self.activation](self.mlp_in(self.layernorm_after(x))))
        return x + dropout(h, self.dropout, rngs)


class PatchMerging(nnx.Module):
    """2×2 neighbourhoods -> one token: concatenate (pad odd sides with zeros), LayerNorm(4C), Linear(4C -> 2C)."""

    def __init__(self, width: int, *, param_dtype, dtype, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.norm = nnx.LayerNorm(4 * width, epsilon=_TORCH_LAYER_NORM_EPS, **kw)
        self.reduction = Dense(4 * width, 2 * width, use_bias=False, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        x = jnp.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
        height, width = x.shape[1] // 2, x.shape[2] // 2
        # transformers concatenates x[row::2, col::2] for col in (0, 1) for row in (0, 1): channel block col*2 + row.
        x = x.reshape(batch, height, 2, width, 2, channels).transpose(0, 1, 3, 4, 2, 5)
        return self.reduction(self.norm(x.reshape(batch, height, width, 4 * channels)))


class SwinStage(nnx.Module):
    def __init__(self, config: SwinConfig, stage: int, *, param_dtype, dtype, rngs: nnx.Rngs):
        width, heads = config.stage_widths[stage], config.num_heads[stage]
        first = sum(config.depths[:stage])
        rates = config.drop_path_rates[first : first + config.depths[stage]]
        self.blocks = nnx.List(
            [
                SwinBlock(width, heads, i % 2 == 1, rate, config, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
                for i, rate in enumerate(rates)
            ]
        )
        last = stage == len(config.depths) - 1
        self.downsample = None if last else PatchMerging(width, param_dtype=param_dtype, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        for block in self.blocks:
            x = block(x, rngs)
        return x if self.downsample is None else self.downsample(x)


class SwinEmbeddings(nnx.Module):
    """Patch embedding: NHWC images (sides padded with zeros to multiples of the patch) -> tokens and grid."""

    def __init__(self, config: SwinConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.projection = nnx.Conv(
            config.num_channels, config.embed_dim, kernel_size=config.patch_size, strides=config.patch_size,
            padding="VALID", **kw,
        )
        self.norm = nnx.LayerNorm(config.embed_dim, epsilon=_TORCH_LAYER_NORM_EPS, **kw)
        grid, init = config.patch_grid, nnx.initializers.truncated_normal(0.02)
        self.position_embeddings = (
            nnx.Param(init(rngs.params(), (1, grid[0] * grid[1], config.embed_dim), param_dtype))
            if config.use_absolute_embeddings
            else None
        )
        self.config = config

    def __call__(self, images: jax.Array, rngs: nnx.Rngs | None = None) -> tuple[jax.Array, tuple[int, int]]:
        config = self.config
        if images.ndim != 4 or images.shape[-1] != config.num_channels:
            raise ValueError(
                f"Expected NHWC images [batch, height, width, {config.num_channels}], got shape {images.shape} "
                "(transformers' NCHW pixel_values need x.transpose(0, 2, 3, 1))."
            )
        (ph, pw), (height, width) = config.patch_size, images.shape[1:3]
        images = jnp.pad(images.astype(self.norm.dtype), ((0, 0), (0, -height % ph), (0, -width % pw), (0, 0)))
        x = self.projection(images)
        grid = (x.shape[1], x.shape[2])
        x = self.norm(x.reshape(x.shape[0], grid[0] * grid[1], -1))
        if self.position_embeddings is not None:
            if grid != config.patch_grid:
                raise ValueError(
                    f"This Swin has absolute position embeddings for a {config.patch_grid} patch grid "
                    f"(image_size={config.image_size}); images of {height}x{width} give {grid}. Resize the images "
                    "to image_size (position-embedding interpolation is not implemented)."
                )
            x = x + self.position_embeddings[...].astype(x.dtype)
        return dropout(x, config.hidden_dropout_prob, rngs), grid


class Swin(nnx.Module):
    """Swin v1 body; see the module docstring for the two entry points, the outputs, dropout and dtypes."""

    def __init__(self, config: SwinConfig, *, param_dtype=jnp.float32, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.param_dtype, self.dtype = param_dtype, dtype
        kw = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.embeddings = SwinEmbeddings(config, **kw)
        self.layers = nnx.List([SwinStage(config, i, **kw) for i in range(len(config.depths))])
        self.layernorm = nnx.LayerNorm(config.num_features, epsilon=config.layer_norm_eps, **kw)

    def __call__(
        self, images: jax.Array, *, output_hidden_states: bool = False, rngs: nnx.Rngs | None = None
    ) -> SwinOutput:
        """images: NHWC `[batch, height, width, num_channels]`, any size (sides padded to the patch size)."""
        tokens, grid = self.embeddings(images, rngs)
        return self.encode(tokens, grid, output_hidden_states=output_hidden_states, rngs=rngs)

    def encode(
        self,
        tokens: jax.Array,
        grid: Sequence[int],
        *,
        output_hidden_states: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> SwinOutput:
        """Runs the stages on embedded patch tokens `[batch, height * width, embed_dim]` (row-major over the grid
        `(height, width)`, Python ints: shapes are static under jit), skipping the patch embedding, then the final
        norm and mean pooling. Tokens are cast to the compute dtype."""
        height, width = (int(g) for g in grid)
        embed_dim = self.config.embed_dim
        if tokens.ndim != 3 or tokens.shape[1] != height * width or tokens.shape[2] != embed_dim:
            raise ValueError(
                f"Expected patch tokens of shape [batch, {height}*{width}={height * width}, {embed_dim}] for grid "
                f"{(height, width)}, got {tokens.shape}."
            )
        x = tokens.reshape(tokens.shape[0], height, width, embed_dim).astype(self.dtype)
        maps = [x]
        for stage in self.layers:
            x = stage(x, rngs)
            maps.append(x)
        batch, height, width, channels = x.shape
        sequence = self.layernorm(x.reshape(batch, height * width, channels))
        pooled = jnp.mean(sequence.astype(jnp.float32), axis=1).astype(sequence.dtype)
        if not output_hidden_states:
            return SwinOutput(sequence, pooled)
        flat = tuple(m.reshape(m.shape[0], -1, m.shape[-1]) for m in maps)
        return SwinOutput(sequence, pooled, flat, tuple(maps))


def stage_windows(config: SwinConfig, image_hw: tuple[int, int]) -> list[tuple[tuple[int, int], int, int]]:
    """Per stage: (grid, window, shift of odd blocks) for images of `image_hw`; documents the small-grid rule."""
    grid = (math.ceil(image_hw[0] / config.patch_size[0]), math.ceil(image_hw[1] / config.patch_size[1]))
    out = []
    for _ in config.depths:
        window, shift = block_window(grid, config.window_size, True)
        out.append((grid, window, shift))
        grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
    return out
