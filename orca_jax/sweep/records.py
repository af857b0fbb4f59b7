"""One run's outcome as the sweep reports it; a baseline fitted on a seed's split is a record too."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RunRecord:
    variant: str
    seed: int
    status: str  # ran | skipped (finished earlier) | failed
    align_from: str | None = None
    summary: dict | None = None
    error: str | None = None
    wall_seconds: float | None = None
    distance: float | None = None  # align distance_after: this run's, or its align_from run's
    baseline: bool = False  # a baseline of orca_jax.baselines on the seed's split, not a run

    @property
    def _scores(self) -> dict:
        """A run's refine summary, or a baseline's scores under the same keys."""
        return (self.summary or {}).get("baseline" if self.baseline else "refine") or {}

    @property
    def metric(self) -> str | None:
        return self._scores.get("metric")

    @property
    def test(self) -> float | None:
        return self._scores.get(f"test_{self.metric}")

    @property
    def best_val(self) -> float | None:
        return self._scores.get(f"best_val_{self.metric}")
