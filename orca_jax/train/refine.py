"""ORCA's refine stage: fine-tune embedder, body and head on the task, with jitted steps over the device mesh.

- Steps are pure functions of pytrees (the model split once into parameters), jitted with explicit shardings:
  parameters and optimizer state replicated over the mesh, each batch sharded over its data axes. Batches come from
  grain (`orca_jax.data.loader`) with a fixed shape: the last, partial batch of an epoch is padded and masked, so one
  program serves the whole run and the loss of the padded batch is exact.
- The loss, the outputs' shape and units, and the metric are the task's (`objective.TaskObjective`).
- The optimizer is the official update rule (`finetune.make_finetune_optimizer`): per-micro-batch warm-up and decay,
  summed accumulation, clipping, fine-tune modes as masks.
- Model selection is on the validation split carved from the training data (`refine.select="best"`), or the last
  epoch (`"last"`, for validation splits too small to select on: below `SMALL_VALIDATION` examples the run says so in
  the log and the summary); the test split is evaluated once. Metrics are computed over whole splits.
- Nothing is lost on a crash: Orbax checkpoints (parameters, optimizer state, the position in the run and the input
  iterator's state) every `checkpoint_every` epochs and on SIGTERM (then the run exits with status
  `PREEMPTED_EXIT_CODE`); a restarted run resumes from the latest one and ends where an uninterrupted run ends,
  because shuffling, augmentation and dropout depend only on (seed, epoch, step). A non-finite training loss stops
  the run at once, naming the epoch and step, with the last good checkpoint kept.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.experimental.multihost_utils import process_allgather
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from orca_jax.data.loader import Batches, iterate
from orca_jax.data.tasks import Split, Task
from orca_jax.parallel import batch_from_process_rows, process_rows, replicated
from orca_jax.train.finetune import make_finetune_optimizer
from orca_jax.train.metrics import MetricAccumulator
from orca_jax.train.objective import TaskObjective
from orca_jax.train.run_log import RunLog

log = logging.getLogger(__name__)

SMALL_VALIDATION = 50  # fewer validation examples than this: best-epoch selection on them is mostly noise
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving; rerun the same command to resume


@dataclasses.dataclass(frozen=True)
class RefineResult:
    best_epoch: int
    best_val: float
    test: float
    metric: str
    history: list[dict]
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)


class Preempted(SystemExit):
    """The run saved a checkpoint after SIGTERM and stopped; the process exits with `PREEMPTED_EXIT_CODE`."""

    def __init__(self, message: str):
        log.warning("%s", message)
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step (then it checkpoints and exits cleanly)."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.previous)


def make_steps(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, objective: TaskObjective,
               mesh: Mesh):
    rep = replicated(mesh)

    def train_step(params, opt_state, x, y, mask, key):
        def loss_of(params):
            model = nnx.merge(graphdef, params)
            return objective.loss(model(x, rngs=nnx.Rngs(dropout=key)), y, mask)

        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def eval_step(params, x):
        return objective.outputs(nnx.merge(graphdef, params)(x))

    train = jax.jit(train_step, donate_argnums=(0, 1), out_shardings=(rep, rep, rep))
    return train, jax.jit(eval_step)


def _all_rows(local) -> np.ndarray:
    """The whole global batch from every process's rows (a no-op on one process)."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return np.asarray(process_allgather(local, tiled=True))


def evaluate(eval_step, params, split: Split, batch_size: int, metric: str, mesh: Mesh, data) -> MetricAccumulator:
    """The split's outputs and targets, from which `.result()` computes the metric over the whole split: each
    process feeds its rows of every batch, and every process collects all outputs and targets."""
    accumulator = MetricAccumulator(metric)
    batches = Batches(split, batch_size, rows=process_rows(batch_size))
    for batch in iterate(batches, threads=data.threads, prefetch=data.prefetch):
        outputs = eval_step(params, batch_from_process_rows(batch["x"], mesh))
        meta = {name: _all_rows(values) for name, values in batch["meta"].items()}
        accumulator.update(_all_rows(outputs).astype(np.float32), _all_rows(batch["y"]), _all_rows(batch["mask"]),
                           **meta)
    return accumulator


def run_refine(
    model: nnx.Module, task: Task, objective: TaskObjective, config, *, mesh: Mesh, workdir: Path
) -> RefineResult:
    """Fine-tunes `model` in place (ending with the selected epoch's parameters) and evaluates it on the test split.

    Writes `refine_metrics.jsonl` and TensorBoard scalars (one record per epoch), `refine/` (resumable
    checkpoints), `test_outputs.npz` (the test split's outputs and targets) and, when selecting the best epoch,
    `refine_best/`.
    """
    workdir = Path(workdir)
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size, seed, refine = config.batch_size, config.seed, config.refine
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % devices:
            raise ValueError(f"{name}={config[name]} does not divide over the mesh's {devices} data-parallel devices.")
    notes = []
    if len(task.val) < SMALL_VALIDATION:
        notes.append(
            f"the validation split has {len(task.val)} examples (< {SMALL_VALIDATION}): selecting the best epoch on "
            "it is mostly noise; consider refine.select=last or a larger task.val_fraction"
        )
        log.warning("refine: %s", notes[-1])
    batches = Batches(task.train, batch_size, epochs=refine.epochs, seed=seed, rows=process_rows(batch_size),
                      transform=task.train_transform)
    steps_per_epoch = batches.steps_per_epoch
    optimizer = make_finetune_optimizer(config.optimizer, refine, steps_per_epoch)
    graphdef, params = nnx.split(model, nnx.Param)
    rep = replicated(mesh)
    params = jax.device_put(jax.tree.map(jnp.copy, params), rep)  # the step donates its inputs: train on copies
    opt_state = jax.jit(optimizer.init, out_shardings=rep)(params)
    train_step, eval_step = make_steps(graphdef, optimizer, objective, mesh)

    manager = ocp.CheckpointManager(
        (workdir / "refine").absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    )
    best_dir = (workdir / "refine_best").absolute()
    # Where the run is, and what a restart needs to continue it exactly (a part-done epoch's losses, the input
    # iterator's state).
    position = {"epoch": 0, "step": 0, "losses": [], "history": [], "best_epoch": 0, "best_val": None, "data": None}
    if manager.latest_step() is not None:
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": opt_state})
        restored = manager.restore(
            manager.latest_step(),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), position=ocp.args.JsonRestore()),
        )
        params, opt_state, position = restored.state["params"], restored.state["opt_state"], restored.position
        log.info("refine: resuming at epoch %d, step %d", position["epoch"] + 1, position["step"])

    def save(epoch: int, step: int, losses: list[float], data_state: dict) -> None:
        position.update(epoch=epoch, step=step, losses=losses, data=data_state)
        manager.save(
            epoch * steps_per_epoch + step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
                position=ocp.args.JsonSave(position),
            ),
            force=True,
        )

    key = jax.random.key(seed)
    run_log = RunLog(workdir, "refine")
    t0 = time.perf_counter()
    sign = 1.0 if objective.higher_is_better else -1.0
    data = config.data
    inputs = iterate(batches, state=position["data"], threads=data.threads, prefetch=data.prefetch,
                     workers=data.workers)
    with _Preemption() as preemption:
        for epoch in range(position["epoch"], refine.epochs):
            resuming = epoch == position["epoch"]
            first = position["step"] if resuming else 0
            losses = list(position["losses"]) if resuming else []
            bar = tqdm(range(first, steps_per_epoch), total=steps_per_epoch, initial=first,
                       desc=f"refine {epoch + 1}/{refine.epochs}", unit="step", leave=False)
            for step in bar:
                batch = next(inputs)
                params, opt_state, loss = train_step(
                    params, opt_state, *(batch_from_process_rows(batch[k], mesh) for k in ("x", "y", "mask")),
                    jax.random.fold_in(key, epoch * steps_per_epoch + step),
                )
                losses.append(float(loss))
                if not np.isfinite(losses[-1]):
                    manager.wait_until_finished()
                    raise FloatingPointError(
                        f"refine: the training loss is {losses[-1]} at epoch {epoch + 1}, step {step + 1}; stopped "
                        f"without saving (the last good checkpoint, step {manager.latest_step()}, is kept). Lower "
                        "optimizer.learning_rate, set refine.clip, or check the inputs and targets."
                    )
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
                # On the epoch's last step the epoch finishes first: its end-of-epoch checkpoint is the stop's.
                if preemption.requested and step + 1 < steps_per_epoch:
                    save(epoch, step + 1, losses, inputs.get_state())
                    manager.wait_until_finished()
                    raise Preempted(f"refine stopped by SIGTERM at epoch {epoch + 1}, step {step + 1}; rerun to resume")
            val = evaluate(eval_step, params, task.val, config.eval_batch_size, objective.metric, mesh, data).result()
            record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                      f"val_{objective.metric}": val, "seconds": time.perf_counter() - t0}
            position["history"].append(record)
            run_log.write(position["history"])
            if position["best_val"] is None or sign * val > sign * position["best_val"]:
                position.update(best_epoch=epoch + 1, best_val=val)
                if refine.select == "best":
                    checkpointer = ocp.StandardCheckpointer()
                    checkpointer.save(best_dir, params, force=True)
                    checkpointer.wait_until_finished()
            log.info("refine epoch %d: %s", epoch + 1, record)
            last = epoch + 1 == refine.epochs
            if (epoch + 1) % refine.checkpoint_every == 0 or last or preemption.requested:
                save(epoch + 1, 0, [], inputs.get_state())
            if preemption.requested and not last:
                manager.wait_until_finished()
                raise Preempted(f"refine stopped by SIGTERM at the end of epoch {epoch + 1}; rerun to resume")
    manager.wait_until_finished()
    run_log.close()
    seconds = time.perf_counter() - t0
    if refine.select == "best":
        params = ocp.StandardCheckpointer().restore(best_dir, jax.tree.map(ocp.utils.to_shape_dtype_struct, params))
    nnx.update(model, params)
    outputs = evaluate(eval_step, params, task.test, config.eval_batch_size, objective.metric, mesh, data)
    test = outputs.result()
    # The test split's outputs (in the targets' units) next to its targets, for analysis beyond the one metric.
    if jax.process_index() == 0:
        test_outputs, test_targets, test_meta = outputs.arrays()
        np.savez(workdir / "test_outputs.npz", outputs=test_outputs, targets=test_targets,
                 **{f"meta_{name}": values for name, values in test_meta.items()})
    return RefineResult(position["best_epoch"], position["best_val"], test, objective.metric, position["history"],
                        seconds, notes)
