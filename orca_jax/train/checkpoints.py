"""Resumable checkpoints of a training stage, shared by the align and refine stages.

A stage saves a pytree of (sharded) arrays and a JSON-able position (where the run is, its history, the input
iterator's state) under one step number, in `workdir/<stage>/` through an Orbax `CheckpointManager`. Orbax writes
collectively: every process calls `save` and `restore`, each handling its own shards, and paths go through
`etils.epath`, so a `gs://` workdir works as a local one does.

Restoring takes the newest checkpoint that restores. A damaged one (a truncated file, a disk error, a half-copied
directory) is skipped with a warning naming its step, and the next older one is tried: the run loses the epochs
since that one, not the workdir. The damaged ones are then moved aside to `damaged-<step>` (kept for inspection,
and out of the way of the step numbers the resumed run saves again). Only when none restores does the stage fail,
naming the directory and the fix.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from orca_jax.parallel import is_main_process

log = logging.getLogger(__name__)


def abstract(tree):
    """Shapes, dtypes and shardings of `tree`, as Orbax restores into them."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class _CheckpointManager(ocp.CheckpointManager):
    """Orbax's manager without its own preemption checks, which would break `PreemptionGuard`'s.

    JAX's preemption sync point is one call counter per process: each `reached_preemption_sync_point(step)` call
    sets it, and on a notice the agreed stop is the largest counter any process last passed, plus one. Orbax calls
    it too, with checkpoint step numbers and from its background threads, so the counter jumps between two
    sequences; when the agreement catches Orbax's lower number, the stop step is one the training loop has already
    passed and SIGTERM goes unheeded (seen once in a two-process run). The guard must be the only caller. Orbax
    uses the answer for a log line, a metric and `should_save`, none of which a stage relies on: stages save
    explicitly at the guard's stop.
    """

    def reached_preemption(self, step: int) -> bool:
        return False


@functools.cache
def _write_replicated_arrays_whole() -> None:
    """On one process, or on CPU devices, Orbax's writer is told not to split arrays among their replicas.

    Replica-parallel writing (Orbax's default on CPU and TPU) slices each replicated array on the devices, so that
    every replica writes a part. That spreads the writing over hosts. On one process all the parts are written
    by the same process anyway, and every slice is an eager `slice` that is compiled once per array shape, which
    made a tiny model's saves block several times longer (docs/results.md, "Per-epoch bookkeeping"). Several CPU
    processes are a test set-up on one
    machine, where the slicing costs the same. Accelerator pods with several processes keep Orbax's default.
    Orbax keeps one handler registry per process, so this is set there. It is set when a stage first saves, once
    `jax.distributed` has set the process count (which does not change after), and only once. The new handler keeps
    the default one's array-metadata store, which Orbax exposes only as an attribute.
    """
    if jax.process_count() > 1 and jax.default_backend() != "cpu":
        return
    default = ocp.type_handlers.get_type_handler(jax.Array)
    handler = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False, array_metadata_store=getattr(default, "_array_metadata_store", None)
    )
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class StageCheckpoints:
    def __init__(self, directory: epath.PathLike, *, max_to_keep: int = 2):
        _write_replicated_arrays_whole()
        self.directory = epath.Path(directory)
        self.manager = _CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def kept(self, unit: str) -> str:
        """What a stop that saves nothing leaves behind, for its message (`unit`: "step" or "epoch")."""
        last = self.latest_step()
        return "no checkpoint was saved yet" if last is None else f"the last good checkpoint, {unit} {last}, is kept"

    def restore(self, state_like) -> tuple[int, Any, dict] | None:
        """(step, state, position) of the newest checkpoint that restores into `state_like`'s structure, shapes and
        shardings; None when there is none."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        damaged = []
        for step in steps:
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract(state_like)), position=ocp.args.JsonRestore()
                    ),
                )
            except Exception as error:  # Orbax and TensorStore raise many types for damaged files
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                log.warning("checkpoint %s/%d does not restore (%s: %s); trying the previous one", self.directory,
                            step, type(error).__name__, first_line[:300])
                damaged.append(step)
                continue
            if damaged:
                log.warning("resuming from %s/%d; the damaged checkpoints %s are moved to damaged-<step>",
                            self.directory, step, damaged)
                self._move_aside(damaged)
            return step, restored.state, restored.position
        if steps:
            raise RuntimeError(
                f"None of the checkpoints {steps} in {self.directory} restores (see the warnings above). Rerun with "
                "--restart to start this workdir over, or restore the directory from a backup."
            )
        return None

    def _move_aside(self, steps: list[int]) -> None:
        if is_main_process():
            for step in steps:
                target = self.directory / f"damaged-{step}"
                if target.exists():
                    target.rmtree()
                (self.directory / str(step)).rename(target)
        multihost_utils.sync_global_devices("orca_jax damaged checkpoints moved")
        self.manager.reload()

    def save(self, step: int, state, position: dict) -> None:
        """Saves in the background (the arrays are copied off the devices first, so the caller may donate them)."""
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), position=ocp.args.JsonSave(position)),
            force=True,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


class TreeWriter:
    """Writes a single pytree (the best parameters, the aligned embedder) to `path`, replacing it whole, collectively
    and in the background: `save` returns once the arrays are copied off the devices (they may then be donated), the
    files are written while training goes on, and `wait` (or the next `save`) blocks until they are on disk."""

    def __init__(self, path: epath.PathLike):
        _write_replicated_arrays_whole()
        self.path, self.checkpointer = epath.Path(path), ocp.StandardCheckpointer()

    def save(self, tree) -> None:
        self.checkpointer.wait_until_finished()
        self.checkpointer.save(self.path, tree, force=True)

    def wait(self) -> None:
        self.checkpointer.wait_until_finished()


def save_tree(path: epath.PathLike, tree) -> None:
    """`TreeWriter(path).save(tree)`, returning once it is on disk."""
    writer = TreeWriter(path)
    writer.save(tree)
    writer.wait()


def load_tree(path: epath.PathLike, tree_like):
    """`tree_like`'s structure restored from `save_tree`'s `path`; None when it is missing or does not restore
    (with a warning naming the path and the error)."""
    path = epath.Path(path)
    if not path.exists():
        return None
    try:
        return ocp.StandardCheckpointer().restore(path, abstract(tree_like))
    except Exception as error:  # Orbax and TensorStore raise many types for damaged files
        log.warning("%s does not restore (%s: %s)", path, type(error).__name__, str(error).strip()[:300])
        return None
