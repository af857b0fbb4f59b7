"""Debiased Sinkhorn divergences, with one switch between two solvers.

ORCA's embedders were trained on what geomloss returns, not on converged optimal transport: geomloss runs a fixed
ε-scaling schedule (from the data's diameter² down to ε, the blur shrinking by ``scaling`` per step), averages
symmetric updates, never checks convergence, and differentiates only one last, extrapolating soft-C-transform.
At unit-scale features and ε = 0.1 that value is within ~0.3 % of the converged one but its gradient is not
(cosine ~0.76), so both are offered:

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
step's gradient is written out (:func:`_extrapolated_value`): it needs only the cost and the potentials.

Numerics, so that float32 gives float32-accurate answers at any feature scale (the cost's translation invariance is
the callers' part: they centre the features):

* One annealing step costs one exponential per cost entry: with the current potentials absorbed into the kernel,
  K = exp((f ⊕ g − C)/ε), both of geomloss's parallel soft-C-transforms are f − ε log(K b) and g − ε log(Kᵀ a).
  That is exact algebra, and safe while every row and column sum lies within e^±50 (no overflow, no underflow of
  the terms that matter). When one does not — geomloss's averaged updates leave some potentials lagging by more
  than 50 ε once ε is small, in unbalanced problems such as 5,000 source points against 160 target points, and at
  large feature scales — the step is redone in the max-shifted log-sum-exp form (twice the passes). That check
  reduces over the whole batch to one scalar, so ``lax.cond`` runs one branch (under ``vmap`` it runs both).
* When ε is much larger than the costs (tiny features), the terms of each sum are all ≈ 1 and log(Σ w e^m)
  rounds away their differences; the step then sums e^m − 1 (expm1) and takes log1p, which keeps them.
* Zero weights (padding) multiply, so padded points drop out exactly however large the costs are (geomloss's
  finite log-weight of −100,000 stops excluding them once |C|/ε exceeds it).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from ott.geometry import epsilon_scheduler, geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

Points = Any  # a pytree of arrays sharing the leading (point) axis
CostFn = Callable[[Points, Points], jax.Array]

SOLVERS = ("annealed", "converged")
DIFFERENTIATIONS = ("implicit", "unrolled")

# A one-exponential step is kept while every row/column sum of the kernel lies within e^±_BAND: float32 holds
# e^±87, and a sum ≥ e^-50 has a largest term far above the underflow threshold.
_BAND = 50.0
# ε above this many times the cost range: every log-sum-exp's terms differ by less than ~1/64, where the plain form
# keeps fewer than ~18 of float32's 24 bits of their differences; the shifted log1p form is used instead.
_SMALL_COST_RATIO = 128.0
HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class SinkhornSettings:
    """Everything that decides how one entropic OT problem is solved; hashable so it can be a static argument.

    ``epsilon`` is absolute (OTT's default is relative to the cost; ORCA's official value is 0.1 on both the label
    and the dataset problem). ``scaling`` is geomloss's blur ratio per annealing step. ``threshold``,
    ``max_iterations``, ``annealing_iterations`` and ``differentiation`` only matter for ``solver="converged"``,
    which returns whatever it has after ``max_iterations`` without a flag: at unit-scale features and ε = 0.1 it
    needs thousands of iterations, at a tenth of that scale tens. Its plan needs the potentials to a fraction of ε,
    and the dtype resolves them only to ~d²·eps_machine (d the data's diameter), so its float32 gradient drifts from
    the float64 one as d² grows (measured: 10⁻⁷ at d² ≈ 10 ε, 10⁻³ at 10⁶ ε, 5 % at 5·10⁸ ε); see
    :func:`check_resolvable`. The annealed solver's plan does not depend on such ties and stays accurate.
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


def check_resolvable(diameter, dtype, settings: SinkhornSettings, what: str) -> None:
    """Refuse the converged solver where ``dtype`` rounds the costs by more than 10 ε (d² · eps_machine > 10 ε):
    there the potentials cannot be resolved to ε, so no number of iterations reaches ``threshold`` and the plan
    is noise at the scale ε sets. ``diameter`` must be concrete (checked at the entry points; traced values pass)."""
    if settings.solver != "converged" or isinstance(diameter, jax.core.Tracer):
        return
    d2 = float(diameter) ** 2
    rounding = d2 * float(jnp.finfo(dtype).eps)
    if rounding > 10 * settings.epsilon:
        raise ValueError(
            f"solver='converged' cannot resolve {what}: its squared diameter is {d2:.3g} = {d2 / settings.epsilon:.2g}"
            f" ε, which {jnp.dtype(dtype).name} rounds by {rounding:.2g} > 10 ε = {10 * settings.epsilon:g}, so the "
            f"potentials (and the gradient) cannot be resolved to ε. Use solver='annealed' (ORCA's setting, accurate "
            f"at any feature scale), float64 features with jax.config.update('jax_enable_x64', True), or "
            f"epsilon >= {rounding / 10:.2g}.")


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


def _annealing_schedule(diameter: jax.Array, settings: SinkhornSettings) -> tuple[jax.Array, Callable]:
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


def _log_sum_exp(m: jax.Array, w: jax.Array, axis: int) -> jax.Array:
    """log Σ w·exp(m) along ``axis`` (-1: rows, weights along columns; -2: columns), shifted by the maximum over
    positive weights: safe for any exponents."""
    w = w[..., None, :] if axis == -1 else w[..., :, None]
    m = jnp.where(w > 0, m, -jnp.inf)
    top = jnp.max(m, axis=axis, keepdims=True)
    total = jnp.sum(jnp.where(w > 0, w * jnp.exp(m - top), 0.0), axis=axis)
    return jnp.squeeze(top, axis) + jnp.log(total)


def _in_band(sums: jax.Array) -> jax.Array:
    return jnp.all((sums > math.exp(-_BAND)) & (sums < math.exp(_BAND)))


def _exponent(c, h_rows, h_cols, eps):
    return (h_rows[..., :, None] + h_cols[..., None, :] - c) / eps[..., None, None]


def _log_sums(m, w_rows, w_cols, small: bool):
    """(log Σ_j w_cols_j e^m_ij per row, log Σ_i w_rows_i e^m_ij per column if ``w_rows`` is given) from one
    transcendental per entry, and whether every sum lies in the safe band. ``small``: the terms are all ≈ 1, so
    sum their excesses e^m − 1 (expm1) and take log1p, the weights counted as summing to exactly 1 (as the
    float64 problem's do; their float32 rounding would shift every potential by ~ε·10⁻⁷, the whole signal when the
    costs are ~10⁻⁶ ε)."""
    k = jnp.expm1(m) if small else jnp.exp(m)
    sums = [jnp.einsum("...ij,...j->...i", k, w_cols, precision=HIGHEST)]
    if w_rows is not None:
        sums.append(jnp.einsum("...i,...ij->...j", w_rows, k, precision=HIGHEST))
    if small:
        return [jnp.log1p(s) for s in sums], jnp.all(jnp.stack([_in_band(1.0 + s) for s in sums]))
    return [jnp.log(s) for s in sums], jnp.all(jnp.stack([_in_band(s) for s in sums]))


def _transforms(cross, selfs, eps, small: bool):
    """Every problem's parallel soft-C-transforms, geomloss's f̃ = softmin_b(C − g), g̃ = softmin_a(Cᵀ − f), each
    written as f − ε log Σ_j b_j exp((f_i + g_j − C_ij)/ε) so that one kernel serves both sides; and whether all
    were safe. ``cross`` = (c, a, b, f, g) or None; ``selfs`` = [(c, w, h_rows, h_cols)] (``c`` may be a block of
    rows of a symmetric problem, ``h_rows`` their potentials, ``h_cols`` all of them)."""
    e = eps[..., None]
    out, oks = [], []
    if cross is not None:
        c, a, b, f, g = cross
        (rows, cols), ok = _log_sums(_exponent(c, f, g, eps), a, b, small)
        out, oks = [f - e * rows, g - e * cols], [ok]
    for c, w, h_rows, h_cols in selfs:
        (rows,), ok = _log_sums(_exponent(c, h_rows, h_cols, eps), None, w, small)
        out.append(h_rows - e * rows)
        oks.append(ok)
    return tuple(out), jnp.all(jnp.stack(oks))


def _shifted_transforms(cross, selfs, eps):
    """:func:`_transforms` in the max-shifted log-sum-exp form, safe for any exponents (two passes per side)."""
    e = eps[..., None]
    out = []
    if cross is not None:
        c, a, b, f, g = cross
        m = _exponent(c, f, g, eps)
        out = [f - e * _log_sum_exp(m, b, -1), g - e * _log_sum_exp(m, a, -2)]
    return tuple(out + [h_rows - e * _log_sum_exp(_exponent(c, h_rows, h_cols, eps), w, -1)
                        for c, w, h_rows, h_cols in selfs])


def _update(cross, selfs, eps, small):
    """One annealing step's transforms: one exponential (or, when ε dwarfs the costs, expm1) per entry, redone
    max-shifted if any row or column sum left the safe band. The checks reduce to one scalar per step, so
    ``lax.cond`` runs one branch (under ``vmap`` it would run both)."""
    new, ok = jax.lax.cond(small, lambda: _transforms(cross, selfs, eps, True),
                           lambda: _transforms(cross, selfs, eps, False))
    return jax.lax.cond(ok, lambda: new, lambda: _shifted_transforms(cross, selfs, eps))


def _small_costs(eps, cost_range):
    return jnp.any(eps > _SMALL_COST_RATIO * cost_range)


def _cost_range(c: jax.Array, w_rows: jax.Array, w_cols: jax.Array) -> jax.Array:
    """max − min of the cost between points of positive weight (padding may lie anywhere)."""
    real = (w_rows[..., :, None] > 0) & (w_cols[..., None, :] > 0)
    return (jnp.max(jnp.where(real, c, -jnp.inf), axis=(-2, -1))
            - jnp.min(jnp.where(real, c, jnp.inf), axis=(-2, -1)))


def _anneal(update: Callable, sizes: tuple[int, ...], dtype, diameter: jax.Array, cost_range: jax.Array,
            settings: SinkhornSettings):
    """geomloss's loop for a batch of problems (the diameter's shape): start from the ε = d² transform of zero
    potentials, average symmetric updates along the schedule, then extrapolate once at ε without averaging.
    Returns the loop's potentials and the extrapolated ones; a problem whose schedule has ended keeps both."""
    length, eps_at = _annealing_schedule(diameter, settings)

    def body(i, carry):
        # i = -1 is geomloss's start, the ε = d² transform of zero potentials (in the loop, so that the update
        # is compiled once).
        pots, extrapolated = carry
        eps = eps_at(jnp.maximum(i, 0))
        fresh = update(eps, _small_costs(eps, cost_range), *pots)
        start, live, last = i < 0, (i < length)[..., None], (i == length)[..., None]
        pots = tuple(jnp.where(start, q, jnp.where(live, 0.5 * (p + q), p)) for p, q in zip(pots, fresh))
        return pots, tuple(jnp.where(last, q, x) for q, x in zip(fresh, extrapolated))

    zeros = tuple(jnp.zeros(diameter.shape + (n,), dtype) for n in sizes)
    return jax.lax.fori_loop(-1, jnp.max(length) + 1, body, (zeros, zeros))


def _batch_shape(diameter, c, *weights):
    """The batch of problems: the broadcast of the diameter's shape with the cost's and weights' leading axes."""
    return jnp.broadcast_shapes(jnp.shape(diameter), c.shape[:-2], *(w.shape[:-1] for w in weights))


def _dot(w, v):
    """Σ w·v over points, zero-weight entries excluded whatever their value."""
    return jnp.sum(jnp.where(w > 0, w * v, 0.0), axis=-1)


def _conditional_plan(c, h_rows, h_cols, w, eps, axis: int):
    """The plan of a soft-C-transform, normalised along ``axis``: w_j exp((h_i + h_j − C_ij)/ε) / Σ_j (...) for
    rows (axis -1, ``w`` the columns' weights), the mirror for columns. Normalising explicitly instead of reusing
    the transform's potential keeps each row a probability vector even where float32 cannot resolve the
    potentials to ε (features ×1000 and beyond)."""
    weights = w[..., None, :] if axis == -1 else w[..., :, None]
    m = jnp.where(weights > 0, _exponent(c, h_rows, h_cols, eps), -jnp.inf)
    e = jnp.where(weights > 0, weights * jnp.exp(m - jnp.max(m, axis=axis, keepdims=True)), 0.0)
    return e / jnp.sum(e, axis=axis, keepdims=True)


@jax.custom_vjp
def _extrapolated_value(c_x, c_y, a, b, f, g, f_new, g_new, eps, mix):
    """mix·(⟨a, f̃⟩ + ⟨b, g̃⟩) + (1 − mix)·(⟨a, f⟩ + ⟨b, g⟩), where (f̃, g̃) = ``(f_new, g_new)`` are the soft-C-
    transforms of (g, f) on the cost: geomloss's extrapolated value (mix = 1) or the stationary dual (mix = ½).

    Its derivative w.r.t. the cost is mix·(a ⊗ P_rows + P_cols ⊗ b) with the transforms' normalised plans, each on
    its own side's cost (``c_x``, ``c_y``: same values, see :func:`detached_pair`); w.r.t. f and g the direct one,
    the transforms' included. Only the cost is kept for the backward pass.
    """
    return mix * (_dot(a, f_new) + _dot(b, g_new)) + (1 - mix) * (_dot(a, f) + _dot(b, g))


def _extrapolated_value_fwd(c_x, c_y, a, b, f, g, f_new, g_new, eps, mix):
    residuals = (jax.lax.stop_gradient(c_x), a, b, f, g, f_new, g_new, eps, mix)
    return _extrapolated_value(c_x, c_y, a, b, f, g, f_new, g_new, eps, mix), residuals


def _extrapolated_value_bwd(residuals, ct):
    c, a, b, f, g, f_new, g_new, eps, mix = residuals
    scale = (ct * mix)[..., None, None]
    rows = scale * a[..., :, None] * _conditional_plan(c, f, g, b, eps, -1)
    cols = scale * b[..., None, :] * _conditional_plan(c, f, g, a, eps, -2)
    ct_f = ct[..., None] * (1 - mix) * a - jnp.sum(cols, axis=-1)
    ct_g = ct[..., None] * (1 - mix) * b - jnp.sum(rows, axis=-2)
    zeros = jax.tree.map(jnp.zeros_like, (a, b, f_new, g_new, eps, mix))
    return (_unbroadcast(rows, c.shape), _unbroadcast(cols, c.shape), *zeros[:2], _unbroadcast(ct_f, f.shape),
            _unbroadcast(ct_g, g.shape), *zeros[2:])


_extrapolated_value.defvjp(_extrapolated_value_fwd, _extrapolated_value_bwd)


@jax.custom_vjp
def _rows_value(c, a_rows, a_cols, f_rows, f_cols, f_new, eps):
    """⟨a_rows, f̃⟩ for the soft-C-transform f̃ = ``f_new`` of ``f_cols`` on (a block of rows of) a symmetric
    problem's cost C(x_rows, x), differentiable in the rows' points only: geomloss's self term."""
    return _dot(a_rows, f_new)


def _rows_value_fwd(c, a_rows, a_cols, f_rows, f_cols, f_new, eps):
    residuals = (jax.lax.stop_gradient(c), a_rows, a_cols, f_rows, f_cols, f_new, eps)
    return _rows_value(c, a_rows, a_cols, f_rows, f_cols, f_new, eps), residuals


def _rows_value_bwd(residuals, ct):
    c, a_rows, a_cols, f_rows, f_cols, f_new, eps = residuals
    plan = (ct[..., None] * a_rows)[..., :, None] * _conditional_plan(c, f_rows, f_cols, a_cols, eps, -1)
    return (_unbroadcast(plan, c.shape),
            *jax.tree.map(jnp.zeros_like, (a_rows, a_cols, f_rows, f_cols, f_new, eps)))


_rows_value.defvjp(_rows_value_fwd, _rows_value_bwd)


def _unbroadcast(x, shape):
    """Sum ``x`` over the leading axes that broadcasting added to an input of ``shape``."""
    return jnp.sum(x, axis=tuple(range(x.ndim - len(shape)))) if x.ndim > len(shape) else x


def _annealed_terms(cross, selfs, diameter, settings):
    """All terms of a debiased divergence in one loop, as geomloss runs them: one exponential per cost entry and
    step, one overflow check per step."""
    sg = jax.lax.stop_gradient
    fixed_selfs = [(sg(c), w) for c, w in selfs]
    shapes = [jnp.shape(diameter)] + [jnp.broadcast_shapes(c.shape[:-2], w.shape[:-1]) for c, w in selfs]
    ranges = [_cost_range(c, w, w) for c, w in fixed_selfs]
    sizes = [c.shape[-1] for c, _ in selfs]
    if cross is not None:
        c_x, c_y, a, b = cross
        fixed = sg(c_x)
        shapes.append(jnp.broadcast_shapes(c_x.shape[:-2], a.shape[:-1], b.shape[:-1]))
        ranges.append(_cost_range(fixed, a, b))
        sizes = list(c_x.shape[-2:]) + sizes
    diameter = jnp.broadcast_to(sg(diameter), jnp.broadcast_shapes(*shapes))
    smallest_range = functools.reduce(jnp.minimum, ranges)

    def update(eps, small, *pots):
        cross_problem, self_pots = None, pots
        if cross is not None:
            cross_problem, self_pots = (fixed, a, b, *pots[:2]), pots[2:]
        return _update(cross_problem, [(c, w, h, h) for (c, w), h in zip(fixed_selfs, self_pots)], eps, small)

    dtype = (cross[0] if cross is not None else selfs[0][0]).dtype
    pots, extrapolated = _anneal(update, sizes, dtype, diameter, smallest_range, settings)
    eps = jnp.asarray(settings.epsilon, pots[0].dtype)
    values = []
    if cross is not None:
        values.append(_extrapolated_value(c_x, c_y, a, b, *pots[:2], *extrapolated[:2], eps,
                                          jnp.asarray(1.0, eps.dtype)))
        pots, extrapolated = pots[2:], extrapolated[2:]
    values += [_rows_value(c, w, w, h, h, h_new, eps) for (c, w), h, h_new in zip(selfs, pots, extrapolated)]
    return values


def _blocked_half_self(cost_fn, x, a, diameter, settings, block):
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
        new = over_rows(lambda xb, fb: _update(None, [(cost_fn(xb, fixed), a, fb, f)], eps, small)[0], blocks(f))
        return (new.reshape(-1)[:n],)

    (f,), (f_new,) = _anneal(update, (n,), a.dtype, sg(diameter), cost_range, settings)
    eps = jnp.asarray(settings.epsilon, a.dtype)

    @jax.checkpoint  # rebuild each block's cost in the backward pass instead of storing all of them
    def value(xb, ab, fb, fb_new):
        return _rows_value(cost_fn(xb, fixed), ab, a, fb, f, fb_new, eps)

    per_block = (jax.tree.map(blocks, x), jnp.pad(a, (0, pad)).reshape(-1, block), blocks(f), blocks(f_new))
    return jnp.sum(jax.lax.map(lambda args: value(*args), per_block))


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


def _converged_potentials(c, a, b, diameter, settings):
    """OTT's Sinkhorn on one problem; differentiable through its iterations when ``c`` carries a gradient."""
    init = jnp.maximum(jax.lax.stop_gradient(diameter) ** 2 / settings.epsilon, 1.0)
    decay = init ** (-1.0 / settings.annealing_iterations)
    eps = _DecayingEpsilon(jnp.asarray(settings.epsilon, c.dtype), init, decay)
    problem = linear_problem.LinearProblem(geometry.Geometry(cost_matrix=c, epsilon=eps), a=a, b=b)
    inner = 10
    # OTT computes the error at the last iteration of each block of `inner` iterations, and only from
    # `min_iterations` on; a block whose error was skipped reads as diverged and stops the loop. So the first
    # check must fall on a block end after annealing has reached ε.
    min_iterations = (settings.annealing_iterations // inner + 1) * inner - 1
    solver = sinkhorn.Sinkhorn(
        threshold=settings.threshold, max_iterations=max(settings.max_iterations, min_iterations),
        min_iterations=min_iterations, inner_iterations=inner, implicit_diff=None, use_danskin=False,
    )
    out = solver(problem)
    return out.f, out.g


def _converged_cross(c, a, b, diameter, settings):
    """OT_ε at OTT's potentials, as ½(F(g) + G(f)) with F(g) = ⟨a, softmin_b(C − g)⟩ + ⟨b, g⟩ and G its mirror.

    Both halves are the dual objective maximised over one potential, so the value is stationary in (f, g): errors
    of the potentials (a float32 solver's at large costs, or an unconverged one's) enter at second order, and no
    exponential of an unbalanced plan can overflow (OTT's own ``reg_ot_cost`` sums the plan's entries, which
    overflows at costs of ~10⁸ ε in float32). Its gradient w.r.t. the cost is the average of the row- and
    column-normalised plans, the envelope theorem's plan at convergence ("implicit"). "unrolled" also
    backpropagates through OTT's iterations into f and g.
    """
    shape = _batch_shape(diameter, c, a, b)

    def flat(v, core: int):
        core_shape = v.shape[v.ndim - core:]
        return jnp.broadcast_to(v, shape + core_shape).reshape((-1,) + core_shape)

    sg = jax.lax.stop_gradient
    fixed = sg(c)
    solve_on = c if settings.differentiation == "unrolled" else fixed
    f, g = jax.vmap(lambda *args: _converged_potentials(*args, settings))(
        flat(solve_on, 2), flat(a, 1), flat(b, 1), flat(jnp.asarray(diameter), 0))
    eps = jnp.asarray(settings.epsilon, c.dtype)
    # OTT's potentials hold ε log(weight) (its plan is exp((f + g − C)/ε)); geomloss's, which the kernels use,
    # do not. OTT gives zero-weight points −inf; any finite value serves (they are weighted out). Then the one
    # free constant goes where both potentials are small: at costs ≪ ε the potentials are ≪ ε log n, and leaving
    # ε log n in them would round the value's digits away.
    f = jnp.where(a > 0, f.reshape(shape + f.shape[1:]) - eps * jnp.log(jnp.where(a > 0, a, 1.0)), 0.0)
    g = jnp.where(b > 0, g.reshape(shape + g.shape[1:]) - eps * jnp.log(jnp.where(b > 0, b, 1.0)), 0.0)
    shift = 0.5 * (_dot(a, f) - _dot(b, g))[..., None]
    f, g = jnp.where(a > 0, f - shift, 0.0), jnp.where(b > 0, g + shift, 0.0)
    if settings.differentiation == "implicit":
        f, g = sg(f), sg(g)
    f_new, g_new = _update((fixed, a, b, sg(f), sg(g)), [], eps, _small_costs(eps, _cost_range(fixed, a, b)))
    return _extrapolated_value(c, c, a, b, f, g, f_new, g_new, eps, jnp.asarray(0.5, c.dtype))


def divergence_terms(cross, selfs, *, diameter: jax.Array, settings: SinkhornSettings) -> list[jax.Array]:
    """The terms of a debiased Sinkhorn divergence, from cost matrices, every term under one ε schedule.

    ``cross`` = (c_x, c_y, a, b) or None gives OT_ε(α, β): c_x and c_y hold the same values [..., n, m], c_x
    differentiable in the first points only and c_y in the second only (:func:`detached_pair`); each (c, w) of
    ``selfs`` gives ½ OT_ε(w, w) from c = C(x, x) [..., n, n] differentiable in its rows' points only. Leading axes
    are a batch of problems (costs, weights and ``diameter`` broadcast against each other: one cost may serve a
    batch of schedules). Returns [cross term if any, *self terms]. The converged solver uses both sides' gradients.
    """
    if settings.solver == "annealed":
        return _annealed_terms(cross, selfs, diameter, settings)
    sg = jax.lax.stop_gradient
    values = []
    if cross is not None:
        c_x, c_y, a, b = cross
        values.append(_converged_cross(c_x + (c_y - sg(c_y)), a, b, diameter, settings))
    for c, w in selfs:
        c_t = jnp.swapaxes(c, -1, -2)  # C(x, x) is symmetric: its transpose carries the columns' gradient
        values.append(0.5 * _converged_cross(c + (c_t - sg(c_t)), w, w, diameter, settings))
    return values


def half_self_cost(cost_fn: CostFn, x: Points, a: jax.Array, *, diameter: jax.Array, settings: SinkhornSettings,
                   block: Optional[int] = None) -> jax.Array:
    """½ OT_ε(α, α), the term a debiased divergence subtracts per side.

    geomloss solves the symmetric problem with one potential, which is what the annealed solver does; ``block``
    builds its cost a block of rows at a time (memory O(block · n) instead of O(n²); annealed only).
    """
    n = jax.tree.leaves(x)[0].shape[0]
    if block is not None and block < n and settings.solver == "annealed":
        return _blocked_half_self(cost_fn, x, a, diameter, settings, block)
    c, _ = detached_pair(cost_fn, x, x)
    return divergence_terms(None, [(c, a)], diameter=diameter, settings=settings)[0]


def sinkhorn_divergence(cost_fn: CostFn, x: Points, a: jax.Array, y: Points, b: jax.Array, *,
                        diameter: jax.Array, settings: SinkhornSettings) -> jax.Array:
    """S_ε(α, β) = OT_ε(α, β) − ½ OT_ε(α, α) − ½ OT_ε(β, β), every term under the same ε schedule."""
    c_x, c_y = detached_pair(cost_fn, x, y)
    c_xx, _ = detached_pair(cost_fn, x, x)
    c_yy, _ = detached_pair(cost_fn, y, y)
    cross, self_x, self_y = divergence_terms((c_x, c_y, a, b), [(c_xx, a), (c_yy, b)], diameter=diameter,
                                             settings=settings)
    return cross - self_x - self_y
