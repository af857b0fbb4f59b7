"""Pieces both bodies share: the activations Hugging Face configs name, and call-time dropout.

Dropout takes its key from an `nnx.Rngs` passed to the call rather than one stored in the module, so modules hold
parameters only and a jitted train step is a pure function of parameters and a key.
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
