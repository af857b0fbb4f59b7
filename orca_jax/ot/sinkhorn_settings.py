"""How one entropic OT problem is solved (`SinkhornSettings`), checked when it is built."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp

SOLVERS = ("annealed", "converged")
DIFFERENTIATIONS = ("implicit", "unrolled")


@dataclasses.dataclass(frozen=True)
class SinkhornSettings:
    """Everything that decides how one entropic OT problem is solved; hashable so it can be a static argument.

    ``epsilon`` is absolute (OTT's default is relative to the cost; ORCA's official value is 0.1 on both the label
    and the dataset problem). ``scaling`` is geomloss's blur ratio per annealing step. ``threshold``,
    ``max_iterations``, ``annealing_iterations`` and ``differentiation`` only matter for ``solver="converged"``,
    which returns whatever it has after ``max_iterations`` without a flag: at unit-scale features and ε = 0.1 it
    needs thousands of iterations, at a tenth of that scale tens. Its plan needs the potentials to a fraction of ε,
    and the dtype resolves them only to ~d²·eps_machine (d the data's diameter), so its float32 gradient drifts from
    the float64 one as d² grows (docs/results.md, "Design measurements"); see :func:`check_resolvable`. The annealed solver's plan does not depend on such ties and stays accurate.
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
