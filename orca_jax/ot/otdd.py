"""Optimal transport dataset distance (Alvarez-Melis & Fusi, 2020) as ORCA calls it.

A point is a (feature, label) pair; the ground cost between two points is ‖x − x′‖²/2 + W(y, y′)/2, where W is a
label-to-label distance matrix over the union of both datasets' classes (their label ids are kept distinct, as otdd
re-indexes the second dataset's labels after the first's), and the distance is the debiased Sinkhorn divergence of
the two labelled datasets. W is a constant for the gradient (``stop_gradient``), as in the official code, which
reads it out with ``.item()``; gradients reach features only through the ‖x − x′‖²/2 term.

The annealed solver reproduces geomloss's schedule including its diameter, which otdd measures on the points with
the label id appended as one more coordinate; that is why the label column enters :func:`dataset_diameter`.

Features are centred on the source mean first: every cost is translation invariant, and the squared-distance
expansion (:func:`~orca_jax.ot.label_distances.full_sq_euclidean`) rounds relative to ‖x‖², so an offset shared by
all points (common in a body's embedding outputs) would otherwise cost float32 digits or all of them.

Non-finite features are an error where they can be seen (concrete arrays at the entry points); traced ones (inside
``jit``) cannot raise, and a NaN or inf there makes the distance NaN — the trainers check the loss.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from orca_jax.ot import label_distances as ld
from orca_jax.ot.sinkhorn import bounding_box_diameter, sinkhorn_divergence
from orca_jax.ot.sinkhorn_settings import SinkhornSettings, check_resolvable, resolve_settings


def check_finite(x, name: str, real=None) -> None:
    """Raise if concrete ``x`` has NaN/inf entries (on the ``real`` rows only, when given: padding may hold
    anything); traced values pass unchecked."""
    if isinstance(x, jax.core.Tracer) or isinstance(real, jax.core.Tracer):
        return
    # NumPy, not jnp: inside a jit trace even concrete operands would give traced results.
    bad = ~np.isfinite(np.asarray(x))
    if real is not None:
        real = np.asarray(real)
        bad &= real.reshape(real.shape + (1,) * (bad.ndim - real.ndim))
    count = int(bad.sum())
    if count:
        where = " on real (unmasked) points" if real is not None else ""
        raise ValueError(
            f"{name} has {count} non-finite entries (NaN or ±inf) out of {x.size}{where}, so the distance would be "
            f"NaN. Find where they come from (the inputs, or an embedder that diverged: lower its learning rate) "
            f"and repair or drop those points before computing the distance.")


def host_diameter(*clouds) -> float | jax.core.Tracer:
    """The joint bounding-box diameter of concrete point sets [..., D] (NumPy, no compilation); a tracer if any
    set is traced. ``clouds`` are arrays or (array, mask) pairs."""
    lows, highs = [], []
    for cloud in clouds:
        x, real = cloud if isinstance(cloud, tuple) else (cloud, None)
        if isinstance(x, jax.core.Tracer) or isinstance(real, jax.core.Tracer):
            return x if isinstance(x, jax.core.Tracer) else real
        x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
        if real is not None:
            x = x[np.asarray(real).reshape(-1)]
        lows.append(x.min(0, initial=np.inf))
        highs.append(x.max(0, initial=-np.inf))
    return float(np.linalg.norm(np.max(highs, 0) - np.min(lows, 0)))


def check_features(x, name: str, dim: int | None = None, n: int | None = None) -> jax.Array:
    """Features as a 2-D float array of finite values, with errors that name the argument and the fix."""
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
    check_finite(x, name)
    return x


def label_matrix(x, layout, inner: str, settings: SinkhornSettings) -> jax.Array:
    """W between all classes of both datasets (features stacked, target classes numbered after the source's), as
    one symmetric matrix [[W_ss, W_st], [W_tsᵀ, W_tt]] with a zero diagonal; a constant for the gradient.

    Solving the K(K−1)/2 pairs of the union is exactly otdd's three blocks (source pairs, target pairs, cross
    pairs), in one batched computation.
    """
    x = jax.lax.stop_gradient(x)
    if inner == "exact":
        return ld.exact_label_distances_within(x, layout, settings)
    return ld.gaussian_label_distances_within(x, layout)


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
    settings = resolve_settings(epsilon, solver, settings)
    src_layout = ld.class_layout(src_y, "src_y")
    tgt_layout = ld.class_layout(tgt_y, "tgt_y")
    src_x = check_features(src_x, "src_x", n=src_layout.index.shape[0])
    tgt_x = check_features(tgt_x, "tgt_x", dim=src_x.shape[1], n=tgt_layout.index.shape[0])
    joint = ld.class_layout(np.concatenate([np.asarray(src_layout.index),
                                            np.asarray(tgt_layout.index) + src_layout.num_classes]))
    check_resolvable(host_diameter(src_x, tgt_x), src_x.dtype, settings, "these datasets")
    return _otdd(src_x, tgt_x, joint, inner, settings)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _otdd(src_x, tgt_x, joint, inner, settings):
    n_src, n_tgt = src_x.shape[0], tgt_x.shape[0]
    centre = jax.lax.stop_gradient(jnp.mean(src_x, axis=0))
    src_x, tgt_x = src_x - centre, tgt_x - centre
    w = label_matrix(jnp.concatenate([src_x, tgt_x]), joint, inner, settings)
    a = jnp.full(n_src, 1.0 / n_src, src_x.dtype)
    b = jnp.full(n_tgt, 1.0 / n_tgt, tgt_x.dtype)
    diameter = dataset_diameter([(src_x, a), (tgt_x, b)], joint.num_classes)
    return sinkhorn_divergence(augmented_cost(w), (src_x, joint.index[:n_src]), a, (tgt_x, joint.index[n_src:]), b,
                               diameter=diameter, settings=settings)
