"""OTDD to a fixed labelled source set, with everything that depends on the source alone computed once.

ORCA's align stage calls OTDD(source, one target class labelled as a single label) once per target class and
epoch, weights each call by the class's frequency and sums the gradients; the official code recomputes the
source–source label distances and the source self-term of the outer problem on every call although they never
change (about 30 % and most of the rest of a call). :class:`OTDDLoss` keeps them:

* source–source label distances W_ss, and per source class its Gaussian (``gaussian``) or its half self-term and ε
  schedule (``exact``);
* the outer problem's source half self-term ½ OT_ε(source, source).

Caching an annealed self-term requires its ε schedule not to depend on the target, so the schedules are fixed from
the source: the outer one from the source's bounding box plus the label column (0..K), each inner one from its
source class's bounding box. This is exactly geomloss's schedule whenever the target class lies inside those boxes
(which geomloss would then also measure); otherwise geomloss would start annealing from a larger diameter, and the
annealed value can differ from the uncached :func:`~orca_jax.ot.otdd.otdd` by the small amount that the schedule
changes an unconverged result (the ``converged`` solver does not depend on the schedule).

Memory: above 8,192 source points the source self-term is built a block of ``self_block`` rows at a time
(O(block · N) memory instead of O(N²), at the price of recomputing the costs in every annealing step: O(N² · D)
work per step; annealed only: the converged solver holds the N × N matrix once). A call holds O(N · n) cost entries
per target class of n points, the classes of a batch being processed in groups of at most 2^24 entries. The
official code subsamples the source to 5,000 points; measured on 2 CPU cores at width 128, building takes ~1 s at
5k and ~15 s at 20k points (growing as N²), a call ~0.03 s at 5k and ~0.12 s at 20k (growing as N).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from orca_jax.ot import label_distances as ld
from orca_jax.ot.otdd import augmented_cost, check_features, check_inner, dataset_diameter
from orca_jax.ot.sinkhorn import (
    SinkhornSettings,
    bounding_box_diameter,
    half_self_cost,
    ot_cost,
    resolve_settings,
)

# Cost-matrix entries (source points × target points × classes) one batch of target classes may hold.
_CLASS_BATCH_ENTRIES = 1 << 24
_FULL_SELF_COST_MAX_POINTS = 8192


def check_target_batch(tgt_x, mask, class_weights, dim: int):
    """Target classes as (B, n, D) features, (B, n) mask and (B,) weights (defaults: all real, class frequency).

    A single class may be given as (n, D). Classes with no real point are allowed (empty slots of a fixed-size
    batch; they contribute nothing); a class with exactly one real point is an error when the mask is concrete.
    """
    tgt_x = jnp.asarray(tgt_x)
    if tgt_x.ndim == 2:
        tgt_x = tgt_x[None]
        mask = None if mask is None else jnp.asarray(mask)[None]
    if tgt_x.ndim != 3 or tgt_x.shape[-1] != dim:
        raise ValueError(f"tgt_x must be (classes, points, {dim}) or (points, {dim}); got shape {tgt_x.shape}.")
    mask = jnp.ones(tgt_x.shape[:2], bool) if mask is None else jnp.asarray(mask, bool)
    if mask.shape != tgt_x.shape[:2]:
        raise ValueError(f"mask has shape {mask.shape} but tgt_x has {tgt_x.shape[:2]} (classes, points); pass "
                         "one boolean per target point (False on padding).")
    counts = jnp.sum(mask, axis=1)
    if not isinstance(counts, jax.core.Tracer):
        single = np.flatnonzero(np.asarray(counts) == 1)
        if single.size:
            raise ValueError(f"target class slot(s) {single.tolist()} have a single real point; a class needs at "
                             "least 2 (ORCA skips such classes): drop them or mark them all padding.")
    if class_weights is None:
        class_weights = counts / jnp.maximum(jnp.sum(counts), 1)
    class_weights = jnp.asarray(class_weights, tgt_x.dtype)
    if class_weights.shape != counts.shape:
        raise ValueError(f"class_weights has shape {class_weights.shape}; expected ({tgt_x.shape[0]},), one per "
                         "target class (ORCA uses each class's frequency in the target training set).")
    return tgt_x, mask, class_weights


def map_classes(per_class, xs, n_src: int, n_tgt: int):
    """Apply ``per_class`` to each target class, a batch of classes at a time so memory stays O(batch · N · n)."""
    batch = max(1, _CLASS_BATCH_ENTRIES // max(1, n_src * n_tgt))
    return jax.lax.map(per_class, xs, batch_size=batch)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OTDDLoss:
    """Σ_c w_c · OTDD(source, target class c as one label) and its gradient w.r.t. the target features.

    Build with :meth:`build`; call ``loss(tgt_x, mask, class_weights)`` for (value, gradient) from one compiled
    function, or use :meth:`value` inside your own jitted step (the object is a pytree: pass it as an argument).
    """

    src_x: jax.Array
    src_layout: ld.ClassLayout
    w_ss: jax.Array
    src_half_self: jax.Array
    diameter: jax.Array
    class_diameters: Optional[jax.Array]
    class_half_self: Optional[jax.Array]
    class_means: Optional[jax.Array]
    class_covs: Optional[jax.Array]
    inner: str = dataclasses.field(metadata=dict(static=True))
    settings: SinkhornSettings = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def build(cls, src_x, src_y, *, inner: str = "exact", epsilon: float = 0.1, solver: str = "annealed",
              settings: SinkhornSettings | None = None, self_block: int | None = None) -> "OTDDLoss":
        """Precompute the source terms. ``self_block``: rows per block for the source self-term (default: whole
        matrix up to 8,192 points, blocks of 1,024 beyond)."""
        check_inner(inner)
        settings = resolve_settings(epsilon, solver, settings)
        layout = ld.class_layout(src_y, "src_y")
        src_x = check_features(src_x, "src_x", n=layout.index.shape[0])
        if self_block is None and src_x.shape[0] > _FULL_SELF_COST_MAX_POINTS:
            self_block = 1024
        return _build(src_x, layout, inner, settings, self_block)

    @property
    def num_classes(self) -> int:
        return self.src_layout.num_classes

    def value(self, tgt_x, mask=None, class_weights=None) -> jax.Array:
        """The weighted sum of per-class OTDDs; differentiable w.r.t. ``tgt_x`` (and jit-able)."""
        tgt_x, mask, class_weights = check_target_batch(tgt_x, mask, class_weights, self.src_x.shape[1])
        per_class = map_classes(lambda args: self._one_class(*args), (tgt_x, mask), self.src_x.shape[0],
                                tgt_x.shape[1])
        return jnp.sum(class_weights * per_class)

    def __call__(self, tgt_x, mask=None, class_weights=None) -> tuple[jax.Array, jax.Array]:
        """(value, d value / d tgt_x), compiled once per target batch shape."""
        tgt_x, mask, class_weights = check_target_batch(tgt_x, mask, class_weights, self.src_x.shape[1])
        return _value_and_grad(self, tgt_x, mask, class_weights)

    def _label_column(self, tgt_x, b):
        """Label distances between each source class and the target class (a constant for the gradient)."""
        tgt_x = jax.lax.stop_gradient(tgt_x)
        if self.inner == "gaussian":
            mean = b @ tgt_x
            centred = (tgt_x - mean) * (b > 0)[:, None]
            cov = centred.T @ centred / (jnp.sum(b > 0) - 1)
            return ld.bures_distances(self.class_means, self.class_covs, mean[None], cov[None])[:, 0]
        src_clouds = ld.class_clouds(self.src_x, self.src_layout)
        pairs = np.stack([np.arange(self.num_classes), np.zeros(self.num_classes, int)], -1)
        return ld.pair_divergences(src_clouds, (tgt_x[None], b[None]), pairs, self.settings,
                                   diameters=self.class_diameters, half_self1=self.class_half_self)

    def _one_class(self, tgt_x, mask):
        count = jnp.sum(mask)
        # An empty slot gets uniform dummy weights, so that no branch computes NaNs that the final `where` would
        # hide in the forward pass but not in the backward pass.
        b = jnp.where(count > 0, mask / jnp.maximum(count, 1).astype(tgt_x.dtype), 1.0 / mask.shape[0])
        d = self._label_column(tgt_x, b)
        k = self.num_classes
        w = jax.lax.stop_gradient(jnp.block([[self.w_ss, d[:, None]], [d[None, :], jnp.zeros((1, 1), d.dtype)]]))
        cost = augmented_cost(w)
        a = jnp.full(self.src_x.shape[0], 1.0 / self.src_x.shape[0], self.src_x.dtype)
        tgt = (tgt_x, jnp.full(tgt_x.shape[0], k, jnp.int32))
        value = (ot_cost(cost, (self.src_x, self.src_layout.index), a, tgt, b, diameter=self.diameter,
                         settings=self.settings)
                 - self.src_half_self
                 - half_self_cost(cost, tgt, b, diameter=self.diameter, settings=self.settings))
        return jnp.where(count >= 2, value, 0.0)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _build(src_x, layout, inner, settings, self_block):
    k = layout.num_classes
    a = jnp.full(src_x.shape[0], 1.0 / src_x.shape[0], src_x.dtype)
    diameter = dataset_diameter([(src_x, a)], k + 1)
    class_diameters = class_half_self = class_means = class_covs = None
    if inner == "exact":
        w_ss = ld.exact_label_distances_within(src_x, layout, settings)
        clouds, weights = ld.class_clouds(src_x, layout)
        class_diameters = jax.vmap(lambda x, w: bounding_box_diameter((x, w)))(clouds, weights)
        class_half_self = jax.vmap(
            lambda x, w, d: half_self_cost(ld.full_sq_euclidean, x, w, diameter=d, settings=settings)
        )(clouds, weights, class_diameters)
    else:
        class_means, class_covs = ld.class_gaussians(src_x, layout)
        w_ss = ld.gaussian_label_distances_within(src_x, layout)
    src_half_self = half_self_cost(augmented_cost(w_ss), (src_x, layout.index), a, diameter=diameter,
                                   settings=settings, block=self_block)
    return OTDDLoss(src_x, layout, w_ss, src_half_self, diameter, class_diameters, class_half_self, class_means,
                    class_covs, inner, settings)


@jax.jit
def _value_and_grad(loss: OTDDLoss, tgt_x, mask, class_weights):
    return jax.value_and_grad(lambda x: loss.value(x, mask, class_weights))(tgt_x)
