"""ORCA's align stage: train only the embedder so embedded target classes come close to the body's source features.

Official semantics (orca-reference.md (a) stage 3), kept:
- per epoch, every target class with at least two examples contributes a sample of its examples: the official
  loader collects batches until it holds *more than* `maxsamples`, i.e. min(class size,
  (maxsamples // batch_size + 1) * batch_size) examples, drawn without replacement;
- each class is embedded, mean-pooled over tokens and compared, as one label, with the whole labelled source set;
  the per-class distances are weighted by class frequency and summed, and the summed gradient makes ONE optimizer
  step per epoch (so `epochs` counts optimizer steps);
- the optimizer is the fine-tuning optimizer's family at 10x its learning rate, decayed 0.2x after epochs 20/40/60.
Changed on purpose: all classes go through one jitted step as a padded [classes, samples, ...] batch with a mask
(the official code loops over classes in Python); the distance before and after alignment is measured on one fixed
sample, so the two numbers are comparable.

Only the embedder trains: the model is split once into embedder parameters and the rest (`nnx.split` with a path
filter: a mask, not a copy), and only the embedder part is differentiated and updated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from orca_jax.data.loader import iterate
from orca_jax.ot import MMDLoss, OTDDLoss
from orca_jax.parallel import global_batch, replicated
from orca_jax.train.run_log import RunLog
from orca_jax.train.optimizers import align_learning_rate, make_optimizer, step_decay_schedule

log = logging.getLogger(__name__)

OBJECTIVES = ("otdd-exact", "otdd-gaussian", "mmd", "none")
EMBEDDER = nnx.All(nnx.Param, nnx.PathContains("embedder"))


@dataclasses.dataclass(frozen=True)
class ClassSampler:
    """Which examples each target class contributes to an align epoch, as a fixed-shape padded batch."""

    classes: np.ndarray  # class ids that take part (>= 2 examples)
    members: tuple[np.ndarray, ...]  # example indices of each class
    draw: np.ndarray  # examples drawn per class per epoch
    weights: np.ndarray  # class frequency n_c / N over the whole training set
    width: int  # padded samples per class: max(draw), rounded up to a multiple of the data-parallel devices

    @classmethod
    def build(cls, labels: np.ndarray, maxsamples: int, batch_size: int, multiple_of: int = 1) -> ClassSampler:
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(
                f"align needs one class id per example; got labels of shape {labels.shape}. For dense or "
                "multi-label targets, pass k-means pseudo-labels (orca_jax.ot.pseudo_labels)."
            )
        ids, counts = np.unique(labels, return_counts=True)
        keep = counts >= 2
        if not keep.any():
            raise ValueError("No target class has two or more examples; OTDD needs at least two per class.")
        if not keep.all():
            log.warning("align skips classes with a single example: %s", ids[~keep].tolist())
        members = tuple(np.flatnonzero(labels == c) for c in ids[keep])
        per_class = (maxsamples // batch_size + 1) * batch_size
        draw = np.minimum(counts[keep], per_class)
        width = int(-(-draw.max() // multiple_of) * multiple_of)
        return cls(ids[keep], members, draw, (counts[keep] / labels.size).astype(np.float32), width)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Example indices [classes, width] (padding repeats a real index) and the mask of real entries."""
        index = np.zeros((len(self.classes), self.width), np.int64)
        mask = np.zeros((len(self.classes), self.width), bool)
        for row, (members, n) in enumerate(zip(self.members, self.draw)):
            chosen = rng.choice(members, size=n, replace=False)
            index[row, :n], index[row, n:] = chosen, chosen[0]
            mask[row, :n] = True
        return index, mask


class ClassSamples:
    """Align epoch e's padded per-class sample as a random-access source for grain (`orca_jax.data.loader.iterate`):
    drawn with `[seed, e]`, so the input iterator's state (the next epoch) is all a resumed run needs."""

    def __init__(self, sampler: ClassSampler, x, epochs: int, seed: int):
        self.sampler, self.x, self.epochs, self.seed = sampler, x, epochs, seed

    def __len__(self) -> int:
        return self.epochs

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        index, mask = self.sampler.sample(rng)
        rows = np.asarray(self.x[index.reshape(-1)]).astype(np.float32, copy=False)
        return {"x": rows.reshape(*index.shape, *rows.shape[1:]), "mask": mask}

    def __getitem__(self, epoch: int) -> dict[str, np.ndarray]:
        if not 0 <= epoch < self.epochs:
            raise IndexError(f"align epoch {epoch} is outside [0, {self.epochs}).")
        return self.draw(np.random.default_rng([self.seed, int(epoch)]))


def build_objective(
    name: str, src_x: np.ndarray, src_y: np.ndarray, *, solver: str = "annealed", epsilon: float = 0.1
) -> OTDDLoss | MMDLoss | None:
    """The distance to the fixed source set, with everything that depends on the source alone computed once."""
    if name == "otdd-exact":
        return OTDDLoss.build(src_x, src_y, inner="exact", epsilon=epsilon, solver=solver)
    if name == "otdd-gaussian":
        return OTDDLoss.build(src_x, src_y, inner="gaussian", epsilon=epsilon, solver=solver)
    if name == "mmd":
        return MMDLoss.build(src_x)
    if name == "none":
        return None
    raise ValueError(f"align objective {name!r} is not one of {OBJECTIVES}.")


def objective_value(objective, features, mask, weights, key) -> jax.Array:
    if isinstance(objective, MMDLoss):
        return objective.value(features, mask, weights, key=key)
    return objective.value(features, mask, weights)


def make_align_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation) -> Callable:
    """One align epoch's update as a pure function: (embedder, rest, opt_state, objective, x, mask, weights, key)."""

    def distance(embedder, rest, objective, x, mask, weights, key):
        model = nnx.merge(graphdef, embedder, rest)
        classes, width = x.shape[:2]
        features = model.features(x.reshape(classes * width, *x.shape[2:]))
        return objective_value(objective, features.reshape(classes, width, -1), mask, weights, key)

    def step(embedder, rest, opt_state, objective, x, mask, weights, key):
        value, grads = jax.value_and_grad(distance)(embedder, rest, objective, x, mask, weights, key)
        updates, opt_state = optimizer.update(grads, opt_state, embedder)
        return optax.apply_updates(embedder, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 2)), jax.jit(distance)


@dataclasses.dataclass(frozen=True)
class AlignResult:
    distance_before: float
    distance_after: float
    history: list[dict]
    seconds: float


def run_align(
    model: nnx.Module,
    train_x: np.ndarray,
    train_labels: np.ndarray,
    source: tuple[np.ndarray, np.ndarray],
    config,
    optimizer_config,
    *,
    batch_size: int,
    mesh: Mesh,
    workdir: Path,
    seed: int = 0,
    data=None,
) -> AlignResult:
    """Aligns `model.embedder` in place, resuming from `workdir/align` if a previous run was interrupted.

    `config` is the config's `align` section, `optimizer_config` the fine-tuning optimizer (its family, and 10x its
    learning rate, are the embedder's) and `batch_size` the task's (it sets how many examples a class draws); `data`
    the config's input-pipeline section (threads, prefetch, workers; None: defaults). Writes
    `align_metrics.jsonl` and TensorBoard scalars as it goes, then `align_distance.png`, `align_summary.json` and the
    aligned embedder (`aligned_embedder/`) into `workdir`.
    """
    workdir = Path(workdir)
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    sampler = ClassSampler.build(train_labels, config.maxsamples, batch_size, multiple_of=devices)
    objective = build_objective(config.objective, *source, solver=config.solver, epsilon=config.epsilon)
    if objective is None:
        raise ValueError("align objective 'none' means no align stage: set align.epochs = 0 instead.")
    opt = optimizer_config
    schedule = step_decay_schedule(
        align_learning_rate(opt.learning_rate, config.lr_multiplier), config.milestones, config.gamma
    )
    optimizer = make_optimizer(
        opt.name, schedule, weight_decay=opt.weight_decay, momentum=opt.momentum, betas=(opt.b1, opt.b2), eps=opt.eps
    )
    graphdef, embedder, rest = nnx.split(model, EMBEDDER, ...)
    rep = replicated(mesh)
    # The step donates the embedder's buffers: train on copies, so the model stays intact if the run stops early.
    embedder, rest = jax.device_put((jax.tree.map(jnp.copy, embedder), rest), rep)
    objective = jax.device_put(objective, rep)
    opt_state = jax.jit(optimizer.init, out_shardings=rep)(embedder)
    step, distance = make_align_step(graphdef, optimizer)
    weights = jax.device_put(sampler.weights, rep)

    samples = ClassSamples(sampler, train_x, config.epochs, seed)

    def on_mesh(sample):
        return global_batch(sample["x"], mesh, axis=1), global_batch(sample["mask"], mesh, axis=1)

    fixed_x, fixed_mask = on_mesh(samples.draw(np.random.default_rng([seed, 2**31 - 1])))
    key = jax.random.key(seed)
    manager = ocp.CheckpointManager(
        (workdir / "align").absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    )
    history, start, before, data_state = [], 0, None, None
    if manager.latest_step() is not None:
        start = manager.latest_step()
        target = {"embedder": embedder, "opt_state": opt_state}
        restored = manager.restore(
            start,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, target)),
                history=ocp.args.JsonRestore(),
            ),
        )
        embedder, opt_state = restored.state["embedder"], restored.state["opt_state"]
        history, before = restored.history["history"], restored.history["distance_before"]
        data_state = restored.history["data"]
        log.info("align: resumed after epoch %d from %s", start, workdir / "align")
    if before is None:
        before = float(distance(embedder, rest, objective, fixed_x, fixed_mask, weights, key))
    t0 = time.perf_counter()
    run_log = RunLog(workdir, "align")
    threads, prefetch = (data.threads, data.prefetch) if data is not None else (1, 2)
    inputs = iterate(samples, state=data_state, threads=threads, prefetch=prefetch)
    bar = tqdm(range(start, config.epochs), desc="align", unit="epoch", initial=start, total=config.epochs)
    for epoch in bar:
        x, mask = on_mesh(next(inputs))
        lr = float(schedule(epoch))
        embedder, opt_state, value = step(
            embedder, rest, opt_state, objective, x, mask, weights, jax.random.fold_in(key, epoch)
        )
        if not np.isfinite(float(value)):
            manager.wait_until_finished()
            raise FloatingPointError(
                f"align: the distance is {float(value)} at epoch {epoch + 1}; stopped without saving (the last good "
                f"checkpoint, epoch {manager.latest_step()}, is kept). Lower optimizer.learning_rate or "
                "align.lr_multiplier, or check the inputs."
            )
        record = {"epoch": epoch + 1, "distance": float(value), "lr": lr, "seconds": time.perf_counter() - t0}
        history.append(record)
        run_log.write(history)
        bar.set_postfix(distance=f"{record['distance']:.4g}")
        if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
            manager.save(
                epoch + 1,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave({"embedder": embedder, "opt_state": opt_state}),
                    history=ocp.args.JsonSave(
                        {"history": history, "distance_before": before, "data": inputs.get_state()}
                    ),
                ),
            )
    manager.wait_until_finished()
    run_log.close()
    seconds = time.perf_counter() - t0
    after = float(distance(embedder, rest, objective, fixed_x, fixed_mask, weights, key))
    nnx.update(model, embedder)
    result = AlignResult(before, after, history, seconds)
    write_align_outputs(model, result, workdir, config)
    return result


def write_align_outputs(model: nnx.Module, result: AlignResult, workdir: Path, config) -> None:
    """The aligned embedder on its own (so refine can start from it or be re-run), a summary and a PNG curve."""
    checkpointer = ocp.StandardCheckpointer()
    target = (workdir / "aligned_embedder").absolute()
    checkpointer.save(target, nnx.state(model.embedder, nnx.Param), force=True)
    checkpointer.wait_until_finished()
    summary = {
        "objective": config.objective,
        "solver": config.solver,
        "epochs": config.epochs,
        "distance_before": result.distance_before,
        "distance_after": result.distance_after,
        "seconds": result.seconds,
    }
    (workdir / "align_summary.json").write_text(json.dumps(summary, indent=2))
    plot_distance_curve(result, workdir / "align_distance.png", config.objective)


def plot_distance_curve(result: AlignResult, path: Path, objective: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in result.history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(epochs, [r["distance"] for r in result.history], marker=".", label="class-weighted distance (epoch sample)")
    # Before and after are measured on one fixed sample, drawn at epoch 0 and at the last epoch.
    ax.plot([0], [result.distance_before], "s", color="gray", label=f"before (fixed sample): {result.distance_before:.4g}")
    ax.plot([epochs[-1]], [result.distance_after], "s", color="green",
            label=f"after (fixed sample): {result.distance_after:.4g}")
    ax.set_xlabel("align epoch (= optimizer step)")
    ax.set_ylabel(objective)
    ax.set_title("ORCA align: embedded target vs source features")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def load_aligned_embedder(model: nnx.Module, workdir: Path) -> bool:
    """Restores `workdir/aligned_embedder` into `model.embedder`; False when there is none."""
    path = (Path(workdir) / "aligned_embedder").absolute()
    if not path.exists():
        return False
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(model.embedder, nnx.Param))
    nnx.update(model.embedder, ocp.StandardCheckpointer().restore(path, abstract))
    return True
