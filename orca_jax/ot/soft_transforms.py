"""The soft-C-transforms both solvers share, and the values whose gradients are written out from the cost and
the potentials alone.

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

import math

import jax
import jax.numpy as jnp

# A one-exponential step is kept while every row/column sum of the kernel lies within e^±BAND: float32 holds
# e^±87, and a sum ≥ e^-50 has a largest term far above the underflow threshold.
BAND = 50.0
# ε above this many times the cost range: every log-sum-exp's terms differ by less than ~1/64, where the plain form
# keeps fewer than ~18 of float32's 24 bits of their differences; the shifted log1p form is used instead.
SMALL_COST_RATIO = 128.0
HIGHEST = jax.lax.Precision.HIGHEST


def log_sum_exp(m: jax.Array, w: jax.Array, axis: int) -> jax.Array:
    """log Σ w·exp(m) along ``axis`` (-1: rows, weights along columns; -2: columns), shifted by the maximum over
    positive weights: safe for any exponents."""
    w = w[..., None, :] if axis == -1 else w[..., :, None]
    m = jnp.where(w > 0, m, -jnp.inf)
    top = jnp.max(m, axis=axis, keepdims=True)
    total = jnp.sum(jnp.where(w > 0, w * jnp.exp(m - top), 0.0), axis=axis)
    return jnp.squeeze(top, axis) + jnp.log(total)


def in_band(sums: jax.Array) -> jax.Array:
    return jnp.all((sums > math.exp(-BAND)) & (sums < math.exp(BAND)))


def exponent(c, h_rows, h_cols, eps):
    return (h_rows[..., :, None] + h_cols[..., None, :] - c) / eps[..., None, None]


def log_sums(m, w_rows, w_cols, small: bool):
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
        return [jnp.log1p(s) for s in sums], jnp.all(jnp.stack([in_band(1.0 + s) for s in sums]))
    return [jnp.log(s) for s in sums], jnp.all(jnp.stack([in_band(s) for s in sums]))


def one_exponential_transforms(cross, selfs, eps, small: bool):
    """Every problem's parallel soft-C-transforms, geomloss's f̃ = softmin_b(C − g), g̃ = softmin_a(Cᵀ − f), each
    written as f − ε log Σ_j b_j exp((f_i + g_j − C_ij)/ε) so that one kernel serves both sides; and whether all
    were safe. ``cross`` = (c, a, b, f, g) or None; ``selfs`` = [(c, w, h_rows, h_cols)] (``c`` may be a block of
    rows of a symmetric problem, ``h_rows`` their potentials, ``h_cols`` all of them)."""
    e = eps[..., None]
    out, oks = [], []
    if cross is not None:
        c, a, b, f, g = cross
        (rows, cols), ok = log_sums(exponent(c, f, g, eps), a, b, small)
        out, oks = [f - e * rows, g - e * cols], [ok]
    for c, w, h_rows, h_cols in selfs:
        (rows,), ok = log_sums(exponent(c, h_rows, h_cols, eps), None, w, small)
        out.append(h_rows - e * rows)
        oks.append(ok)
    return tuple(out), jnp.all(jnp.stack(oks))


def shifted_transforms(cross, selfs, eps):
    """:func:`one_exponential_transforms` in the max-shifted log-sum-exp form, safe for any exponents (two passes
    per side)."""
    e = eps[..., None]
    out = []
    if cross is not None:
        c, a, b, f, g = cross
        m = exponent(c, f, g, eps)
        out = [f - e * log_sum_exp(m, b, -1), g - e * log_sum_exp(m, a, -2)]
    return tuple(out + [h_rows - e * log_sum_exp(exponent(c, h_rows, h_cols, eps), w, -1)
                        for c, w, h_rows, h_cols in selfs])


def soft_c_transforms(cross, selfs, eps, small):
    """One annealing step's transforms: one exponential (or, when ε dwarfs the costs, expm1) per entry, redone
    max-shifted if any row or column sum left the safe band. The checks reduce to one scalar per step, so
    ``lax.cond`` runs one branch (under ``vmap`` it would run both)."""
    new, ok = jax.lax.cond(small, lambda: one_exponential_transforms(cross, selfs, eps, True),
                           lambda: one_exponential_transforms(cross, selfs, eps, False))
    return jax.lax.cond(ok, lambda: new, lambda: shifted_transforms(cross, selfs, eps))


def small_costs(eps, cost_range):
    return jnp.any(eps > SMALL_COST_RATIO * cost_range)


def weighted_cost_range(c: jax.Array, w_rows: jax.Array, w_cols: jax.Array) -> jax.Array:
    """max − min of the cost between points of positive weight (padding may lie anywhere)."""
    real = (w_rows[..., :, None] > 0) & (w_cols[..., None, :] > 0)
    return (jnp.max(jnp.where(real, c, -jnp.inf), axis=(-2, -1))
            - jnp.min(jnp.where(real, c, jnp.inf), axis=(-2, -1)))


def dot(w, v):
    """Σ w·v over points, zero-weight entries excluded whatever their value."""
    return jnp.sum(jnp.where(w > 0, w * v, 0.0), axis=-1)


def conditional_plan(c, h_rows, h_cols, w, eps, axis: int):
    """The plan of a soft-C-transform, normalised along ``axis``: w_j exp((h_i + h_j − C_ij)/ε) / Σ_j (...) for
    rows (axis -1, ``w`` the columns' weights), the mirror for columns. Normalising explicitly instead of reusing
    the transform's potential keeps each row a probability vector even where float32 cannot resolve the
    potentials to ε (features ×1000 and beyond)."""
    weights = w[..., None, :] if axis == -1 else w[..., :, None]
    m = jnp.where(weights > 0, exponent(c, h_rows, h_cols, eps), -jnp.inf)
    e = jnp.where(weights > 0, weights * jnp.exp(m - jnp.max(m, axis=axis, keepdims=True)), 0.0)
    return e / jnp.sum(e, axis=axis, keepdims=True)


@jax.custom_vjp
def extrapolated_value(c_x, c_y, a, b, f, g, f_new, g_new, eps, mix):
    """mix·(⟨a, f̃⟩ + ⟨b, g̃⟩) + (1 − mix)·(⟨a, f⟩ + ⟨b, g⟩), where (f̃, g̃) = ``(f_new, g_new)`` are the soft-C-
    transforms of (g, f) on the cost: geomloss's extrapolated value (mix = 1) or the stationary dual (mix = ½).

    Its derivative w.r.t. the cost is mix·(a ⊗ P_rows + P_cols ⊗ b) with the transforms' normalised plans, each on
    its own side's cost (``c_x``, ``c_y``: same values, see :func:`detached_pair`); w.r.t. f and g the direct one,
    the transforms' included. Only the cost is kept for the backward pass.
    """
    return mix * (dot(a, f_new) + dot(b, g_new)) + (1 - mix) * (dot(a, f) + dot(b, g))


def _extrapolated_value_fwd(c_x, c_y, a, b, f, g, f_new, g_new, eps, mix):
    residuals = (jax.lax.stop_gradient(c_x), a, b, f, g, f_new, g_new, eps, mix)
    return extrapolated_value(c_x, c_y, a, b, f, g, f_new, g_new, eps, mix), residuals


def _extrapolated_value_bwd(residuals, ct):
    c, a, b, f, g, f_new, g_new, eps, mix = residuals
    scale = (ct * mix)[..., None, None]
    rows = scale * a[..., :, None] * conditional_plan(c, f, g, b, eps, -1)
    cols = scale * b[..., None, :] * conditional_plan(c, f, g, a, eps, -2)
    ct_f = ct[..., None] * (1 - mix) * a - jnp.sum(cols, axis=-1)
    ct_g = ct[..., None] * (1 - mix) * b - jnp.sum(rows, axis=-2)
    zeros = jax.tree.map(jnp.zeros_like, (a, b, f_new, g_new, eps, mix))
    return (unbroadcast(rows, c.shape), unbroadcast(cols, c.shape), *zeros[:2], unbroadcast(ct_f, f.shape),
            unbroadcast(ct_g, g.shape), *zeros[2:])


extrapolated_value.defvjp(_extrapolated_value_fwd, _extrapolated_value_bwd)


@jax.custom_vjp
def rows_value(c, a_rows, a_cols, f_rows, f_cols, f_new, eps):
    """⟨a_rows, f̃⟩ for the soft-C-transform f̃ = ``f_new`` of ``f_cols`` on (a block of rows of) a symmetric
    problem's cost C(x_rows, x), differentiable in the rows' points only: geomloss's self term."""
    return dot(a_rows, f_new)


def _rows_value_fwd(c, a_rows, a_cols, f_rows, f_cols, f_new, eps):
    residuals = (jax.lax.stop_gradient(c), a_rows, a_cols, f_rows, f_cols, f_new, eps)
    return rows_value(c, a_rows, a_cols, f_rows, f_cols, f_new, eps), residuals


def _rows_value_bwd(residuals, ct):
    c, a_rows, a_cols, f_rows, f_cols, f_new, eps = residuals
    plan = (ct[..., None] * a_rows)[..., :, None] * conditional_plan(c, f_rows, f_cols, a_cols, eps, -1)
    return (unbroadcast(plan, c.shape),
            *jax.tree.map(jnp.zeros_like, (a_rows, a_cols, f_rows, f_cols, f_new, eps)))


rows_value.defvjp(_rows_value_fwd, _rows_value_bwd)


def unbroadcast(x, shape):
    """Sum ``x`` over the leading axes that broadcasting added to an input of ``shape``."""
    return jnp.sum(x, axis=tuple(range(x.ndim - len(shape)))) if x.ndim > len(shape) else x
