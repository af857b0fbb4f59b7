"""Pieces both bodies share: the activations Hugging Face configs name, call-time dropout, and attention.

Dropout takes its key from an `nnx.Rngs` passed to the call rather than one stored in the module, so modules hold
parameters only and a jitted train step is a pure function of parameters and a key.

Precision follows flax's two dtypes: parameters are stored in `param_dtype` (float32 by default: master weights, so
updates at ORCA's learning rates of 1e-5 to 1e-6 are not rounded away) and matmuls and convolutions run in `dtype`
(the compute dtype, e.g. bfloat16). Softmax and layer-norm statistics are float32 whatever `dtype` is: those are the
exponentials and variances where bfloat16's 8-bit mantissa hurts. `param_dtype=dtype=bfloat16` is pure bfloat16.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act={name!r} is not supported; use one of {sorted(ACTIVATIONS)}.")


def dropout(x: jax.Array, rate: float, rngs: nnx.Rngs | None, *, per_sample: bool = False) -> jax.Array:
    """Inverted dropout when `rngs` is given (training), the identity otherwise.

    `per_sample=True` drops whole samples along the leading axis: stochastic depth (drop path) of a residual branch.
    """
    if rngs is None or rate == 0.0:
        return x
    shape = (x.shape[0],) + (1,) * (x.ndim - 1) if per_sample else x.shape
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, dropout_rate: float, rngs: nnx.Rngs | None
) -> jax.Array:
    """Multi-head scaled dot-product attention over the second-to-last-but-one axis: q, k, v `[..., tokens, heads,
    head_dim]` -> `[..., tokens, heads, head_dim]` in v's dtype; `bias` (additive, float32) broadcasts against the
    scores `[..., heads, q_tokens, k_tokens]`.

    The scores accumulate in float32 straight out of the matmul (`preferred_element_type`), and the softmax runs in
    float32; the probabilities go back to the compute dtype for the second matmul.
    """
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("...qhd,...khd->...hqk", q * jnp.asarray(scale, q.dtype), k, preferred_element_type=jnp.float32)
    if bias is not None:
        scores = scores + bias
    probs = dropout(jax.nn.softmax(scores, axis=-1).astype(v.dtype), dropout_rate, rngs)
    return jnp.einsum("...hqk,...khd->...qhd", probs, v)
