"""Stage checkpoints and preemption: JAX's sync point is one call counter per process, so the guard must be its only
caller (see `orca_jax.train.checkpoints._CheckpointManager`); on one process or on CPU devices, replicated arrays are
written whole."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from orca_jax.parallel import make_mesh
from orca_jax.train.checkpoints import StageCheckpoints, TreeWriter, load_tree


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


def test_replicated_arrays_are_written_without_slicing_them_on_the_devices(tmp_path, monkeypatch):
    """Orbax's replica-parallel writing slices each replicated array on the devices (an eager `slice`, compiled once
    per shape: seconds of a small run's first saves); one process writes every replica's part anyway."""
    slices = []
    original = jax.lax.slice_in_dim
    monkeypatch.setattr(jax.lax, "slice_in_dim", lambda *a, **k: slices.append(a[0].shape) or original(*a, **k))
    replicated = NamedSharding(make_mesh(), PartitionSpec())
    state = {"w": jax.device_put(jnp.arange(64.0).reshape(16, 4), replicated), "b": jax.device_put(jnp.ones(8),
                                                                                                 replicated)}
    checkpoints = StageCheckpoints(tmp_path / "stage")
    checkpoints.save(1, state, {"epoch": 1})
    checkpoints.wait()
    writer = TreeWriter(tmp_path / "best")
    writer.save(state)
    writer.wait()
    assert slices == []
    for restored in (checkpoints.restore(state)[1], load_tree(tmp_path / "best", state)):
        for name in state:
            np.testing.assert_array_equal(restored[name], state[name])
