"""LoRA: adapters that start as the identity, train alone in the body, and merge into the weights exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict

from orca_jax.models.layers import Dense
from orca_jax.models.lora import PROJECTIONS, add_adapters, has_adapters, merge
from orca_jax.train.finetune import trainable
from orca_jax.train.optimizers import refine_optimizer
from tests.train.test_finetune import tiny_swin_model, tiny_text_model

RANK = 4


def params(model):
    return dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def adapter_paths(model):
    return {path for path in params(model) if "adapter" in path}


@pytest.mark.parametrize("build", [tiny_text_model, tiny_swin_model])
def test_zero_b_adapters_equal_the_base_model_and_merged_ones_the_adapted_model(build):
    model, x = build()
    base = np.asarray(model(x))
    base_paths = set(params(model))
    count = add_adapters(model.body, rank=RANK, alpha=8.0, rngs=nnx.Rngs(3))
    layers = [m for _, m in model.body.iter_modules() if isinstance(m, Dense) and m.adapter is not None]
    assert count == len(layers) > 0 and {path[-3] for path in adapter_paths(model)} == set(PROJECTIONS)
    assert set(params(model)) - base_paths == adapter_paths(model)  # the body's own parameters keep their paths
    for layer in layers:
        assert layer.adapter.a[...].shape[1] == layer.adapter.b[...].shape[0] == RANK
        assert not np.any(layer.adapter.b[...])
    np.testing.assert_array_equal(np.asarray(model(x)), base)  # B = 0: exactly the base model

    rng = np.random.default_rng(0)
    for layer in layers:  # as if trained
        layer.adapter.b[...] = jnp.asarray(rng.normal(0, 0.2, layer.adapter.b[...].shape), jnp.float32)
    adapted = np.asarray(model(x))
    assert np.max(np.abs(adapted - base)) > 1e-2
    # Independently: each adapted projection's kernel plus scale * A @ B, computed in float64.
    expected = {id(layer): np.asarray(layer.kernel[...], np.float64) + 8.0 / RANK
                * np.asarray(layer.adapter.a[...], np.float64) @ np.asarray(layer.adapter.b[...], np.float64)
                for layer in layers}
    assert merge(model) == count and not has_adapters(model)
    assert set(params(model)) == base_paths
    for layer in layers:
        np.testing.assert_allclose(layer.kernel[...], expected[id(layer)], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(model(x)), adapted, rtol=1e-5, atol=1e-5)


def test_lora_mode_trains_the_adapters_embedder_and_head_only():
    """One AdamW step with weight decay through the refine stage's split: every body parameter bitwise unchanged,
    every adapter, embedder and head parameter moved, and only they hold optimizer state."""
    model, x = tiny_text_model()
    nnx.update(model, jax.tree.map(lambda p: p + 0.05, nnx.state(model, nnx.Param)))
    add_adapters(model.body, rank=RANK, alpha=8.0, rngs=nnx.Rngs(3))
    before = params(model)
    graphdef, train, frozen = nnx.split(model, trainable("lora"), ...)
    optimizer = refine_optimizer(ConfigDict(dict(name="adamw", learning_rate=0.1, weight_decay=0.1, momentum=0.9,
                                                 b1=0.9, b2=0.98, eps=1e-8)),
                                 ConfigDict(dict(accum=1, clip=1.0, warmup_epochs=0, decay_epochs=4)), 4)
    state = optimizer.init(train)
    for _ in range(2):  # B moves in the first step, A (whose gradient goes through B) in the second
        grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, frozen)(x) ** 2))(train)
        updates, state = optimizer.update(grads, state, train)
        train = optax.apply_updates(train, updates)
    after = params(nnx.merge(graphdef, train, frozen))
    moved = {p for p in before if bytes(np.asarray(after[p][...])) != bytes(np.asarray(before[p][...]))}
    expected = {p for p in before if p[0] in ("embedder", "head") or "adapter" in p}
    assert moved == expected, (moved ^ expected)
    held = {p for p, _ in nnx.to_flat_state(train)}
    assert held == expected


def test_bad_targets_and_double_adapters_are_named():
    model, _ = tiny_text_model()
    with pytest.raises(ValueError, match=r"\['qkvv'\] are not body projections"):
        add_adapters(model.body, rank=2, alpha=2.0, targets=("qkvv",), rngs=nnx.Rngs(0))
    add_adapters(model.body, rank=2, alpha=2.0, targets=("qkv",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(model.body, rank=2, alpha=2.0, rngs=nnx.Rngs(0))
