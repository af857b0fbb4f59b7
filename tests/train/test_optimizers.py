"""The optimizers equal PyTorch's (the official code's) updates step by step, including coupled weight decay; the
refine schedule and gradient accumulation equal hand computations of the official loop."""

import numpy as np
import pytest
import torch

import jax.numpy as jnp
import optax

from orca_jax.train.optimizers import (
    accumulate_gradients,
    align_learning_rate,
    make_optimizer,
    step_decay_schedule,
    update_direction,
    warmup_decay_schedule,
)


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


def test_warmup_decay_schedule_values():
    schedule = warmup_decay_schedule(0.5, 4, 12)
    got = [float(schedule(jnp.asarray(step))) for step in (0, 1, 3, 4, 8, 11, 12, 20)]
    # warm-up step/4, then (12 - step)/8, held at 0 from step 12 on (the official factor would turn negative).
    np.testing.assert_allclose(got, 0.5 * np.array([0, 0.25, 0.75, 1, 0.5, 0.125, 0, 0]), atol=1e-7)
    assert float(warmup_decay_schedule(0.5, 0, 12)(0)) == 0.5  # no warm-up: the first micro-batch trains fully


def test_warmup_decay_schedule_first_and_last_rates_of_cifar100():
    """orca-reference (a) stage 4: the first micro-batch has rate 0; 60 of 200 decay epochs end at factor ~0.72."""
    n_train = 10
    schedule = warmup_decay_schedule(1.0, 5 * n_train, 200 * n_train)
    assert float(schedule(0)) == 0.0
    last = float(schedule(60 * n_train - 1))
    assert last == pytest.approx((2000 - 599) / (2000 - 50), rel=1e-6) and 0.71 < last < 0.72


def test_warmup_decay_schedule_rejects_decay_not_after_warmup():
    with pytest.raises(ValueError, match="decay_epochs larger than warmup_epochs"):
        warmup_decay_schedule(1.0, 10, 10)


def test_accumulation_sums_restarts_each_epoch_and_uses_the_completing_micro_batch_rate():
    """Hand computation of the official loop: plain SGD, accum 2, 5 micro-batches per epoch, micro-batch g's gradient
    is g + 1. Updates come at in-epoch positions 1 and 3 with -lr(g) * (sum of the cycle's two gradients), the fifth
    micro-batch of each epoch is discarded, and the rate is that of the global micro-batch count."""
    lr = warmup_decay_schedule(1.0, 4, 10)  # 0, .25, .5, .75, 1, 5/6, 4/6, 3/6, 2/6, 1/6
    accumulate = accumulate_gradients(update_direction("sgd", momentum=0.0), 2, 5)
    opt = optax.chain(accumulate, optax.scale_by_learning_rate(lr))
    params = {"w": jnp.zeros(())}
    state = opt.init(params)
    got = []
    for g in range(10):
        updates, state = opt.update({"w": jnp.asarray(g + 1.0)}, state, params)
        got.append(float(updates["w"]))
    expected = [0, -0.25 * (1 + 2), 0, -0.75 * (3 + 4), 0, 0, -4 / 6 * (6 + 7), 0, -2 / 6 * (8 + 9), 0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_accumulation_clips_every_partial_sum_like_torch():
    """clip_grad_norm_ on the accumulating .grad after each backward: s1 = clip(g1), s2 = clip(s1 + g2)."""
    g1, g2 = np.array([3.0, 4.0]), np.array([0.0, 1.0])
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    for g in (g1, g2):
        p.grad = torch.tensor(g) if p.grad is None else p.grad + torch.tensor(g)
        torch.nn.utils.clip_grad_norm_([p], 1.0)
    opt = accumulate_gradients(update_direction("sgd", momentum=0.0), 2, 2, clip=1.0)
    params = {"w": jnp.zeros(2)}
    state = opt.init(params)
    _, state = opt.update({"w": jnp.asarray(g1, jnp.float32)}, state, params)
    summed, _ = opt.update({"w": jnp.asarray(g2, jnp.float32)}, state, params)
    np.testing.assert_allclose(summed["w"], p.grad.numpy(), rtol=1e-6)
    assert not np.allclose(p.grad.numpy(), (g1 + g2) / np.linalg.norm(g1 + g2))  # clipping once would differ


def test_accumulation_needs_a_full_cycle_per_epoch():
    with pytest.raises(ValueError, match="1 <= accum <= micro-batches per epoch"):
        accumulate_gradients(update_direction("sgd"), 8, 5)
