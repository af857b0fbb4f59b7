"""Pieces both bodies share: the activations Hugging Face configs name, call-time dropout, attention and dense
layers.

Dropout takes its key from an `nnx.Rngs` passed to the call rather than one stored in the module, so modules hold
parameters only and a jitted train step is a pure function of parameters and a key.

Precision follows flax's two dtypes: parameters are stored in `param_dtype` (float32 by default: master weights, so
updates at ORCA's learning rates of 1e-5 to 1e-6 are not rounded away) and matmuls and convolutions run in `dtype`
(the compute dtype, e.g. bfloat16). Softmax and layer-norm statistics are float32 whatever `dtype` is: those are the
exponentials and variances where bfloat16's 8-bit mantissa hurts. `param_dtype=dtype=bfloat16` is pure bfloat16.

`Dense` layers are `nnx.Linear`s whose weight gradient is arranged for XLA's CPU backend (see `dense_dot_general`);
on other platforms they are plain `nnx.Linear`s.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_SQRT_HALF = float(np.sqrt(0.5))


def _gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU as PyTorch computes it, x * (1 + erf(x / sqrt(2))) / 2: jax.nn.gelu's erfc form is the same
    function but costs XLA's CPU backend a fifth more in the forward and backward passes."""
    return 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype)))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": _gelu_erf,
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


def _weight_gradient_on_cpu(x: jax.Array, g: jax.Array, precision) -> jax.Array:
    """x^T g for x [tokens, in] and g [tokens, out], arranged so that XLA's CPU backend runs it on its fast matmul
    library (YNNPACK), which takes only dots whose left operand contracts over its last axis. XLA otherwise hands
    the transposed contraction to Eigen and transposes an operand inside a fused, strided loop. Here the smaller
    operand is transposed explicitly (when it is g, the result is transposed back); the barriers keep XLA from
    folding the transposes back into the dot.

    The transposed-back result is not free: XLA fuses that transpose into each of AdamW's passes over the gradient.
    Always transposing x instead removes it, but then XLA recomputes GELU inside a strided transpose of the MLP's
    hidden activations, and on CPU optimization barriers do not stop that fusion: no net gain, so not kept (the
    profile and the numbers: docs/results.md, "Where a train step's time goes")."""
    if x.shape[1] <= g.shape[1]:
        return jnp.matmul(jax.lax.optimization_barrier(x.T), g, precision=precision)
    return jax.lax.optimization_barrier(jnp.matmul(jax.lax.optimization_barrier(g.T), x, precision=precision)).T


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense(x: jax.Array, kernel: jax.Array, precision) -> jax.Array:
    return jnp.matmul(x, kernel, precision=precision)


def _dense_forward(x, kernel, precision):
    return _dense(x, kernel, precision), (x, kernel)


def _dense_backward(precision, residuals, g):
    x, kernel = residuals
    flat_x, flat_g = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    kernel_grad = jax.lax.platform_dependent(
        flat_x,
        flat_g,
        cpu=functools.partial(_weight_gradient_on_cpu, precision=precision),
        default=lambda x, g: jnp.matmul(x.T, g, precision=precision),
    )
    return jnp.matmul(g, kernel.T, precision=precision), kernel_grad.astype(kernel.dtype)


_dense.defvjp(_dense_forward, _dense_backward)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
    """The `dot_general` of `Dense` layers: `nnx.Linear`'s contraction (inputs [..., in] with the kernel [in, out])
    with the weight gradient of `_weight_gradient_on_cpu` on CPU; the value and the gradients are those of
    `jax.lax.dot_general`."""
    # Its contract, not unfinished work: `Dense` layers only ever contract inputs' last axis with the kernel's first.
    (lhs_contract, rhs_contract), batch = dimension_numbers
    if tuple(lhs_contract) != (lhs.ndim - 1,) or tuple(rhs_contract) != (0,) or any(batch):
        raise ValueError(f"dense_dot_general computes x @ kernel only, not {dimension_numbers}; use "
                         "jax.lax.dot_general for other contractions.")
    if preferred_element_type is not None or out_sharding is not None:
        raise ValueError("dense_dot_general takes no preferred_element_type or out_sharding; use "
                         "jax.lax.dot_general.")
    return _dense(lhs, rhs, precision)


class Dense(nnx.Linear):
    """`nnx.Linear` with `dense_dot_general` and an optional low-rank adapter added to its output
    (`orca_jax.models.lora`: None unless a LoRA fine-tune adds one, so the plain layer costs nothing extra)."""

    def __init__(self, in_features: int, out_features: int, **kwargs):
        super().__init__(in_features, out_features, dot_general=dense_dot_general, **kwargs)
        self.adapter = nnx.data(None)  # data, not static: a LoRA fine-tune puts a module here

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        return y if self.adapter is None else y + self.adapter(x).astype(y.dtype)

