"""The BERT-family text encoder (BERT, RoBERTa, XLM-RoBERTa, MiniLM and other BERT-style checkpoints) in Flax NNX.

One module covers the family because its members differ only in numbers that `config.json` carries: where
position ids start (RoBERTa-style models count from `pad_token_id + 1` and give padding tokens the padding
position; BERT counts from 0), the number of token types, the layer-norm epsilon and the activation. The only
per-family knowledge is that position rule, keyed on `model_type` in `TextEncoderConfig.from_hf`.

ORCA feeds the body with its own embedder's tokens, so there are three ways in:
- `body(input_ids)`: the model's own embeddings (word + position + token type, layer norm, dropout);
- `body(inputs_embeds=x)`: like transformers' `inputs_embeds`, replacing only the word embeddings;
- `body.encode(x)`: skip the whole embedding module; ORCA's 1D embedder adds its own positions and norm.

Dropout is on exactly when `rngs` (an `nnx.Rngs` with a `dropout` stream) is passed to the call; without it the
call is deterministic. This keeps the module free of random state, so a jitted train step is a pure function of
the parameters and a key.

`param_dtype` is the parameters' storage dtype and `dtype` the compute dtype (both float32 by default; see
`orca_jax.models.layers` for what stays float32). Outputs come out in the compute dtype.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

from orca_jax.models.hf_config import fields_from_hf
from orca_jax.models.layers import ACTIVATIONS, Dense, attention, check_activation, dropout

# model_type -> (position ids count from pad_token_id + 1 and skip padding tokens?)
_PADDING_OFFSET_POSITIONS = {"bert": False, "roberta": True, "xlm-roberta": True, "camembert": True}



@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    padding_offset_positions: bool = False
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    add_pooling_layer: bool = True
    model_type: str = "bert"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}."
            )
        check_activation(self.hidden_act)

    @property
    def first_position(self) -> int:
        """Position id of the first token: RoBERTa's table reserves rows 0..pad_token_id for padding."""
        return self.pad_token_id + 1 if self.padding_offset_positions else 0

    @property
    def max_tokens(self) -> int:
        return self.max_position_embeddings - self.first_position

    @classmethod
    def from_hf(cls, config: dict, *, add_pooling_layer: bool = True) -> TextEncoderConfig:
        model_type = config.get("model_type")
        if model_type not in _PADDING_OFFSET_POSITIONS:
            raise ValueError(
                f"model_type={model_type!r} is not a BERT-family encoder orca-jax knows; supported: "
                f"{sorted(_PADDING_OFFSET_POSITIONS)}."
            )
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"position_embedding_type={config['position_embedding_type']!r} is not supported; only 'absolute'."
            )
        if config.get("is_decoder") or config.get("add_cross_attention"):
            raise ValueError("Decoder / cross-attention configs are not encoders; load an encoder checkpoint.")
        return cls(
            **fields_from_hf(cls, config, exclude={"padding_offset_positions", "add_pooling_layer"}),
            padding_offset_positions=_PADDING_OFFSET_POSITIONS[model_type],
            add_pooling_layer=add_pooling_layer,
        )


@struct.dataclass
class EncoderOutput:
    last_hidden_state: jax.Array  # [batch, length, width]
    pooler_output: jax.Array | None = None  # [batch, width], tanh(dense(first token)) when the body has a pooler
    hidden_states: tuple[jax.Array, ...] | None = None  # embedding output, then each layer's output


def attention_bias(attention_mask: jax.Array | None) -> jax.Array | None:
    """[batch, length] 1/0 mask -> additive float32 [batch, 1, 1, length] bias (a large negative number at padding)."""
    if attention_mask is None:
        return None
    return jnp.where(attention_mask[:, None, None, :].astype(bool), 0.0, jnp.finfo(jnp.float32).min)


class SelfAttention(nnx.Module):
    """Self-attention with one fused [width, 3 * width] query/key/value projection: one matmul instead of three
    (checkpoints' separate query, key and value tensors are the kernel's three column blocks, in that order)."""

    def __init__(self, width: int, heads: int, dropout: float, *, param_dtype, dtype, rngs: nnx.Rngs):
        self.qkv = Dense(width, 3 * width, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.out = Dense(width, width, param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.heads = heads
        self.dropout = dropout

    def __call__(self, x: jax.Array, bias: jax.Array | None, rngs: nnx.Rngs | None) -> jax.Array:
        batch, length, width = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, width // self.heads)
        context = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], bias, self.dropout, rngs)
        return self.out(context.reshape(batch, length, width))


class EncoderLayer(nnx.Module):
    """Post-norm transformer block, as in BERT: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, config: TextEncoderConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        width, eps = config.hidden_size, config.layer_norm_eps
        kw = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.attention = SelfAttention(width, config.num_attention_heads, config.attention_probs_dropout_prob, **kw)
        self.attention_norm = nnx.LayerNorm(width, epsilon=eps, **kw)
        self.mlp_in = Dense(width, config.intermediate_size, **kw)
        self.mlp_out = Dense(config.intermediate_size, width, **kw)
        self.mlp_norm = nnx.LayerNorm(width, epsilon=eps, **kw)
        self.activation = config.hidden_act
        self.dropout = config.hidden_dropout_prob

    def __call__(self, x: jax.Array, bias: jax.Array | None, rngs: nnx.Rngs | None) -> jax.Array:
        x = self.attention_norm(x + dropout(self.attention(x, bias, rngs), self.dropout, rngs))
        hidden = ACTIVATIONS[self.activation](self.mlp_in(x))
        return self.mlp_norm(x + dropout(self.mlp_out(hidden), self.dropout, rngs))


class TextEmbeddings(nnx.Module):
    def __init__(self, config: TextEncoderConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        width = config.hidden_size
        kw = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.word = nnx.Embed(config.vocab_size, width, **kw)
        self.position = nnx.Embed(config.max_position_embeddings, width, **kw)
        self.token_type = nnx.Embed(config.type_vocab_size, width, **kw)
        self.norm = nnx.LayerNorm(width, epsilon=config.layer_norm_eps, **kw)
        self.config = config

    def position_ids(self, length: int, input_ids: jax.Array | None = None) -> jax.Array:
        """Position ids as the family defines them; RoBERTa-style ids skip padding tokens in `input_ids`."""
        config = self.config
        if length > config.max_tokens:
            raise ValueError(
                f"Sequence length {length} exceeds this body's {config.max_tokens} positions "
                f"(max_position_embeddings={config.max_position_embeddings}, first position {config.first_position}); "
                "shorten the input (ORCA: lower target_seq_len)."
            )
        if input_ids is not None and config.padding_offset_positions:
            not_pad = (input_ids != config.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(not_pad, axis=1) * not_pad + config.pad_token_id
        return jnp.arange(length)[None, :] + config.first_position

    def __call__(
        self,
        input_ids: jax.Array | None,
        inputs_embeds: jax.Array | None,
        token_type_ids: jax.Array | None,
        position_ids: jax.Array | None,
        rngs: nnx.Rngs | None,
    ) -> jax.Array:
        x = self.word(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.word.dtype)
        if position_ids is None:
            position_ids = self.position_ids(x.shape[1], input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(x.shape[:2], jnp.int32)
        x = x + self.position(position_ids) + self.token_type(token_type_ids)
        return dropout(self.norm(x), self.config.hidden_dropout_prob, rngs)


class Pooler(nnx.Module):
    def __init__(self, width: int, *, param_dtype, dtype, rngs: nnx.Rngs):
        self.dense = Dense(width, width, param_dtype=param_dtype, dtype=dtype, rngs=rngs)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return jnp.tanh(self.dense(hidden[:, 0]))


class TextEncoder(nnx.Module):
    """A BERT-family encoder; see the module docstring for the three entry points, dropout and dtypes."""

    def __init__(self, config: TextEncoderConfig, *, param_dtype=jnp.float32, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.param_dtype, self.dtype = param_dtype, dtype
        kw = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.embeddings = TextEmbeddings(config, **kw)
        self.layers = nnx.List([EncoderLayer(config, **kw) for _ in range(config.num_hidden_layers)])
        self.pooler = Pooler(config.hidden_size, **kw) if config.add_pooling_layer else None

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        output_hidden_states: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> EncoderOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids [batch, length] and inputs_embeds [batch, length, width].")
        x = self.embeddings(input_ids, inputs_embeds, token_type_ids, position_ids, rngs)
        return self.encode(x, attention_mask=attention_mask, output_hidden_states=output_hidden_states, rngs=rngs)

    def encode(
        self,
        hidden_states: jax.Array,
        *,
        attention_mask: jax.Array | None = None,
        output_hidden_states: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> EncoderOutput:
        """Runs the transformer layers on already-embedded tokens [batch, length, width], skipping the embeddings."""
        width = self.config.hidden_size
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != width:
            raise ValueError(f"Expected embedded tokens of shape [batch, length, {width}], got {hidden_states.shape}.")
        x = hidden_states.astype(self.dtype)
        bias = attention_bias(attention_mask)
        states = [x]
        for layer in self.layers:
            x = layer(x, bias, rngs)
            states.append(x)
        return EncoderOutput(
            last_hidden_state=x,
            pooler_output=None if self.pooler is None else self.pooler(x),
            hidden_states=tuple(states) if output_hidden_states else None,
        )
