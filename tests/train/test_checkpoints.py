"""Stage checkpoints and preemption: JAX's sync point is one call counter per process, so the guard must be its only
caller (see `orca_jax.train.checkpoints._CheckpointManager`)."""

import jax.numpy as jnp
from jax.experimental import multihost_utils

from orca_jax.train.checkpoints import StageCheckpoints


def test_saving_and_restoring_never_touch_the_preemption_sync_counter(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: calls.append(step) or False)
    checkpoints = StageCheckpoints(tmp_path / "stage")
    state = {"w": jnp.arange(4.0)}
    for step in (1, 2, 3):
        checkpoints.save(step, state, {"epoch": step})
    checkpoints.wait()
    step, restored, position = checkpoints.restore(state)
    assert (step, position["epoch"]) == (3, 3) and jnp.array_equal(restored["w"], state["w"])
    assert calls == []
