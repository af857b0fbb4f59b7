"""The losses equal PyTorch's (the official code's) on the real examples of a padded batch, with finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from orca_jax.train import losses

RNG = np.random.default_rng(0)
REAL, PAD = 5, 3  # a last batch of 5 examples padded to 8
MASK = np.r_[np.ones(REAL), np.zeros(PAD)].astype(np.float32)


def _padded(real: np.ndarray, pad: np.ndarray | None = None) -> np.ndarray:
    pad = RNG.normal(size=(PAD, *real.shape[1:])).astype(real.dtype) if pad is None else pad
    return np.concatenate([real, pad])


def _close(ours, expected, rtol=1e-5):
    np.testing.assert_allclose(float(ours), float(expected), rtol=rtol)


@pytest.mark.parametrize("class_weights", [None, np.array([0.5, 2.0, 1.0, 4.0], np.float32)])
def test_cross_entropy_matches_torch(class_weights):
    logits = RNG.normal(size=(REAL, 4)).astype(np.float32) * 3
    labels = np.array([0, 3, 3, 1, 2])
    weight = None if class_weights is None else torch.tensor(class_weights)
    expected = torch.nn.CrossEntropyLoss(weight=weight)(torch.tensor(logits), torch.tensor(labels))
    ours = losses.cross_entropy(
        jnp.asarray(_padded(logits)), jnp.asarray(_padded(labels, np.array([0, 4, -7]))), jnp.asarray(MASK),
        class_weights=class_weights,
    )
    _close(ours, expected)  # out-of-range labels in the padding do not leak in
    unmasked = losses.cross_entropy(jnp.asarray(_padded(logits)), jnp.asarray(_padded(labels, np.zeros(PAD, int))))
    assert abs(float(unmasked) - float(expected)) > 1e-3  # the mask is what makes it exact


@pytest.mark.parametrize("pos_weight", [None, 4.0, np.linspace(0.5, 10, 6).astype(np.float32)])
def test_binary_cross_entropy_matches_torch_pos_weight(pos_weight):
    logits = (RNG.normal(size=(REAL, 6)) * 4).astype(np.float32)
    logits[0, :2] = [60.0, -60.0]  # saturated logits stay finite
    targets = (RNG.random(size=(REAL, 6)) < 0.3).astype(np.float32)
    pw = None if pos_weight is None else torch.as_tensor(pos_weight)
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=pw)(torch.tensor(logits), torch.tensor(targets))
    ours = losses.binary_cross_entropy(
        jnp.asarray(_padded(logits)), jnp.asarray(_padded(targets)), jnp.asarray(MASK), pos_weight=pos_weight
    )
    _close(ours, expected)


def test_mse_matches_torch_with_example_and_pixel_masks():
    pred, target = RNG.normal(size=(2, REAL, 7, 6, 1)).astype(np.float32)
    expected = torch.nn.MSELoss()(torch.tensor(pred), torch.tensor(target))
    _close(losses.mse(jnp.asarray(_padded(pred)), jnp.asarray(_padded(target)), jnp.asarray(MASK)), expected)
    pixels = (RNG.random(size=(REAL, 7, 6)) < 0.5).astype(np.float32)
    squares = (torch.tensor(pred) - torch.tensor(target)) ** 2 * torch.tensor(pixels)[..., None]
    _close(losses.mse(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(pixels)), squares.sum() / pixels.sum())


def _torch_lp_rel(x, y):
    """The official LpLoss(p=2).rel per example (before its sum or mean over the batch)."""
    n = x.shape[0]
    return torch.norm(x.reshape(n, -1) - y.reshape(n, -1), 2, 1) / torch.norm(y.reshape(n, -1), 2, 1)


def test_relative_l2_and_nrmse_match_official_formulas_with_zero_padded_targets():
    pred, target = RNG.normal(size=(2, REAL, 9, 8, 1)).astype(np.float32)
    ratios = _torch_lp_rel(torch.tensor(pred), torch.tensor(target))
    zeros = np.zeros((PAD, 9, 8, 1), np.float32)
    args = jnp.asarray(_padded(pred, zeros)), jnp.asarray(_padded(target, zeros)), jnp.asarray(MASK)
    _close(losses.relative_l2(*args), ratios.sum())  # official Darcy loss: LpLoss(size_average=False)
    _close(losses.relative_l2(*args, reduction="mean"), ratios.mean())
    _close(losses.nrmse(*args), ratios.mean())  # RMS / RMS = norm / norm
    rms = torch.sqrt(((torch.tensor(pred) - torch.tensor(target)) ** 2).reshape(REAL, -1).mean(1)).mean()
    _close(losses.rmse(*args), rms)
    for name in ("relative_l2", "nrmse", "rmse", "mse"):
        grads = jax.grad(lambda p, n=name: losses.get_loss(n)(p, args[1], args[2]))(args[0])
        assert np.isfinite(np.asarray(grads)).all(), name
        assert not np.asarray(grads[REAL:]).any(), name  # padding gets no gradient


def test_all_padding_batch_is_zero_not_nan():
    x = jnp.zeros((3, 4))
    assert float(losses.mse(x, x + 1, jnp.zeros(3))) == 0.0
    assert float(losses.cross_entropy(x, jnp.zeros(3, jnp.int32), jnp.zeros(3))) == 0.0


def test_shape_and_name_errors_say_what_to_do():
    with pytest.raises(ValueError, match=r"targets\[..., None\]"):
        losses.mse(jnp.zeros((2, 4, 4, 1)), jnp.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="mask must be \\[batch\\]"):
        losses.relative_l2(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="known losses: .*'cross_entropy'"):
        losses.get_loss("l2")
