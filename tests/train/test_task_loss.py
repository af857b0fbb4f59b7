"""The task objective: loss options resolved against the training split, and outputs decoded to the targets' units,
checked against hand computations."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from orca_jax.config import base_config
from orca_jax.data import task_from_arrays
from orca_jax.data.types import Split
from orca_jax.train.task_loss import make_task_loss

RNG = np.random.default_rng(0)


def objective(task, **options):
    config = base_config().task
    config.update(options)
    return make_task_loss(task, config)


def test_inverse_frequency_class_weights_as_the_official_tabular_loss():
    y = np.array([0] * 30 + [1] * 10 + [2] * 60)
    task = task_from_arrays(RNG.normal(size=(100, 1, 4)), y, kind="tabular")
    obj = objective(task)
    counts = np.bincount(np.asarray(task.train.y), minlength=3)
    np.testing.assert_allclose(obj.class_weights, len(task.train.y) / counts / 3, rtol=1e-6)
    logits, labels = RNG.normal(size=(6, 3)).astype(np.float32), np.array([0, 1, 2, 2, 1, 0])
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    w = obj.class_weights[labels]
    expected = -(w * log_probs[np.arange(6), labels]).sum() / w.sum()
    assert float(obj.loss(jnp.asarray(logits), jnp.asarray(labels), jnp.ones(6))) == pytest.approx(expected, rel=1e-5)


def test_target_normalisation_is_decoded_before_loss_and_metric():
    y = (RNG.normal(size=(80, 12)) * 3 + 5).astype(np.float32)
    task = task_from_arrays(RNG.normal(size=(80, 12, 1)), y, kind="dense_1d")
    element, scalar = objective(task, normalize_targets="elementwise"), objective(task, normalize_targets="global")
    train = np.asarray(task.train.y, np.float64)
    np.testing.assert_allclose(element.target_mean, train.mean(0), rtol=1e-5)
    np.testing.assert_allclose(element.target_std, train.std(0, ddof=1) + 1e-5, rtol=1e-5)  # torch.std: unbiased
    assert float(scalar.target_std) == pytest.approx(train.std(ddof=1) + 1e-5, rel=1e-5)
    raw = RNG.normal(size=(4, 12, 1)).astype(np.float32)  # the dense head's [batch, length, 1]
    decoded = np.asarray(element.outputs(jnp.asarray(raw)))
    np.testing.assert_allclose(decoded, raw[..., 0] * element.target_std + element.target_mean, rtol=1e-5)


def test_clipped_targets_weighted_positives_and_ignored_elements():
    y = RNG.uniform(0, 30, size=(40, 6, 6)).astype(np.float32)
    task = task_from_arrays(RNG.normal(size=(40, 6, 6, 1)), y, kind="dense_2d")
    clipped = objective(task, loss="mse", clip_targets=16.0)
    out, tgt = RNG.uniform(0, 30, size=(3, 6, 6, 1)).astype(np.float32), y[:3]
    expected = np.mean((out[..., 0] - np.minimum(tgt, 16.0)) ** 2)
    assert float(clipped.loss(jnp.asarray(out), jnp.asarray(tgt), jnp.ones(3))) == pytest.approx(expected, rel=1e-5)

    labels = (RNG.uniform(size=(40, 6, 6)) > 0.7).astype(np.float32)
    ignore = (RNG.uniform(size=(40, 6, 6)) > 0.8).astype(np.uint8)
    x = RNG.normal(size=(40, 6, 6, 1)).astype(np.float32)
    cosmic = task_from_arrays(x, labels, kind="dense_2d")
    cosmic = dataclasses.replace(cosmic, train=Split(cosmic.train.x, cosmic.train.y,
                                                     {"ignore": ignore[: len(cosmic.train)]}))
    obj = objective(cosmic, loss="binary_cross_entropy", pos_weight=3.0, ignore_meta="ignore")
    logits = RNG.normal(size=(3, 6, 6, 1)).astype(np.float32)
    keep = 1.0 - ignore[:3]
    z, t = logits[..., 0] * keep, labels[:3] * keep  # the official Cosmic loss: both multiplied by 1 - ignore
    expected = np.mean((1 - t) * z + (1 + (3.0 - 1) * t) * np.log1p(np.exp(-z)))  # torch's BCE with pos_weight
    value = obj.loss(jnp.asarray(logits), jnp.asarray(labels[:3]), jnp.ones(3), {"ignore": jnp.asarray(ignore[:3])})
    assert float(value) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="task.ignore_meta='sky': the training split has no meta array"):
        objective(cosmic, ignore_meta="sky")
    with pytest.raises(ValueError, match="task.pos_weight=3.0 weights binary cross-entropy, but the loss is 'nrmse'"):
        objective(cosmic, pos_weight=3.0)
