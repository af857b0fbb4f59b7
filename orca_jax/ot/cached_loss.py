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

Per call, one [N, n] matmul gives the squared source–target distances that the outer problem and all K inner
source-class–target problems share (the inner costs are its rows, grouped by class), and one [n, n] matmul the
target's; the gradient needs only the outer cost and the final potentials, and one [n, N] × [N, D] matmul.

Memory: above 8,192 source points the source self-term is built a block of ``self_block`` rows at a time
(O(block · N) memory instead of O(N²), at the price of recomputing the costs in every annealing step: O(N² · D)
work per step; annealed only: the converged solver holds the N × N matrix once). A call holds O(N · n) cost entries
for a target class of n points; the classes of a batch are processed one after the other. The official code
subsamples the source to 5,000 points.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from orca_jax.ot import label_distances as ld
from orca_jax.ot.distance import value_and_grad
from orca_jax.ot.otdd import (
    augmented_cost,
    check_features,
    check_finite,
    check_inner,
    dataset_diameter,
    host_diameter,
)
from orca_jax.ot.sinkhorn import (
    CrossProblem,
    SelfProblem,
    bounding_box_diameter,
    detached_pair,
    divergence_terms,
    half_self_cost,
)
from orca_jax.ot.sinkhorn_settings import SinkhornSettings, check_resolvable, resolve_settings

_FULL_SELF_COST_MAX_POINTS = 8192


def check_target_batch(tgt_x, mask, class_weights, dim: int):
    """Target classes as (B, n, D) features, (B, n) mask and (B,) weights (defaults: all real, class frequency).

    A single class may be given as (n, D). Classes with no real point are allowed (empty slots of a fixed-size
    batch; they contribute nothing); a class with exactly one real point, and NaN/inf on real points or in the
    weights, are errors when the values are concrete.
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
    check_finite(tgt_x, "tgt_x", real=mask)
    if class_weights is None:
        class_weights = counts / jnp.maximum(jnp.sum(counts), 1)
    class_weights = jnp.asarray(class_weights, tgt_x.dtype)
    if class_weights.shape != counts.shape:
        raise ValueError(f"class_weights has shape {class_weights.shape}; expected ({tgt_x.shape[0]},), one per "
                         "target class (ORCA uses each class's frequency in the target training set).")
    check_finite(class_weights, "class_weights")
    return tgt_x, mask, class_weights


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OTDDLoss:
    """Σ_c w_c · OTDD(source, target class c as one label) and its gradient w.r.t. the target features.

    Build with :meth:`build`; call ``loss(tgt_x, mask, class_weights)`` for (value, gradient) from one compiled
    function, or use :meth:`value` inside your own jitted step (the object is a pytree: pass it as an argument).
    ``src_x`` is stored centred on ``centre`` (the source mean); targets are shifted by the same vector.
    """

    src_x: jax.Array
    centre: jax.Array
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
        check_resolvable(host_diameter(src_x), src_x.dtype, settings, "the source features")
        if self_block is None and src_x.shape[0] > _FULL_SELF_COST_MAX_POINTS:
            self_block = 1024
        return _build(src_x, layout, inner, settings, self_block)

    @property
    def num_classes(self) -> int:
        return self.src_layout.num_classes

    def value(self, tgt_x, mask=None, class_weights=None, *, key=None) -> jax.Array:
        """The weighted sum of per-class OTDDs; differentiable w.r.t. ``tgt_x`` (and jit-able). Deterministic:
        ``key`` (the `AlignDistance` call) is ignored.

        Under ``jit`` the inputs cannot be checked: NaN/inf on a real point make the value NaN (padding is
        ignored whatever it holds).
        """
        tgt_x, mask, class_weights = self._checked(tgt_x, mask, class_weights)
        tgt_x = jnp.where(mask[..., None], tgt_x - self.centre, 0.0)
        # One class after the other: memory O(N · n), and each solver step's overflow check stays one scalar (under
        # vmap, lax.cond would run both of its branches).
        per_class = jax.lax.map(lambda args: self._one_class(*args), (tgt_x, mask))
        return jnp.sum(class_weights * per_class)

    def __call__(self, tgt_x, mask=None, class_weights=None, *, key=None) -> tuple[jax.Array, jax.Array]:
        """(value, d value / d tgt_x), compiled once per target batch shape."""
        tgt_x, mask, class_weights = self._checked(tgt_x, mask, class_weights)
        return value_and_grad(self, tgt_x, mask, class_weights, None)

    def _checked(self, tgt_x, mask, class_weights):
        tgt_x, mask, class_weights = check_target_batch(tgt_x, mask, class_weights, self.src_x.shape[1])
        if self.settings.solver == "converged":
            check_resolvable(host_diameter(self.src_x, (tgt_x - self.centre, mask)), tgt_x.dtype, self.settings,
                             "the source and target features")
        return tgt_x, mask, class_weights

    def _label_column(self, d_st, d_tt, tgt_x, b):
        """Label distances between each source class and the target class (a constant for the gradient), from
        the squared distances the outer problem uses too: source–target ``d_st`` [N, n] and target–target
        ``d_tt`` [n, n]."""
        if self.inner == "gaussian":
            tgt_x = jax.lax.stop_gradient(tgt_x)
            mean = b @ tgt_x
            centred = (tgt_x - mean) * (b > 0)[:, None]
            cov = centred.T @ centred / (jnp.sum(b > 0) - 1)
            return ld.bures_distances(self.class_means, self.class_covs, mean[None], cov[None])[:, 0]
        cross = d_st[self.src_layout.members]
        weights = jnp.asarray(self.src_layout.weights, d_st.dtype)
        cross_term, target_term = divergence_terms(CrossProblem(cross, cross, weights, b), [SelfProblem(d_tt, b)],
                                                   diameter=self.class_diameters, settings=self.settings)
        return cross_term - self.class_half_self - target_term

    def _one_class(self, tgt_x, mask):
        sg = jax.lax.stop_gradient
        count = jnp.sum(mask)
        # An empty slot gets uniform dummy weights, so that no branch computes NaNs that the final `where` would
        # hide in the forward pass but not in the backward pass.
        b = jnp.where(count > 0, mask / jnp.maximum(count, 1).astype(tgt_x.dtype), 1.0 / mask.shape[0])
        # One matmul gives the source–target distances for the label column, the outer cost's value and its
        # gradient w.r.t. the target (geomloss's detached pattern).
        d_st, d_st_y = detached_pair(ld.full_sq_euclidean, self.src_x, tgt_x)
        d_tt, _ = detached_pair(ld.full_sq_euclidean, tgt_x, tgt_x)
        d = sg(self._label_column(sg(d_st), sg(d_tt), tgt_x, b))
        # The augmented cost ‖x − y‖²/2 + W[y, y']/2: between a source point of class k and the target class
        # W = d[k], within the target W = 0.
        offset = 0.5 * d[self.src_layout.index][:, None]
        a = jnp.full(self.src_x.shape[0], 1.0 / self.src_x.shape[0], self.src_x.dtype)
        cross_term, target_term = divergence_terms(CrossProblem(0.5 * d_st + offset, 0.5 * d_st_y + offset, a, b),
                                                   [SelfProblem(0.5 * d_tt, b)], diameter=self.diameter,
                                                   settings=self.settings)
        return jnp.where(count >= 2, cross_term - self.src_half_self - target_term, 0.0)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _build(src_x, layout, inner, settings, self_block):
    k = layout.num_classes
    centre = jnp.mean(src_x, axis=0)
    src_x = src_x - centre
    a = jnp.full(src_x.shape[0], 1.0 / src_x.shape[0], src_x.dtype)
    diameter = dataset_diameter([(src_x, a)], k + 1)
    class_diameters = class_half_self = class_means = class_covs = None
    if inner == "exact":
        w_ss = ld.exact_label_distances_within(src_x, layout, settings)
        clouds, weights = ld.class_clouds(src_x, layout)
        class_diameters = jax.vmap(lambda x, w: bounding_box_diameter((x, w)))(clouds, weights)
        class_half_self = ld.self_divergence_terms(clouds, weights, class_diameters, settings)
    else:
        class_means, class_covs = ld.class_gaussians(src_x, layout)
        w_ss = ld.gaussian_label_distances_within(src_x, layout)
    src_half_self = half_self_cost(augmented_cost(w_ss), (src_x, layout.index), a, diameter=diameter,
                                   settings=settings, block=self_block)
    return OTDDLoss(src_x, centre, layout, w_ss, src_half_self, diameter, class_diameters, class_half_self,
                    class_means, class_covs, inner, settings)

