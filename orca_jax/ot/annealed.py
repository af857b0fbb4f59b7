"""The annealed solver: geomloss's fixed ε-scaling schedule step for step, its gradient from the one last
extrapolating soft-C-transform (as geomloss differentiates it)."""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from orca_jax.ot.sinkhorn_settings import SinkhornSettings
from orca_jax.ot.soft_transforms import (
    weighted_cost_range,
    extrapolated_value,
    rows_value,
    small_costs,
    soft_c_transforms,
)


def annealing_schedule(diameter: jax.Array, settings: SinkhornSettings) -> tuple[jax.Array, Callable]:
    """geomloss's ε list as (length, ε(i)): [d², d²·s², d²·s⁴, … while > ε, ε], with p = 2 and blur = √ε.

    Mirrors ``[d**p] + list(exp(arange(p log d, p log blur, p log s))) + [blur**p]``; length and values have the
    diameter's shape, so that every problem of a batch follows its own schedule. ε(i) = ε for every i ≥ length.
    """
    log_d2 = 2.0 * jnp.log(jnp.maximum(diameter, jnp.finfo(diameter.dtype).tiny))
    log_eps = math.log(settings.epsilon)
    step = 2.0 * math.log(settings.scaling)
    n_geometric = jnp.maximum(jnp.ceil((log_eps - log_d2) / step), 0).astype(jnp.int32)

    def eps_at(i):
        geometric = jnp.exp(log_d2 + (i - 1).astype(log_d2.dtype) * step)
        return jnp.where(i == 0, jnp.exp(log_d2), jnp.where(i <= n_geometric, geometric, settings.epsilon))

    return n_geometric + 2, eps_at


def anneal(update: Callable, sizes: tuple[int, ...], dtype, diameter: jax.Array, cost_range: jax.Array,
            settings: SinkhornSettings):
    """geomloss's loop for a batch of problems (the diameter's shape): start from the ε = d² transform of zero
    potentials, average symmetric updates along the schedule, then extrapolate once at ε without averaging.
    Returns the loop's potentials and the extrapolated ones; a problem whose schedule has ended keeps both."""
    length, eps_at = annealing_schedule(diameter, settings)

    def body(i, carry):
        # i = -1 is geomloss's start, the ε = d² transform of zero potentials (in the loop, so that the update
        # is compiled once).
        pots, extrapolated = carry
        eps = eps_at(jnp.maximum(i, 0))
        fresh = update(eps, small_costs(eps, cost_range), *pots)
        start, live, last = i < 0, (i < length)[..., None], (i == length)[..., None]
        pots = tuple(jnp.where(start, q, jnp.where(live, 0.5 * (p + q), p)) for p, q in zip(pots, fresh))
        return pots, tuple(jnp.where(last, q, x) for q, x in zip(fresh, extrapolated))

    zeros = tuple(jnp.zeros(diameter.shape + (n,), dtype) for n in sizes)
    return jax.lax.fori_loop(-1, jnp.max(length) + 1, body, (zeros, zeros))


def annealed_terms(cross, selfs, diameter, settings):
    """All terms of a debiased divergence in one loop, as geomloss runs them: one exponential per cost entry and
    step, one overflow check per step."""
    sg = jax.lax.stop_gradient
    fixed_selfs = [(sg(c), w) for c, w in selfs]
    shapes = [jnp.shape(diameter)] + [jnp.broadcast_shapes(c.shape[:-2], w.shape[:-1]) for c, w in selfs]
    ranges = [weighted_cost_range(c, w, w) for c, w in fixed_selfs]
    sizes = [c.shape[-1] for c, _ in selfs]
    if cross is not None:
        c_x, c_y, a, b = cross
        fixed = sg(c_x)
        shapes.append(jnp.broadcast_shapes(c_x.shape[:-2], a.shape[:-1], b.shape[:-1]))
        ranges.append(weighted_cost_range(fixed, a, b))
        sizes = list(c_x.shape[-2:]) + sizes
    diameter = jnp.broadcast_to(sg(diameter), jnp.broadcast_shapes(*shapes))
    smallest_range = functools.reduce(jnp.minimum, ranges)

    def update(eps, small, *pots):
        cross_problem, self_pots = None, pots
        if cross is not None:
            cross_problem, self_pots = (fixed, a, b, *pots[:2]), pots[2:]
        return soft_c_transforms(cross_problem, [(c, w, h, h) for (c, w), h in zip(fixed_selfs, self_pots)], eps, small)

    dtype = (cross[0] if cross is not None else selfs[0][0]).dtype
    pots, extrapolated = anneal(update, sizes, dtype, diameter, smallest_range, settings)
    eps = jnp.asarray(settings.epsilon, pots[0].dtype)
    values = []
    if cross is not None:
        values.append(extrapolated_value(c_x, c_y, a, b, *pots[:2], *extrapolated[:2], eps,
                                          jnp.asarray(1.0, eps.dtype)))
        pots, extrapolated = pots[2:], extrapolated[2:]
    values += [rows_value(c, w, w, h, h, h_new, eps) for (c, w), h, h_new in zip(selfs, pots, extrapolated)]
    return values


def blocked_half_self(cost_fn, x, a, diameter, settings, block):
    """The annealed self term with its cost built a block of rows at a time, in every step (memory O(block · n))."""
    sg = jax.lax.stop_gradient
    n = a.shape[0]
    pad = -n % block

    def blocks(v):  # padded with copies of the first row, which are dropped or weighted by zero
        return jnp.concatenate([v, jnp.repeat(v[:1], pad, axis=0)]).reshape(-1, block, *v.shape[1:])

    fixed = jax.tree.map(sg, x)
    x_blocks = jax.tree.map(blocks, fixed)

    def over_rows(fn, *per_block):
        return jax.lax.map(lambda args: fn(*args), (x_blocks, *per_block))

    cost_range = jnp.max(over_rows(lambda xb: jnp.max(cost_fn(xb, fixed)))) - jnp.min(
        over_rows(lambda xb: jnp.min(cost_fn(xb, fixed))))

    def update(eps, small, f):
        def block_update(xb, fb):
            return soft_c_transforms(None, [(cost_fn(xb, fixed), a, fb, f)], eps, small)[0]

        new = over_rows(block_update, blocks(f))
        return (new.reshape(-1)[:n],)

    (f,), (f_new,) = anneal(update, (n,), a.dtype, sg(diameter), cost_range, settings)
    eps = jnp.asarray(settings.epsilon, a.dtype)

    @jax.checkpoint  # rebuild each block's cost in the backward pass instead of storing all of them
    def value(xb, ab, fb, fb_new):
        return rows_value(cost_fn(xb, fixed), ab, a, fb, f, fb_new, eps)

    per_block = (jax.tree.map(blocks, x), jnp.pad(a, (0, pad)).reshape(-1, block), blocks(f), blocks(f_new))
    return jnp.sum(jax.lax.map(lambda args: value(*args), per_block))
