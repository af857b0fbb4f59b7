"""The converged solver: OTT-JAX's Sinkhorn to a marginal-error threshold, ε annealed from the diameter² in
its first iterations, valued in a stationary dual form (see `converged_cross`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ott.geometry import epsilon_scheduler, geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from orca_jax.ot.soft_transforms import dot, extrapolated_value, small_costs, soft_c_transforms, weighted_cost_range


def batch_shape(diameter, c, *weights):
    """The batch of problems: the broadcast of the diameter's shape with the cost's and weights' leading axes."""
    return jnp.broadcast_shapes(jnp.shape(diameter), c.shape[:-2], *(w.shape[:-1] for w in weights))


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


def converged_potentials(c, a, b, diameter, settings):
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


def converged_cross(c, a, b, diameter, settings):
    """OT_ε at OTT's potentials, as ½(F(g) + G(f)) with F(g) = ⟨a, softmin_b(C − g)⟩ + ⟨b, g⟩ and G its mirror.

    Both halves are the dual objective maximised over one potential, so the value is stationary in (f, g): errors
    of the potentials (a float32 solver's at large costs, or an unconverged one's) enter at second order, and no
    exponential of an unbalanced plan can overflow (OTT's own ``reg_ot_cost`` sums the plan's entries, which
    overflows at costs of ~10⁸ ε in float32). Its gradient w.r.t. the cost is the average of the row- and
    column-normalised plans, the envelope theorem's plan at convergence ("implicit"). "unrolled" also
    backpropagates through OTT's iterations into f and g.
    """
    shape = batch_shape(diameter, c, a, b)

    def flat(v, core: int):
        core_shape = v.shape[v.ndim - core:]
        return jnp.broadcast_to(v, shape + core_shape).reshape((-1,) + core_shape)

    sg = jax.lax.stop_gradient
    fixed = sg(c)
    solve_on = c if settings.differentiation == "unrolled" else fixed
    f, g = jax.vmap(lambda *args: converged_potentials(*args, settings))(
        flat(solve_on, 2), flat(a, 1), flat(b, 1), flat(jnp.asarray(diameter), 0))
    eps = jnp.asarray(settings.epsilon, c.dtype)
    # OTT's potentials hold ε log(weight) (its plan is exp((f + g − C)/ε)); geomloss's, which the kernels use,
    # do not. OTT gives zero-weight points −inf; any finite value serves (they are weighted out). Then the one
    # free constant goes where both potentials are small: at costs ≪ ε the potentials are ≪ ε log n, and leaving
    # ε log n in them would round the value's digits away.
    f = jnp.where(a > 0, f.reshape(shape + f.shape[1:]) - eps * jnp.log(jnp.where(a > 0, a, 1.0)), 0.0)
    g = jnp.where(b > 0, g.reshape(shape + g.shape[1:]) - eps * jnp.log(jnp.where(b > 0, b, 1.0)), 0.0)
    shift = 0.5 * (dot(a, f) - dot(b, g))[..., None]
    f, g = jnp.where(a > 0, f - shift, 0.0), jnp.where(b > 0, g + shift, 0.0)
    if settings.differentiation == "implicit":
        f, g = sg(f), sg(g)
    small = small_costs(eps, weighted_cost_range(fixed, a, b))
    f_new, g_new = soft_c_transforms((fixed, a, b, sg(f), sg(g)), [], eps, small)
    return extrapolated_value(c, c, a, b, f, g, f_new, g_new, eps, jnp.asarray(0.5, c.dtype))
