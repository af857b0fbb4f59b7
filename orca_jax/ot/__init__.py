"""Alignment distances for ORCA's align stage, on OTT-JAX: OTDD (uncached and cached), MMD, l2, pseudo-labels;
all called as `AlignDistance` (orca_jax/ot/distance.py).

``solver="annealed"`` (default) reproduces the official geomloss backend value and gradient; ``"converged"`` gives
the true debiased Sinkhorn divergence. See :mod:`orca_jax.ot.sinkhorn`.
"""
from orca_jax.ot.cached_loss import OTDDLoss
from orca_jax.ot.distance import AlignDistance
from orca_jax.ot.label_distances import (
    ClassLayout,
    class_layout,
    exact_label_distances_within,
    gaussian_label_distances_within,
)
from orca_jax.ot.l2 import L2Loss
from orca_jax.ot.mmd import MMDLoss, multi_kernel_mmd
from orca_jax.ot.otdd import otdd
from orca_jax.ot.pseudo_labels import pseudo_labels
from orca_jax.ot.sinkhorn import sinkhorn_divergence
from orca_jax.ot.sinkhorn_settings import SinkhornSettings

__all__ = [
    "AlignDistance",
    "ClassLayout",
    "L2Loss",
    "MMDLoss",
    "OTDDLoss",
    "SinkhornSettings",
    "class_layout",
    "exact_label_distances_within",
    "gaussian_label_distances_within",
    "multi_kernel_mmd",
    "otdd",
    "pseudo_labels",
    "sinkhorn_divergence",
]
