"""Debiased Sinkhorn divergences, with one switch between two solvers.

ORCA's embedders were trained on what geomloss returns, not on converged optimal transport: geomloss runs a fixed
ε-scaling schedule (from the data's diameter² down to ε, the blur shrinking by ``scaling`` per step), averages
symmetric updates, never checks convergence, and differentiates only one last, extrapolating soft-C-transform.
Its value is close to the converged one but its gradient is not (docs/results.md, "Design measurements"), so both
are offered:

* ``solver="annealed"`` (default) reproduces that schedule step for step. The schedule length depends on the
  data's diameter, so the loop is a ``while_loop`` whose inputs carry no gradient: the gradient comes from the final
  extrapolation step exactly as in geomloss (each side's cost differentiable in its own points only).
* ``solver="converged"`` runs OTT-JAX's :class:`~ott.solvers.linear.sinkhorn.Sinkhorn` until the L1 marginal error
  is below ``threshold``, with ε annealed geometrically from diameter² during the first iterations for speed, and
  evaluates the dual objective in a stationary form (below) whose gradient is the envelope theorem's ("implicit"),
  or backpropagates through the iterations too ("unrolled").

Problems come as cost matrices (:func:`divergence_terms`) with any leading batch axes (one problem per class
pair, say), each with its own schedule, all terms of a divergence in one loop as in geomloss;
:func:`sinkhorn_divergence`/:func:`half_self_cost` build them from a cost function of two point sets (pytrees
whose leaves share a leading axis), so that one cost evaluation serves geomloss's stop-gradient pattern
(:func:`detached_pair`) and the memory-bounded self term can build its cost a block of rows at a time. The final
step's gradient is written out (:func:`extrapolated_value`): it needs only the cost and the potentials.

Modules: `sinkhorn_settings` (the settings), `soft_transforms` (the kernels both solvers share, and their
numerics), `annealed` and `converged` (the two solvers); this one assembles divergences from them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from orca_jax.ot.annealed import annealed_terms, blocked_half_self
from orca_jax.ot.converged import converged_cross
from orca_jax.ot.sinkhorn_settings import SinkhornSettings

Points = Any  # a pytree of arrays sharing the leading (point) axis
CostFn = Callable[[Points, Points], jax.Array]


class CrossProblem(NamedTuple):
    """OT_ε(α, β) as costs: ``c_x`` and ``c_y`` hold the same values [..., n, m], ``c_x`` differentiable in the first
    points only and ``c_y`` in the second only (:func:`detached_pair`); ``a`` [..., n] and ``b`` [..., m] the
    weights."""

    c_x: jax.Array
    c_y: jax.Array
    a: jax.Array
    b: jax.Array


class SelfProblem(NamedTuple):
    """½ OT_ε(w, w) from ``c`` = C(x, x) [..., n, n], differentiable in its rows' points only."""

    c: jax.Array
    w: jax.Array


def bounding_box_diameter(*clouds: tuple[jax.Array, jax.Array]) -> jax.Array:
    """geomloss's diameter estimate: the norm of the extent of the joint bounding box of the weighted clouds.

    Each cloud is ``(features, weights)``; points of weight zero (padding) are ignored.
    """
    lows, highs = [], []
    for x, w in clouds:
        real = (w > 0)[:, None]
        lows.append(jnp.min(jnp.where(real, x, jnp.inf), axis=0))
        highs.append(jnp.max(jnp.where(real, x, -jnp.inf), axis=0))
    extent = jnp.max(jnp.stack(highs), axis=0) - jnp.min(jnp.stack(lows), axis=0)
    return jnp.linalg.norm(extent)


def detached_pair(cost_fn: CostFn, x: Points, y: Points) -> tuple[jax.Array, jax.Array]:
    """``cost_fn(x, y)`` twice from one evaluation: the first differentiable in ``x`` only, the second in ``y``
    only — geomloss's ``C(x, y.detach())`` and ``C(x.detach(), y)`` without building the matrix twice. Values
    ``cost_fn`` closes over (a label table) get no gradient."""
    fn, consts = jax.closure_convert(cost_fn, x, y)
    return _detached_pair(fn, consts, x, y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _detached_pair(fn, consts, x, y):
    c = fn(x, y, *consts)
    return c, c


def _detached_pair_fwd(fn, consts, x, y):
    c, pullback = jax.vjp(lambda x, y: fn(x, y, *consts), x, y)
    return (c, c), (pullback, consts)


def _detached_pair_bwd(fn, residuals, cotangents):
    pullback, consts = residuals
    ct_x, ct_y = cotangents
    return jax.tree.map(jnp.zeros_like, consts), pullback(ct_x)[0], pullback(ct_y)[1]


_detached_pair.defvjp(_detached_pair_fwd, _detached_pair_bwd)


def divergence_terms(cross: Optional[CrossProblem], selfs: Sequence[SelfProblem], *, diameter: jax.Array,
                     settings: SinkhornSettings) -> list[jax.Array]:
    """The terms of a debiased Sinkhorn divergence, from cost matrices, every term under one ε schedule.

    Leading axes are a batch of problems (costs, weights and ``diameter`` broadcast against each other: one cost may
    serve a batch of schedules). Returns [cross term if any, *self terms]. The converged solver uses both sides'
    gradients.
    """
    if settings.solver == "annealed":
        return annealed_terms(cross, selfs, diameter, settings)
    sg = jax.lax.stop_gradient
    values = []
    if cross is not None:
        values.append(converged_cross(cross.c_x + (cross.c_y - sg(cross.c_y)), cross.a, cross.b, diameter, settings))
    for c, w in selfs:
        c_t = jnp.swapaxes(c, -1, -2)  # C(x, x) is symmetric: its transpose carries the columns' gradient
        values.append(0.5 * converged_cross(c + (c_t - sg(c_t)), w, w, diameter, settings))
    return values


def half_self_cost(cost_fn: CostFn, x: Points, a: jax.Array, *, diameter: jax.Array, settings: SinkhornSettings,
                   block: Optional[int] = None) -> jax.Array:
    """½ OT_ε(α, α), the term a debiased divergence subtracts per side.

    geomloss solves the symmetric problem with one potential, which is what the annealed solver does; ``block``
    builds its cost a block of rows at a time (memory O(block · n) instead of O(n²); annealed only).
    """
    n = jax.tree.leaves(x)[0].shape[0]
    if block is not None and block < n and settings.solver == "annealed":
        return blocked_half_self(cost_fn, x, a, diameter, settings, block)
    c, _ = detached_pair(cost_fn, x, x)
    return divergence_terms(None, [SelfProblem(c, a)], diameter=diameter, settings=settings)[0]


def sinkhorn_divergence(cost_fn: CostFn, x: Points, a: jax.Array, y: Points, b: jax.Array, *,
                        diameter: jax.Array, settings: SinkhornSettings) -> jax.Array:
    """S_ε(α, β) = OT_ε(α, β) − ½ OT_ε(α, α) − ½ OT_ε(β, β), every term under the same ε schedule."""
    c_x, c_y = detached_pair(cost_fn, x, y)
    c_xx, _ = detached_pair(cost_fn, x, x)
    c_yy, _ = detached_pair(cost_fn, y, y)
    cross, self_x, self_y = divergence_terms(CrossProblem(c_x, c_y, a, b), [SelfProblem(c_xx, a), SelfProblem(c_yy, b)],
                                             diameter=diameter, settings=settings)
    return cross - self_x - self_y
