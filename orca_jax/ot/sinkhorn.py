"""Debiased Sinkhorn divergences on OTT-JAX, with one switch between two solvers.

ORCA's embedders were trained on what geomloss returns, not on converged optimal transport: geomloss runs a fixed
ε-scaling schedule (from the data's diameter² down to ε, the blur shrinking by ``scaling`` per step), averages
symmetric updates, never checks convergence, and differentiates only one last, extrapolating soft-C-transform.
At unit-scale features and ε = 0.1 that value is within ~0.3 % of the converged one but its gradient is not
(cosine ~0.76), so both are offered:

* ``solver="annealed"`` (default) reproduces that schedule step for step, with OTT's log-sum-exp kernel
  (:meth:`ott.geometry.geometry.Geometry.apply_lse_kernel`) doing each soft-C-transform. The schedule length
  depends on the data's diameter, so the loop is a ``while_loop`` whose inputs carry no gradient: the gradient comes
  from the final extrapolation step exactly as in geomloss (cost rows differentiable in their own points only).
* ``solver="converged"`` runs OTT's :class:`~ott.solvers.linear.sinkhorn.Sinkhorn` until the L1 marginal error is
  below ``threshold``, with ε annealed geometrically from diameter² during the first iterations for speed, and
  differentiates implicitly (envelope theorem) or by unrolling the loop.

Costs are given as a function of two point sets (pytrees whose leaves share a leading axis) so that the annealed
solver can rebuild them with geomloss's stop-gradient pattern and the memory-bounded self term can build them a
block of rows at a time.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from ott.geometry import epsilon_scheduler, geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation, sinkhorn

Points = Any  # a pytree of arrays sharing the leading (point) axis
CostFn = Callable[[Points, Points], jax.Array]

SOLVERS = ("annealed", "converged")
DIFFERENTIATIONS = ("implicit", "unrolled")

# geomloss writes the log of a zero weight as this finite number, which keeps padded points out of every
# log-sum-exp without producing -inf (whose gradients are NaN).
_LOG_ZERO = -100_000.0


@dataclasses.dataclass(frozen=True)
class SinkhornSettings:
    """Everything that decides how one entropic OT problem is solved; hashable so it can be a static argument.

    ``epsilon`` is absolute (OTT's default is relative to the cost; ORCA's official value is 0.1 on both the label
    and the dataset problem). ``scaling`` is geomloss's blur ratio per annealing step. ``threshold``,
    ``max_iterations``, ``annealing_iterations`` and ``differentiation`` only matter for ``solver="converged"``,
    which returns whatever it has after ``max_iterations`` without a flag: at unit-scale features and ε = 0.1 it
    needs thousands of iterations, at a tenth of that scale tens.
    """

    solver: str = "annealed"
    epsilon: float = 0.1
    scaling: float = 0.5
    threshold: float = 1e-4
    max_iterations: int = 5000
    annealing_iterations: int = 20
    differentiation: str = "implicit"

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(
                f"solver={self.solver!r} is unknown: use 'annealed' (geomloss's fixed ε-scaling schedule, as the "
                "official ORCA code) or 'converged' (Sinkhorn run until the marginal error is below threshold)."
            )
        if not (isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(
                f"epsilon={self.epsilon!r} must be a finite number > 0 (absolute entropic regularisation; "
                "ORCA uses 0.1)."
            )
        if not 0 < self.scaling < 1:
            raise ValueError(f"scaling={self.scaling!r} must lie in (0, 1); geomloss's default is 0.5.")
        if not self.threshold > 0:
            raise ValueError(f"threshold={self.threshold!r} must be > 0 (L1 marginal error, e.g. 1e-4).")
        if int(self.max_iterations) != self.max_iterations or self.max_iterations < 1:
            raise ValueError(f"max_iterations={self.max_iterations!r} must be a positive integer.")
        if int(self.annealing_iterations) != self.annealing_iterations or self.annealing_iterations < 1:
            raise ValueError(f"annealing_iterations={self.annealing_iterations!r} must be a positive integer.")
        if self.differentiation not in DIFFERENTIATIONS:
            raise ValueError(
                f"differentiation={self.differentiation!r} is unknown: use 'implicit' (envelope theorem at "
                "convergence) or 'unrolled' (backpropagate through the Sinkhorn iterations)."
            )


def resolve_settings(epsilon: float, solver: str, settings: Optional[SinkhornSettings]) -> SinkhornSettings:
    """The common shorthand (``epsilon``, ``solver``) or a full :class:`SinkhornSettings`, never both."""
    if settings is None:
        return SinkhornSettings(solver=solver, epsilon=epsilon)
    if (epsilon, solver) != (0.1, "annealed"):
        raise ValueError(f"epsilon={epsilon!r}/solver={solver!r} given together with settings={settings!r}: put "
                         "them into the settings (dataclasses.replace(settings, epsilon=..., solver=...)).")
    return settings


def log_weights(w: jax.Array) -> jax.Array:
    """Log-weights with zero weights (padding) mapped to a finite, negligible value, as geomloss does."""
    return jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), _LOG_ZERO)


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


def _annealing_schedule(diameter: jax.Array, settings: SinkhornSettings) -> tuple[jax.Array, Callable]:
    """geomloss's ε list as (length, ε(i)): [d², d²·s², d²·s⁴, … while > ε, ε], with p = 2 and blur = √ε.

    Mirrors ``[d**p] + list(exp(arange(p log d, p log blur, p log s))) + [blur**p]``; length and values are traced
    so that per-pair diameters can be batched.
    """
    log_d2 = 2.0 * jnp.log(jnp.maximum(diameter, jnp.finfo(diameter.dtype).tiny))
    log_eps = math.log(settings.epsilon)
    step = 2.0 * math.log(settings.scaling)
    n_geometric = jnp.maximum(jnp.ceil((log_eps - log_d2) / step), 0).astype(jnp.int32)

    def eps_at(i):
        geometric = jnp.exp(log_d2 + (i - 1).astype(log_d2.dtype) * step)
        return jnp.where(i == 0, jnp.exp(log_d2), jnp.where(i <= n_geometric, geometric, settings.epsilon))

    return n_geometric + 2, eps_at


class _Rows:
    """Soft-C-transforms along the rows of a cost given as points, optionally built a block of rows at a time."""

    def __init__(self, cost_fn: CostFn, x: Points, y: Points, block: Optional[int] = None):
        self.cost_fn, self.x, self.y, self.block = cost_fn, x, y, block
        self.n = jax.tree.leaves(x)[0].shape[0]
        if block is None or block >= self.n:
            self.block = None
            self.matrix = cost_fn(x, y)

    def softmin(self, eps: jax.Array, h: jax.Array) -> jax.Array:
        """f_i = −ε log Σ_j exp(h_j − C_ij / ε) (geomloss's ``softmin``) via OTT's log-sum-exp kernel."""
        if self.block is None:
            return _lse_softmin(self.matrix, eps, h)
        pad = -self.n % self.block
        x = jax.tree.map(lambda v: jnp.concatenate([v, jnp.repeat(v[:1], pad, axis=0)]), self.x)
        blocks = jax.tree.map(lambda v: v.reshape(-1, self.block, *v.shape[1:]), x)
        out = jax.lax.map(lambda xb: _lse_softmin(self.cost_fn(xb, self.y), eps, h), blocks)
        return out.reshape(-1)[: self.n]


def _lse_softmin(cost: jax.Array, eps: jax.Array, h: jax.Array) -> jax.Array:
    geom = geometry.Geometry(cost_matrix=cost, epsilon=eps)
    lse, _ = geom.apply_lse_kernel(jnp.zeros(cost.shape[0], cost.dtype), eps * h, eps, axis=1)
    return -lse


def _anneal(update: Callable, n_potentials: tuple[int, ...], dtype, diameter, settings):
    """geomloss's loop: start from the ε = d² transform of zero potentials, then averaged symmetric updates."""
    length, eps_at = _annealing_schedule(diameter, settings)
    zeros = tuple(jnp.zeros(n, dtype) for n in n_potentials)
    start = update(eps_at(jnp.int32(0)), zeros)

    def body(carry):
        i, pots = carry
        fresh = update(eps_at(i), pots)
        return i + 1, tuple(0.5 * (p + q) for p, q in zip(pots, fresh))

    _, pots = jax.lax.while_loop(lambda c: c[0] < length, body, (jnp.int32(0), start))
    return pots


def _annealed_cross(cost_fn, x, a, y, b, diameter, settings):
    log_a, log_b = log_weights(a), log_weights(b)
    sg = jax.lax.stop_gradient
    c_xy = sg(cost_fn(x, y))
    c_yx = c_xy.T

    def update(eps, pots):
        f, g = pots
        return _lse_softmin(c_xy, eps, log_b + g / eps), _lse_softmin(c_yx, eps, log_a + f / eps)

    f, g = _anneal(update, (c_xy.shape[0], c_xy.shape[1]), c_xy.dtype, sg(diameter), settings)
    eps = settings.epsilon
    # The extrapolation step geomloss differentiates: a parallel update from the loop's potentials, each side's
    # cost differentiable in its own points only.
    f_new = _lse_softmin(cost_fn(x, jax.tree.map(sg, y)), eps, sg(log_b + g / eps))
    g_new = _lse_softmin(cost_fn(y, jax.tree.map(sg, x)), eps, sg(log_a + f / eps))
    return jnp.sum(a * f_new) + jnp.sum(b * g_new)


def _annealed_self(cost_fn, x, a, diameter, settings, block):
    log_a = log_weights(a)
    sg = jax.lax.stop_gradient
    rows = _Rows(cost_fn, jax.tree.map(sg, x), jax.tree.map(sg, x), block)
    f = _anneal(lambda eps, pots: (rows.softmin(eps, log_a + pots[0] / eps),), (a.shape[0],), a.dtype,
                sg(diameter), settings)[0]
    final = _Rows(cost_fn, x, jax.tree.map(sg, x), block)
    f = final.softmin(settings.epsilon, sg(log_a + f / settings.epsilon))
    return jnp.sum(a * f)


@jax.tree_util.register_pytree_node_class
class _DecayingEpsilon(epsilon_scheduler.Epsilon):
    """OTT's geometric ε decay with a traced start (diameter²/ε), reaching ε after a fixed number of iterations."""

    def __init__(self, target, init, decay):  # noqa: D107 -- the parent asserts on values that are traced here
        self.target, self.init, self.decay = target, init, decay

    def tree_flatten(self):  # noqa: D102
        return (self.target, self.init, self.decay), None

    @classmethod
    def tree_unflatten(cls, aux_data, children):  # noqa: D102
        return cls(*children)


def _converged_cost(cost_matrix, a, b, diameter, settings):
    init = jnp.maximum(jax.lax.stop_gradient(diameter) ** 2 / settings.epsilon, 1.0)
    decay = init ** (-1.0 / settings.annealing_iterations)
    eps = _DecayingEpsilon(jnp.asarray(settings.epsilon, cost_matrix.dtype), init, decay)
    problem = linear_problem.LinearProblem(geometry.Geometry(cost_matrix=cost_matrix, epsilon=eps), a=a, b=b)
    inner = 10
    # OTT computes the error at the last iteration of each block of `inner` iterations, and only from
    # `min_iterations` on; a block whose error was skipped reads as diverged and stops the loop. So the first
    # check must fall on a block end after annealing has reached ε.
    min_iterations = (settings.annealing_iterations // inner + 1) * inner - 1
    # Implicit: envelope theorem on the cost (OTT's default). Unrolled: backpropagate through the iterations
    # themselves, potentials included (use_danskin=False), which the tests compare against.
    implicit = settings.differentiation == "implicit"
    solver = sinkhorn.Sinkhorn(
        threshold=settings.threshold, max_iterations=max(settings.max_iterations, min_iterations),
        min_iterations=min_iterations, inner_iterations=inner,
        implicit_diff=implicit_differentiation.ImplicitDiff() if implicit else None, use_danskin=implicit,
    )
    return solver(problem).reg_ot_cost


def ot_cost(cost_fn: CostFn, x: Points, a: jax.Array, y: Points, b: jax.Array, *, diameter: jax.Array,
            settings: SinkhornSettings) -> jax.Array:
    """Entropic OT_ε(α, β) = ⟨α, f⟩ + ⟨β, g⟩ at the solver's potentials (the biased cross term)."""
    if settings.solver == "annealed":
        return _annealed_cross(cost_fn, x, a, y, b, diameter, settings)
    return _converged_cost(cost_fn(x, y), a, b, diameter, settings)


def half_self_cost(cost_fn: CostFn, x: Points, a: jax.Array, *, diameter: jax.Array, settings: SinkhornSettings,
                   block: Optional[int] = None) -> jax.Array:
    """½ OT_ε(α, α), the term a debiased divergence subtracts per side.

    geomloss solves the symmetric problem with one potential, which is what the annealed solver does; ``block``
    builds its cost a block of rows at a time (memory O(block · n) instead of O(n²); annealed only).
    """
    if settings.solver == "annealed":
        return _annealed_self(cost_fn, x, a, diameter, settings, block)
    return 0.5 * _converged_cost(cost_fn(x, x), a, a, diameter, settings)


def sinkhorn_divergence(cost_fn: CostFn, x: Points, a: jax.Array, y: Points, b: jax.Array, *,
                        diameter: jax.Array, settings: SinkhornSettings) -> jax.Array:
    """S_ε(α, β) = OT_ε(α, β) − ½ OT_ε(α, α) − ½ OT_ε(β, β), every term under the same ε schedule."""
    return (
        ot_cost(cost_fn, x, a, y, b, diameter=diameter, settings=settings)
        - half_self_cost(cost_fn, x, a, diameter=diameter, settings=settings)
        - half_self_cost(cost_fn, y, b, diameter=diameter, settings=settings)
    )
