"""The optimizers equal PyTorch's (the official code's) updates step by step, including coupled weight decay."""

import numpy as np
import pytest
import torch

import jax.numpy as jnp
import optax

from orca_jax.train.optimizers import align_learning_rate, make_optimizer, step_decay_schedule


@pytest.mark.parametrize(
    "name, torch_cls, kwargs",
    [
        ("sgd", torch.optim.SGD, dict(momentum=0.9, weight_decay=0.1)),
        ("sgd", torch.optim.SGD, dict(momentum=0.999, weight_decay=0.0)),
        ("adam", torch.optim.Adam, dict(betas=(0.9, 0.98), weight_decay=1e-3)),
        ("adamw", torch.optim.AdamW, dict(betas=(0.9, 0.98), weight_decay=0.05)),
    ],
)
def test_matches_torch_optimizer(name, torch_cls, kwargs):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(4, 3)).astype(np.float64)
    grads = [rng.normal(size=(4, 3)) for _ in range(6)]
    lr = 0.05
    tp = torch.nn.Parameter(torch.tensor(p0))
    topt = torch_cls([tp], lr=lr, **kwargs)
    ours = make_optimizer(name, lr, weight_decay=kwargs["weight_decay"], momentum=kwargs.get("momentum", 0.9),
                          betas=kwargs.get("betas", (0.9, 0.98)))
    params = {"w": jnp.asarray(p0, jnp.float32)}
    state = ours.init(params)
    for g in grads:
        tp.grad = torch.tensor(g)
        topt.step()
        updates, state = ours.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(np.asarray(params["w"]), tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_coupled_and_decoupled_decay_differ():
    """Adam's L2 goes through the adaptive scaling, AdamW's does not: with a zero gradient only AdamW shrinks
    the weights by exactly lr * wd * p on the first step."""
    params = {"w": jnp.full((2,), 2.0)}
    zero = {"w": jnp.zeros((2,))}
    for name, expected in (("adamw", 2.0 - 0.1 * 0.5 * 2.0), ("adam", 2.0 - 0.1)):
        opt = make_optimizer(name, 0.1, weight_decay=0.5)
        updates, _ = opt.update(zero, opt.init(params), params)
        np.testing.assert_allclose(optax.apply_updates(params, updates)["w"], expected, rtol=1e-4)


def test_step_decay_schedule_and_align_rate():
    schedule = step_decay_schedule(1.0, (20, 40, 60), 0.2)
    got = [float(schedule(jnp.asarray(e))) for e in (0, 20, 21, 40, 41, 60, 61)]
    np.testing.assert_allclose(got, [1, 1, 0.2, 0.2, 0.04, 0.04, 0.008], rtol=1e-6)
    assert align_learning_rate(1e-4) == pytest.approx(1e-3)
    assert align_learning_rate(1e-2) == 1e-2  # the official rule multiplies only rates <= 1e-3


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="'lamb' is not one of"):
        make_optimizer("lamb", 0.1)
