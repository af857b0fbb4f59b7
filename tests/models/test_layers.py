"""The bodies' shared layers: `Dense` (nnx.Linear with a CPU-friendly weight gradient) and the GELU we use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from orca_jax.models.layers import ACTIVATIONS, Dense


@pytest.mark.parametrize(
    "shape, features, dtype",
    [
        ((2, 5, 8), 24, jnp.float32),  # fewer inputs than outputs: x is transposed
        ((3, 4, 24), 8, jnp.float32),  # more inputs than outputs: the gradient is transposed
        ((6, 16), 16, jnp.bfloat16),  # bfloat16 compute over float32 weights
    ],
)
def test_dense_equals_nnx_linear_in_value_and_gradients(shape, features, dtype):
    ours = Dense(shape[-1], features, dtype=dtype, rngs=nnx.Rngs(0))
    reference = nnx.Linear(shape[-1], features, dtype=dtype, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)

    @nnx.jit
    def value_and_grads(model, x):
        return nnx.value_and_grad(lambda m, x: jnp.sum(jnp.sin(m(x).astype(jnp.float32))), argnums=(0, 1))(model, x)

    value, (model_grads, x_grad) = value_and_grads(ours, x)
    want, (want_model, want_x) = value_and_grads(reference, x)
    assert value == want
    tolerance = 1e-6 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(x_grad, want_x, rtol=tolerance, atol=tolerance)
    for got, expected in zip(jax.tree.leaves(nnx.state(model_grads)), jax.tree.leaves(nnx.state(want_model))):
        assert got.dtype == expected.dtype == jnp.float32
        np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)


def test_dense_weight_gradients_run_on_xlas_fast_cpu_matmuls():
    """The reason `Dense` exists: with nnx.Linear, XLA's CPU backend computes weight gradients with Eigen dots on
    transposed operands; ours leave no dot outside its YNNPACK fusions. If this fails after a jaxlib upgrade, XLA
    may have learnt to do it alone: compare benchmark_body.py with and without `Dense` before changing anything."""
    x = jnp.ones((4, 32, 64))

    def hlo(model):
        graphdef, params = nnx.split(model, nnx.Param)
        loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(x) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss)).lower(params).compile().as_text()

    entry = lambda text: text[text.index("ENTRY"):]  # noqa: E731
    assert " dot(" in entry(hlo(nnx.Linear(64, 128, rngs=nnx.Rngs(0))))
    for features in (128, 16):
        text = entry(hlo(Dense(64, features, rngs=nnx.Rngs(0))))
        assert " dot(" not in text and "__ynn_fusion" in text, text


def test_gelu_is_the_exact_erf_gelu():
    x = jnp.linspace(-8, 8, 1001)
    np.testing.assert_allclose(ACTIVATIONS["gelu"](x), jax.nn.gelu(x, approximate=False), atol=1e-6)
    grad = jax.vmap(jax.grad(ACTIVATIONS["gelu"]))(x)
    np.testing.assert_allclose(grad, jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x), atol=1e-6)
