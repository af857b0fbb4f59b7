"""ORCA's refine stage: fine-tune embedder, body and head on the task, with jitted steps over the device mesh.

- Steps are pure functions of pytrees (the model split once into trainable and frozen parameters; only the
  trainable ones are differentiated), jitted with explicit shardings: parameters and optimizer state laid out by the
  config's partition rules (`orca_jax.parallel.sharding`: replicated, or split over the `fsdp` axis), each batch
  sharded over all devices. Batches come from grain (`orca_jax.data.loader`) with a fixed shape: the last, partial
  batch of an epoch, and any batch that does not divide over the devices, is padded and masked, so one program
  serves the whole run and the loss is exactly that of the real examples.
- The loss, the outputs' shape and units, and the metric are the task's (`task_loss.TaskLoss`).
- The optimizer is the official update rule (`optimizers.refine_optimizer`): per-micro-batch warm-up and decay,
  summed accumulation, clipping; the fine-tune mode's path rules (`finetune`) decide which parameters it sees.
- Model selection is on the validation split carved from the training data (`refine.select="best"`), or the last
  epoch (`"last"`, for validation splits too small to select on: below `SMALL_VALIDATION` examples the run says so in
  the log and the summary); the test split is evaluated once. Metrics are computed over whole splits.
- Nothing is lost on a crash: Orbax checkpoints (trainable parameters, optimizer state, the position in the run and
  the input iterator's state) every `checkpoint_every` epochs and on SIGTERM to any process (every process stops at
  the same step, then exits with status `PREEMPTED_EXIT_CODE`) or a Ctrl-C (`INTERRUPTED_EXIT_CODE`); a
  restarted run resumes from the newest checkpoint that restores and ends where an uninterrupted run ends, because
  shuffling, augmentation and dropout depend only on (seed, epoch, step). A non-finite training loss stops the run at
  once, naming the epoch and step, with the last good checkpoint kept.
- A search stops poor runs early: `on_epoch(epoch, val)` (an `EpochHook`) sees each epoch's validation metric once
  the epoch is checkpointed, and a reason it returns ends the stage there, recorded in `RefineResult.stopped`; a
  search also skips the test split (`test=False`), which it must not select on.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental.multihost_utils import process_allgather
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from orca_jax.data.loader import Batches, iterate
from orca_jax.data.types import Split, Task
from orca_jax.parallel import (
    PreemptionGuard,
    batch_from_process_rows,
    init_optimizer,
    is_main_process,
    param_shardings,
    place,
    process_rows,
    replicated,
)
from orca_jax.train.checkpoints import TreeWriter, load_tree
from orca_jax.train.finetune import trainable
from orca_jax.train.metrics import MetricAccumulator
from orca_jax.train.task_loss import TaskLoss
from orca_jax.train.optimizers import refine_optimizer
from orca_jax.train.pare import PareSchedule, pare_loss, pare_schedule
from orca_jax.train.stage import StageRun
from orca_jax.workdir import write_file

log = logging.getLogger(__name__)

REFINE_SELECTIONS = ("best", "last")  # refine.select: test with the best validation epoch's parameters, or the last's
SMALL_VALIDATION = 50  # fewer validation examples than this: best-epoch selection on them is mostly noise
EpochHook = Callable[[int, float], "str | None"]  # (epoch from 1, validation metric) -> why to stop now, or None


@dataclasses.dataclass(frozen=True)
class RefineResult:
    best_epoch: int
    best_val: float
    test: float | None  # None: not evaluated (test=False)
    metric: str
    history: list[dict]
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)
    stopped: dict | None = None  # {"epoch", "reason"} when the epoch hook ended the stage early


def make_steps(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, task_loss: TaskLoss,
               mesh: Mesh, state_shardings, pare: PareSchedule | None = None):
    """(train_step, eval_step), jitted. Only `params` (the trainable parameters) are differentiated; `frozen` (the
    parameters the fine-tune mode freezes) enter as constants of the step. `train_step(params, frozen, opt_state, x,
    y, mask, meta, key, epoch=0)`; with `pare`, the loss is PaRe's (`orca_jax.train.pare`), whose count and phase
    the epoch sets (one program per phase)."""
    rep = replicated(mesh)

    def step(params, frozen, opt_state, x, y, mask, meta, key, k, source_x, source_y, *, soft):
        def loss_of(params):
            model = nnx.merge(graphdef, params, frozen)
            if pare is None:
                return task_loss.loss(model(x, rngs=nnx.Rngs(dropout=key)), y, mask, meta)
            return pare_loss(model, task_loss, x, y, mask, meta, key, k, source_x, source_y, soft=soft, tau=pare.tau)

        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    compiled = {soft: jax.jit(functools.partial(step, soft=soft), donate_argnums=(0, 2),
                              out_shardings=(*state_shardings, rep)) for soft in (False, True)}

    def train_step(params, frozen, opt_state, x, y, mask, meta, key, epoch: int = 0):
        if pare is None:
            return compiled[False](params, frozen, opt_state, x, y, mask, meta, key, 0, None, None)
        k, soft = pare.at(epoch)
        return compiled[soft](params, frozen, opt_state, x, y, mask, meta, key, jnp.asarray(k, jnp.int32),
                              pare.source_x, pare.source_y)

    def eval_step(params, frozen, x):
        return task_loss.outputs(nnx.merge(graphdef, params, frozen)(x))

    return train_step, jax.jit(eval_step)


def device_rows(batch_size: int, mesh: Mesh) -> int:
    """Rows of a global batch: `batch_size` rounded up to a multiple of the mesh's devices (the rest is padding)."""
    devices = mesh.devices.size
    return -(-batch_size // devices) * devices


def _all_rows(local) -> np.ndarray:
    """The whole global batch from every process's rows (a no-op on one process)."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return np.asarray(process_allgather(local, tiled=True))


def evaluation_batch(examples: int, batch_size: int) -> int:
    """Examples per evaluation batch: as few batches of at most `batch_size` as the split needs, filled evenly, so
    that the last one is not mostly padding (400 examples at 256: two batches of 200, not 512 rows)."""
    return -(-examples // -(-examples // batch_size))


def evaluation_batches(val: int, test: int, batch_size: int) -> tuple[int, int]:
    """Batch sizes for the validation split (evaluated every epoch) and the test split (once). The test split
    reuses the validation size when that is at least half its own, so that one compiled evaluation step serves
    both; a much smaller validation split would cut the test split into needlessly small batches."""
    val_batch, test_batch = evaluation_batch(val, batch_size), evaluation_batch(test, batch_size)
    return val_batch, val_batch if 2 * val_batch >= test_batch else test_batch


def evaluate(eval_step, params, frozen, split: Split, batch_size: int, metric: str, mesh: Mesh,
             data) -> MetricAccumulator:
    """The split's outputs and targets, from which `.result()` computes the metric over the whole split: each
    process feeds its rows of every batch, and every process collects all outputs and targets."""
    accumulator = MetricAccumulator(metric)
    rows = device_rows(batch_size, mesh)
    batches = Batches(split, batch_size, rows=process_rows(rows), rows_per_batch=rows)
    for batch in iterate(batches, threads=data.threads, prefetch=data.prefetch):
        outputs = eval_step(params, frozen, batch_from_process_rows(batch["x"], mesh))
        meta = {name: _all_rows(values) for name, values in batch["meta"].items()}
        accumulator.update(_all_rows(outputs).astype(np.float32), _all_rows(batch["y"]), _all_rows(batch["mask"]),
                           **meta)
    return accumulator


def run_refine(
    model: nnx.Module, task: Task, task_loss: TaskLoss, config, *, mesh: Mesh, workdir: epath.PathLike,
    preemption: PreemptionGuard | None = None, step_offset: int = 0, on_epoch: EpochHook | None = None,
    test: bool = True,
) -> RefineResult:
    """Fine-tunes `model` in place (ending with the selected epoch's parameters) and evaluates it on the test split.

    Only the parameters the fine-tune mode trains are differentiated, updated and checkpointed; they and their
    optimizer state are laid out on the mesh by `config.mesh.rules` (`orca_jax.parallel.sharding`). `preemption`
    (default: a guard of its own) stops every process at one step after SIGTERM (or Ctrl-C); `step_offset` continues
    the step count of a stage that polled the same guard before (see `PreemptionGuard`). Writes
    `refine_metrics.jsonl` and TensorBoard scalars (one record per epoch), `refine/` (resumable checkpoints),
    `test_outputs.npz` (the test split's outputs and targets, unless `test=False`) and, when selecting the best
    epoch, `refine_best/`. `on_epoch`: see the module docstring.
    """
    workdir = epath.Path(workdir)
    batch_size, seed, refine = config.batch_size, config.seed, config.refine
    rows = device_rows(batch_size, mesh)
    notes = []
    if rows > batch_size:
        log.info("refine: batch_size=%d runs as %d rows, one or more per device; %d are masked padding", batch_size,
                 rows, rows - batch_size)
    if len(task.val) < SMALL_VALIDATION:
        notes.append(
            f"the validation split has {len(task.val)} examples (< {SMALL_VALIDATION}): selecting the best epoch on "
            "it is mostly noise; consider refine.select=last or a larger task.val_fraction"
        )
        log.warning("refine: %s", notes[-1])
    batches = Batches(task.train, batch_size, epochs=refine.epochs, seed=seed, rows=process_rows(rows),
                      transform=task.train_transform, rows_per_batch=rows)
    steps_per_epoch = batches.steps_per_epoch
    optimizer = refine_optimizer(config.optimizer, refine, steps_per_epoch)
    graphdef, params, frozen = nnx.split(model, trainable(refine.finetune_method), ...)
    shardings = param_shardings(params, mesh, config.mesh.rules, min_shard_bytes=config.mesh.min_shard_bytes)
    frozen_shardings = param_shardings(frozen, mesh, config.mesh.rules, min_shard_bytes=config.mesh.min_shard_bytes)
    params, frozen = place(params, shardings), place(frozen, frozen_shardings)  # copies: the step donates params
    opt_state, opt_shardings = init_optimizer(optimizer, params, shardings)
    pare = pare_schedule(config, model, mesh) if refine.pare.enabled else None
    train_step, eval_step = make_steps(graphdef, optimizer, task_loss, mesh, (shardings, opt_shardings), pare)
    val_batch, test_batch = evaluation_batches(len(task.val), len(task.test), config.eval_batch_size)

    best_dir = workdir / "refine_best"
    best_writer = TreeWriter(best_dir)
    run = StageRun("refine", workdir, preemption=preemption, step_offset=step_offset, writers=(best_writer,))
    # Where the run is, and what a restart needs to continue it exactly (a part-done epoch's losses, the input
    # iterator's state).
    restored_step, state, position = run.restore(
        {"params": params, "opt_state": opt_state},
        {"epoch": 0, "step": 0, "losses": [], "history": [], "best_epoch": 0, "best_val": None, "data": None,
         "seconds": 0.0},
    )
    params, opt_state = state["params"], state["opt_state"]
    if restored_step:
        log.info("refine: resuming at epoch %d, step %d", position["epoch"] + 1, position["step"])

    def save(epoch: int, step: int, losses: list[float], data_state: dict) -> None:
        position.update(epoch=epoch, step=step, losses=losses, data=data_state)
        run.save(epoch * steps_per_epoch + step, {"params": params, "opt_state": opt_state}, position)

    key = jax.random.key(seed)
    sign = 1.0 if task_loss.higher_is_better else -1.0
    data = config.data
    inputs = iterate(batches, state=position["data"], threads=data.threads, prefetch=data.prefetch,
                     workers=data.workers)
    stopped = None
    with run:
        for epoch in range(position["epoch"], refine.epochs):
            resuming = epoch == position["epoch"]
            first = position["step"] if resuming else 0
            losses = list(position["losses"]) if resuming else []
            stopping = False
            epoch_start = time.perf_counter()
            bar = tqdm(range(first, steps_per_epoch), total=steps_per_epoch, initial=first,
                       desc=f"refine {epoch + 1}/{refine.epochs}", unit="step", leave=False,
                       disable=not is_main_process())
            for step in bar:
                batch = next(inputs)
                global_step = epoch * steps_per_epoch + step
                meta = {name: batch_from_process_rows(batch["meta"][name], mesh) for name in task_loss.loss_meta}
                params, opt_state, loss = train_step(
                    params, frozen, opt_state, *(batch_from_process_rows(batch[k], mesh) for k in ("x", "y", "mask")),
                    meta, jax.random.fold_in(key, global_step), epoch,
                )
                losses.append(float(loss))
                run.check_finite(losses[-1], "training loss", f"epoch {epoch + 1}, step {step + 1}", "step",
                                 "Lower optimizer.learning_rate, set refine.clip, or check the inputs and targets.")
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
                if run.should_stop(global_step):
                    if step + 1 < steps_per_epoch:
                        save(epoch, step + 1, losses, inputs.get_state())
                        run.stop(f"at epoch {epoch + 1}, step {step + 1}")
                    stopping = True  # on an epoch's last step the epoch finishes: its checkpoint is the stop's
            steps_end = time.perf_counter()
            val = evaluate(eval_step, params, frozen, task.val, val_batch, task_loss.metric, mesh, data).result()
            # seconds: the stage's, over its attempts; step_seconds: this epoch's training steps, the rest being
            # evaluation and bookkeeping.
            record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                      f"val_{task_loss.metric}": val, "seconds": run.seconds,
                      "step_seconds": steps_end - epoch_start}
            position["history"].append(record)
            run.log.write(position["history"])
            if position["best_val"] is None or sign * val > sign * position["best_val"]:
                position.update(best_epoch=epoch + 1, best_val=val)
                if refine.select == "best":
                    best_writer.save(params)
            log.info("refine epoch %d: %s", epoch + 1, record)
            last = epoch + 1 == refine.epochs
            reason = on_epoch(epoch + 1, val) if on_epoch is not None else None
            if (epoch + 1) % refine.checkpoint_every == 0 or last or stopping or reason:
                save(epoch + 1, 0, [], inputs.get_state())
            if reason:
                stopped = {"epoch": epoch + 1, "reason": reason}
                log.info("refine: stopped after epoch %d: %s", epoch + 1, reason)
                break
            if stopping and not last:
                run.stop(f"at the end of epoch {epoch + 1}")
    seconds = run.seconds
    if refine.select == "best":
        best = load_tree(best_dir, params)
        if best is None:
            notes.append(f"{best_dir} is missing or damaged: the test split was evaluated with the last epoch's "
                         f"parameters, not the best epoch's ({position['best_epoch']})")
            log.warning("refine: %s", notes[-1])
        else:
            params = best
    nnx.update(model, params)
    if not test:
        return RefineResult(position["best_epoch"], position["best_val"], None, task_loss.metric,
                            position["history"], seconds, notes, stopped)
    outputs = evaluate(eval_step, params, frozen, task.test, test_batch, task_loss.metric, mesh, data)
    # The test split's outputs (in the targets' units) next to its targets, for analysis beyond the one metric.
    test_outputs, test_targets, test_meta = outputs.arrays()
    buffer = io.BytesIO()
    np.savez(buffer, outputs=test_outputs, targets=test_targets,
             **{f"meta_{name}": values for name, values in test_meta.items()})
    write_file(workdir / "test_outputs.npz", buffer.getvalue())
    return RefineResult(position["best_epoch"], position["best_val"], outputs.result(), task_loss.metric,
                        position["history"], seconds, notes, stopped)
