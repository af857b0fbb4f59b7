"""ORCA's refine stage: fine-tune embedder, body and head on the task, with jitted steps over the device mesh.

- Steps are pure functions of pytrees (the model split once into parameters), jitted with explicit shardings:
  parameters and optimizer state replicated over the mesh, each batch sharded over its data axes. The batch has a
  fixed shape: the last, partial batch of an epoch is padded and masked, so one program serves the whole run and
  the loss of the padded batch is exact.
- The optimizer is the official update rule (`finetune.make_finetune_optimizer`): per-micro-batch warm-up and decay,
  summed accumulation, clipping, fine-tune modes as masks.
- Model selection is on the validation split carved from the training data; the test split is evaluated once, with
  the parameters of the best validation epoch. Metrics are computed over whole splits.
- Nothing is lost on a crash: Orbax checkpoints (parameters, optimizer state, position in the run) every
  `checkpoint_every` epochs and on SIGTERM (then the run exits); a restarted run resumes from the latest one and
  ends where an uninterrupted run ends, because shuffling and dropout keys depend only on (seed, epoch, step).
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

from orca_jax.data.tasks import Split, Task
from orca_jax.parallel import batch_from_process_rows, process_rows, replicated
from orca_jax.train.finetune import make_finetune_optimizer
from orca_jax.train.losses import get_loss
from orca_jax.train.metrics import TASK_KINDS, MetricAccumulator
from orca_jax.train.run_log import RunLog

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RefineResult:
    best_epoch: int
    best_val: float
    test: float
    metric: str
    history: list[dict]
    seconds: float


def padded_batches(split: Split, batch_size: int, order: np.ndarray, rows: slice = slice(None)):
    """(x, y, mask) of global batches of exactly `batch_size` in `order` (the last padded with its first example),
    of which only `rows` are loaded: each process reads just its share of every batch."""
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        real = len(index)
        index = np.concatenate([index, np.full(batch_size - real, index[0])])[rows]
        yield split.x[index], split.y[index], (np.arange(batch_size) < real).astype(np.float32)[rows]


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


def make_steps(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, loss_fn, mesh: Mesh):
    rep = replicated(mesh)

    def train_step(params, opt_state, x, y, mask, key):
        def loss_of(params):
            model = nnx.merge(graphdef, params)
            return loss_fn(model(x, rngs=nnx.Rngs(dropout=key)), y, mask)

        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def eval_step(params, x):
        return nnx.merge(graphdef, params)(x)

    train = jax.jit(train_step, donate_argnums=(0, 1), out_shardings=(rep, rep, rep))
    return train, jax.jit(eval_step)


def evaluate(eval_step, params, split: Split, batch_size: int, metric: str, mesh: Mesh) -> float:
    accumulator = MetricAccumulator(metric)
    rows = process_rows(batch_size)
    for x, y, mask in padded_batches(split, batch_size, np.arange(len(split))):
        # Every process feeds its rows and receives all outputs: whole-split metrics need every example.
        outputs = process_allgather(eval_step(params, batch_from_process_rows(x[rows], mesh)), tiled=True)
        accumulator.update(np.asarray(outputs, np.float32), y, mask)
    return accumulator.result()


def run_refine(model: nnx.Module, task: Task, config, *, mesh: Mesh, workdir: Path) -> RefineResult:
    """Fine-tunes `model` in place (ending with its best-validation parameters) and evaluates it on the test split.

    Writes `refine_metrics.jsonl` and TensorBoard scalars (one record per epoch), `refine/` (resumable
    checkpoints) and `refine_best/`.
    """
    workdir = Path(workdir)
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size, seed, refine = config.batch_size, config.seed, config.refine
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % devices:
            raise ValueError(f"{name}={config[name]} does not divide over the mesh's {devices} data-parallel devices.")
    kind = TASK_KINDS[task.kind]
    loss_fn = get_loss(kind.loss)
    steps_per_epoch = math.ceil(len(task.train) / batch_size)
    optimizer = make_finetune_optimizer(config.optimizer, refine, steps_per_epoch)
    graphdef, params = nnx.split(model, nnx.Param)
    rep = replicated(mesh)
    params = jax.device_put(jax.tree.map(jnp.copy, params), rep)  # the step donates its inputs: train on copies
    opt_state = jax.jit(optimizer.init, out_shardings=rep)(params)
    train_step, eval_step = make_steps(graphdef, optimizer, loss_fn, mesh)

    manager = ocp.CheckpointManager(
        (workdir / "refine").absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    )
    best_dir = (workdir / "refine_best").absolute()
    # Where the run is, and what a restart needs to continue it exactly (including a part-done epoch's losses).
    position = {"epoch": 0, "step": 0, "losses": [], "history": [], "best_epoch": 0, "best_val": None}
    if manager.latest_step() is not None:
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": opt_state})
        restored = manager.restore(
            manager.latest_step(),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), position=ocp.args.JsonRestore()),
        )
        params, opt_state, position = restored.state["params"], restored.state["opt_state"], restored.position
        log.info("refine: resuming at epoch %d, step %d", position["epoch"] + 1, position["step"])

    def save(epoch: int, step: int, losses: list[float]) -> None:
        position.update(epoch=epoch, step=step, losses=losses)
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
    sign = 1.0 if kind.higher_is_better else -1.0
    with _Preemption() as preemption:
        for epoch in range(position["epoch"], refine.epochs):
            order = np.random.default_rng([seed, epoch]).permutation(len(task.train))  # the same on every process
            resuming = epoch == position["epoch"]
            first = position["step"] if resuming else 0
            losses = list(position["losses"]) if resuming else []
            batches = padded_batches(task.train, batch_size, order, process_rows(batch_size))
            bar = tqdm(enumerate(batches), total=steps_per_epoch, initial=first,
                       desc=f"refine {epoch + 1}/{refine.epochs}", unit="step", leave=False)
            for step, (x, y, mask) in bar:
                if step < first:
                    continue
                params, opt_state, loss = train_step(
                    params, opt_state, *(batch_from_process_rows(a, mesh) for a in (x, y, mask)),
                    jax.random.fold_in(key, epoch * steps_per_epoch + step),
                )
                losses.append(float(loss))
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
                if preemption.requested:
                    save(epoch, step + 1, losses)
                    manager.wait_until_finished()
                    raise SystemExit(f"refine stopped by SIGTERM at epoch {epoch + 1}, step {step + 1}; rerun to resume")
            val = evaluate(eval_step, params, task.val, config.eval_batch_size, kind.metric, mesh)
            record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                      f"val_{kind.metric}": val, "seconds": time.perf_counter() - t0}
            position["history"].append(record)
            run_log.write(position["history"])
            if position["best_val"] is None or sign * val > sign * position["best_val"]:
                position.update(best_epoch=epoch + 1, best_val=val)
                checkpointer = ocp.StandardCheckpointer()
                checkpointer.save(best_dir, params, force=True)
                checkpointer.wait_until_finished()
            log.info("refine epoch %d: %s", epoch + 1, record)
            if (epoch + 1) % refine.checkpoint_every == 0 or epoch + 1 == refine.epochs:
                save(epoch + 1, 0, [])
    manager.wait_until_finished()
    run_log.close()
    seconds = time.perf_counter() - t0
    best = ocp.StandardCheckpointer().restore(best_dir, jax.tree.map(ocp.utils.to_shape_dtype_struct, params))
    nnx.update(model, best)
    test = evaluate(eval_step, best, task.test, config.eval_batch_size, kind.metric, mesh)
    return RefineResult(position["best_epoch"], position["best_val"], test, kind.metric, position["history"], seconds)
