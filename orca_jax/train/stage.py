"""The skeleton both training stages run in: restore, the preemption agreement, the NaN stop, saves, the clock.

The align stage steps once per epoch and the refine stage many times per epoch with an evaluation after each, so
their loops differ; what must not differ is how a stage comes back after a crash and how it stops. `StageRun` owns
that:
- `restore`: the newest checkpoint of `workdir/<stage>/` that restores (`checkpoints.StageCheckpoints`), with the
  position the stage saved beside its arrays (where it is, its history, the input iterator's state);
- `seconds`: the stage's time summed over attempts, so a resumed run reports the time an uninterrupted one took;
- `save`: a checkpoint of the stage's arrays and position, in the background;
- `check_finite`: a non-finite loss or distance stops the stage at once, without saving over the last good
  checkpoint, naming where it happened and what to change;
- `should_stop` / `stop`: every process asks the one `PreemptionGuard` at the same step numbers (continued across
  stages by `step_offset`), and a stop raises `Preempted` once everything is on disk.
Background writers a stage owns besides its checkpoints (refine's best-epoch writer) are waited for before any stop.
"""

from __future__ import annotations

import time
from typing import Any

from etils import epath

from orca_jax.parallel import PreemptionGuard
from orca_jax.train.checkpoints import StageCheckpoints, TreeWriter
from orca_jax.train.run_log import RunLog


class StageRun:
    """One attempt at a stage (`name`: "align" or "refine") in `workdir`; use it as a context manager around the
    loop, which holds the preemption guard (`preemption`, shared with the stage before, or one of its own)."""

    def __init__(self, name: str, workdir: epath.PathLike, *, preemption: PreemptionGuard | None = None,
                 step_offset: int = 0, writers: tuple[TreeWriter, ...] = ()):
        self.name, self.workdir = name, epath.Path(workdir)
        self.checkpoints = StageCheckpoints(self.workdir / name)
        self.guard = preemption or PreemptionGuard()
        self.step_offset, self.writers = step_offset, writers
        self.earlier_seconds = 0.0  # the stage's time in earlier attempts, up to the checkpoint this one resumed from
        self.log: RunLog | None = None
        self._t0 = time.perf_counter()

    def restore(self, state_like: Any, position: dict) -> tuple[int, Any, dict]:
        """(step, state, position): the newest checkpoint's, or (0, `state_like`, `position`) when there is none.
        Starts the stage's clock and its metrics log."""
        restored = self.checkpoints.restore(state_like)
        step, state = 0, state_like
        if restored is not None:
            step, state, position = restored
        self.earlier_seconds = position.get("seconds", 0.0)  # absent in older checkpoints
        self._t0 = time.perf_counter()
        self.log = RunLog(self.workdir, self.name)
        return step, state, position

    @property
    def seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self._t0

    def save(self, step: int, state: Any, position: dict) -> None:
        """Checkpoints `state` with `position`, whose `seconds` becomes the stage's time so far."""
        position["seconds"] = self.seconds
        self.checkpoints.save(step, state, position)

    def wait(self) -> None:
        self.checkpoints.wait()
        for writer in self.writers:
            writer.wait()

    def check_finite(self, value: float, what: str, where: str, unit: str, fix: str) -> None:
        """Raises FloatingPointError when `value` (the stage's `what`, at `where`) is NaN or infinite."""
        if value == value and abs(value) != float("inf"):
            return
        self.wait()
        raise FloatingPointError(
            f"{self.name}: the {what} is {value} at {where}; stopped without saving ({self.checkpoints.kept(unit)}). "
            f"{fix}"
        )

    def should_stop(self, step: int) -> bool:
        """Whether every process stops after `step` (this stage's count; the guard sees it after `step_offset`)."""
        return self.guard.should_stop(self.step_offset + step)

    def stop(self, where: str):
        """Waits for everything on disk, then raises `Preempted` naming `where` the stage stopped."""
        self.wait()
        raise self.guard.stopped(self.name, where)

    def __enter__(self) -> StageRun:
        self.guard.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.guard.__exit__(*exc)
        if exc[0] is None:
            self.wait()
            if self.log is not None:
                self.log.close()
