"""Optimal transport dataset distance (Alvarez-Melis & Fusi, 2020) as ORCA calls it.

A point is a (feature, label) pair; the ground cost between two points is ‖x − x′‖²/2 + W(y, y′)/2, where W is a
label-to-label distance matrix over the union of both datasets' classes (their label ids are kept distinct, as otdd
re-indexes the second dataset's labels after the first's), and the distance is the debiased Sinkhorn divergence of
the two labelled datasets. W is a constant for the gradient (``stop_gradient``), as in the official code, which
reads it out with ``.item()``; gradients reach features only through the ‖x − x′‖²/2 term.

The annealed solver reproduces geomloss's schedule including its diameter, which otdd measures on the points with
the label id appended as one more coordinate; that is why the label column enters :func:`dataset_diameter`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from orca_jax.ot import label_distances as ld
from orca_jax.ot.sinkhorn import SinkhornSettings, bounding_box_diameter, sinkhorn_divergence


def check_features(x, name: str, dim: int | None = None, n: int | None = None) -> jax.Array:
    """Features as a 2-D float array, with errors that name the argument and the fix."""
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (points, features) array; got shape {x.shape}. Pool or flatten "
                         "tokens first (ORCA mean-pools over tokens).")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point; got dtype {x.dtype}.")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has feature width {x.shape[1]} but the other dataset has {dim}; both datasets "
                         "must live in the same feature space.")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} points but its labels have {n}; pass one label per point.")
    return x


def label_matrix(src_x, src_layout, tgt_x, tgt_layout, inner: str, settings: SinkhornSettings) -> jax.Array:
    """W over source classes then target classes, [[W_ss, W_st], [W_tsᵀ, W_tt]], without gradient."""
    src_x, tgt_x = jax.lax.stop_gradient(src_x), jax.lax.stop_gradient(tgt_x)
    if inner == "exact":
        w_ss = ld.exact_label_distances_within(src_x, src_layout, settings)
        w_tt = ld.exact_label_distances_within(tgt_x, tgt_layout, settings)
        w_st = ld.exact_label_distances(src_x, src_layout, tgt_x, tgt_layout, settings)
    else:
        w_ss = ld.gaussian_label_distances_within(src_x, src_layout)
        w_tt = ld.gaussian_label_distances_within(tgt_x, tgt_layout)
        w_st = ld.gaussian_label_distances(src_x, src_layout, tgt_x, tgt_layout)
    return jnp.block([[w_ss, w_st], [w_st.T, w_tt]])


def augmented_cost(w: jax.Array):
    """The OTDD ground cost on points (features, label index into ``w``)."""

    def cost(p, q):
        (xp, lp), (xq, lq) = p, q
        return ld.full_sq_euclidean(xp, xq) / 2 + w[lp][:, lq] / 2

    return cost


def dataset_diameter(feature_clouds, num_labels: int) -> jax.Array:
    """geomloss's diameter of otdd's augmented points: feature bounding box plus a label column spanning
    0..num_labels−1."""
    return jnp.sqrt(bounding_box_diameter(*feature_clouds) ** 2 + float(num_labels - 1) ** 2)


def check_inner(inner: str) -> None:
    if inner not in ld.INNER_METHODS:
        raise ValueError(f"inner={inner!r} is unknown: use 'exact' (debiased Sinkhorn between class clouds, "
                         "ORCA's setting) or 'gaussian' (2-Wasserstein between fitted Gaussians).")


def otdd(src_x, src_y, tgt_x, tgt_y, *, inner: str = "exact", epsilon: float = 0.1, solver: str = "annealed",
         settings: SinkhornSettings | None = None) -> jax.Array:
    """Debiased OTDD between labelled datasets (src_x, src_y) and (tgt_x, tgt_y).

    Features may be traced (jit, grad w.r.t. either dataset); labels must be concrete because they fix the shapes.
    ``settings`` overrides ``epsilon``/``solver`` with every solver knob (threshold, differentiation, ...).
    """
    check_inner(inner)
    settings = settings or SinkhornSettings(solver=solver, epsilon=epsilon)
    src_layout = ld.class_layout(src_y, "src_y")
    tgt_layout = ld.class_layout(tgt_y, "tgt_y")
    src_x = check_features(src_x, "src_x", n=src_layout.index.shape[0])
    tgt_x = check_features(tgt_x, "tgt_x", dim=src_x.shape[1], n=tgt_layout.index.shape[0])
    return _otdd(src_x, src_layout, tgt_x, tgt_layout, inner, settings)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _otdd(src_x, src_layout, tgt_x, tgt_layout, inner, settings):
    w = label_matrix(src_x, src_layout, tgt_x, tgt_layout, inner, settings)
    k_src = src_layout.num_classes
    a = jnp.full(src_x.shape[0], 1.0 / src_x.shape[0], src_x.dtype)
    b = jnp.full(tgt_x.shape[0], 1.0 / tgt_x.shape[0], tgt_x.dtype)
    diameter = dataset_diameter([(src_x, a), (tgt_x, b)], k_src + tgt_layout.num_classes)
    return sinkhorn_divergence(augmented_cost(w), (src_x, src_layout.index), a, (tgt_x, tgt_layout.index + k_src),
                               b, diameter=diameter, settings=settings)
