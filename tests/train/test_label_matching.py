"""Label matching: its loss against NumPy, the source head's penalty against autodiff, a stage that lowers the loss
while training the embedder alone, and the same stage on 8 devices as on one."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from orca_jax.parallel import make_mesh
from orca_jax.train.label_matching import ENTROPY_EPS, LabelMatchingLoss, head_loss, run_label_matching
from tests.train.test_align import align_config, body_dir, make_model, task  # noqa: F401  (fixtures)


def numpy_loss(features, mask, weights, kernel, bias, lam):
    """Per class: mean of the real points' softmax probabilities; Σ_c w_c H(mean_c) − λ H(Σ_c w_c mean_c / Σ w)."""
    def h(q):
        return -np.sum(q * np.log(q + ENTROPY_EPS))

    means = []
    for f, m in zip(features.astype(np.float64), mask):
        logits = f[m] @ kernel + bias
        p = np.exp(logits - logits.max(1, keepdims=True))
        means.append((p / p.sum(1, keepdims=True)).mean(0))
    means = np.asarray(means)
    marginal = (weights[:, None] * means).sum(0) / weights.sum()
    return sum(w * h(q) for w, q in zip(weights, means)) - lam * h(marginal)


def test_the_loss_equals_a_numpy_computation_and_ignores_padding():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 7, 5)).astype(np.float32)
    mask = np.ones((3, 7), bool)
    mask[0, 4:], mask[2, 2:] = False, False
    features[~mask] = np.nan  # padding may hold anything
    weights = np.array([0.2, 0.5, 0.3], np.float32)
    kernel, bias = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    for lam in (0.0, 1.0, 2.5):
        loss = LabelMatchingLoss(jnp.asarray(kernel), jnp.asarray(bias), jnp.asarray(lam, jnp.float32))
        got = float(loss.value(jnp.asarray(features), jnp.asarray(mask), jnp.asarray(weights)))
        assert got == pytest.approx(numpy_loss(features, mask, weights, kernel, bias, lam), rel=1e-5, abs=1e-6)
    value, grad = loss(jnp.asarray(features), jnp.asarray(mask), jnp.asarray(weights))
    assert np.isfinite(float(value)) and not np.any(np.asarray(grad)[~mask]) and np.any(np.asarray(grad)[mask])


def test_the_head_penalty_uses_the_per_example_input_gradient():
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 6))
    params = (jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), jnp.asarray(rng.normal(size=3), jnp.float32))
    tau, rho = 0.4, 100.0
    per_example = jax.vmap(jax.grad(lambda zi, yi: optax.softmax_cross_entropy_with_integer_labels(
        zi @ params[0] + params[1], yi)), in_axes=(0, 0))(z, y)  # autodiff, independent of the written-out form
    norms = np.linalg.norm(np.asarray(per_example), axis=1)
    ce = optax.softmax_cross_entropy_with_integer_labels(z @ params[0] + params[1], y).mean()
    expected = float(ce) + rho / 6 * np.sum(np.maximum(norms - tau, 0) ** 2)
    assert float(head_loss(params, z, y, tau, rho)[0]) == pytest.approx(expected, rel=1e-5)


def match(model, task, workdir, epochs, mesh=None):  # noqa: F811
    x, y, (src_x, src_y) = task
    config = align_config(2)
    config.align.label_matching.update(epochs=epochs, checkpoint_every=2, head_steps=200, lr_multiplier=30.0)
    # The source head reads the body's pooled outputs: a body of width 32 on 4 labelled clusters.
    return run_label_matching(model, x, y, (src_x, src_y), config, mesh=mesh or make_mesh(), workdir=workdir)


def test_label_matching_lowers_its_loss_and_trains_only_the_embedder(body_dir, task, tmp_path):  # noqa: F811
    model = make_model(body_dir)
    others = jax.tree.map(np.array, nnx.state(model, nnx.Not(nnx.PathContains("embedder"))))
    embedder = jax.tree.map(np.array, nnx.state(model.embedder, nnx.Param))
    result = match(model, task, tmp_path, epochs=6)
    assert result.head_accuracy > 0.9  # the source clusters are separable
    assert result.stage.distance_after < result.stage.distance_before, result
    for a, b in zip(jax.tree.leaves(others), jax.tree.leaves(nnx.state(model, nnx.Not(nnx.PathContains("embedder"))))):
        np.testing.assert_array_equal(a, b)
    assert all(np.abs(a - np.asarray(b)).max() > 0 for a, b in
               zip(jax.tree.leaves(embedder), jax.tree.leaves(nnx.state(model.embedder, nnx.Param))))
    summary = json.loads((tmp_path / "label_matching_summary.json").read_text())
    assert summary["loss_after"] == result.stage.distance_after
    assert (tmp_path / "label_matching_loss.png").stat().st_size > 1000
    assert (tmp_path / "aligned_embedder").is_dir()


@pytest.mark.slow
def test_label_matching_on_8_devices_equals_one_device(body_dir, task, tmp_path):  # noqa: F811
    one, eight = make_model(body_dir), make_model(body_dir)
    r1 = match(one, task, tmp_path / "one", epochs=3, mesh=make_mesh(devices=jax.devices()[:1]))
    r8 = match(eight, task, tmp_path / "eight", epochs=3, mesh=make_mesh())
    assert jax.device_count() == 8
    np.testing.assert_allclose([h["loss"] for h in r8.stage.history], [h["loss"] for h in r1.stage.history],
                               rtol=1e-5)
    for a, b in zip(jax.tree.leaves(nnx.state(one.embedder)), jax.tree.leaves(nnx.state(eight.embedder))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
