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
(the official code loops over classes in Python), or, beyond `chunk_classes` classes, a streamed step whose memory
does not grow with the classes (`AlignStep`); the distance before and after alignment is measured on one fixed
sample, so the two numbers are comparable.

Only the embedder trains: the model is split once into embedder parameters and the rest (`nnx.split` with the
align stage's path rules, `finetune.ALIGN_RULES`), and only the embedder part is differentiated and updated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from orca_jax.data.loader import iterate
from orca_jax.data.types import DataError
from orca_jax.ot import AlignDistance, L2Loss, MMDLoss, OTDDLoss
from orca_jax.plotting import figure_png
from orca_jax.parallel import (
    PreemptionGuard,
    global_batch,
    init_optimizer,
    is_main_process,
    param_shardings,
    place,
    replicated,
)
from orca_jax.train.checkpoints import load_tree, save_tree
from orca_jax.train.stage import StageRun
from orca_jax.workdir import write_file
from orca_jax.train.finetune import align_trainable
from orca_jax.train.optimizers import align_optimizer

log = logging.getLogger(__name__)

# align.objective -> a builder (source features, source labels, *, solver, epsilon) -> the distance (None: no align
# stage). A new objective is one entry; config_checks accepts its name from here.
OBJECTIVES: dict[str, Callable[..., AlignDistance | None]] = {
    "otdd-exact": lambda x, y, *, solver, epsilon: OTDDLoss.build(x, y, inner="exact", epsilon=epsilon, solver=solver),
    "otdd-gaussian": lambda x, y, *, solver, epsilon: OTDDLoss.build(x, y, inner="gaussian", epsilon=epsilon,
                                                                     solver=solver),
    "mmd": lambda x, y, *, solver, epsilon: MMDLoss.build(x),
    "l2": lambda x, y, *, solver, epsilon: L2Loss.build(x),
    "none": lambda x, y, *, solver, epsilon: None,
}


def align_classes(labels: np.ndarray, where: str = "the training split") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class ids, their counts, which take part): a class takes part with two examples or more, since a distance
    between one embedded example and the source set says nothing about the class's spread. `pipeline.run` asks
    before anything is built, so a task too small to align fails at once, not after the source features."""
    ids, counts = np.unique(np.asarray(labels), return_counts=True)
    keep = counts >= 2
    if not keep.any():
        raise DataError(
            f"The align stage needs a class with at least two examples in {where}; it has {np.size(labels)}, and no "
            "class has two. Add examples (or lower task.val_fraction, which takes validation "
            "examples from them), or run without the align stage: --config.align.epochs=0 "
            "--config.align.objective=none."
        )
    return ids, counts, keep


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
        ids, counts, keep = align_classes(labels)
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
    """Align epoch e's padded per-class sample (example indices and mask; `AlignStep` reads the inputs) as a
    random-access source for grain (`orca_jax.data.loader.iterate`): drawn with `[seed, e]`, so the input iterator's
    state (the next epoch) is all a resumed run needs."""

    def __init__(self, sampler: ClassSampler, epochs: int, seed: int):
        self.sampler, self.epochs, self.seed = sampler, epochs, seed

    def __len__(self) -> int:
        return self.epochs

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        index, mask = self.sampler.sample(rng)
        return {"index": index, "mask": mask}

    def __getitem__(self, epoch: int) -> dict[str, np.ndarray]:
        if not 0 <= epoch < self.epochs:
            raise IndexError(f"align epoch {epoch} is outside [0, {self.epochs}).")
        return self.draw(np.random.default_rng([self.seed, int(epoch)]))


def build_objective(
    name: str, src_x: np.ndarray, src_y: np.ndarray, *, solver: str = "annealed", epsilon: float = 0.1
) -> AlignDistance | None:
    """The distance to the fixed source set, with everything that depends on the source alone computed once."""
    if name not in OBJECTIVES:
        raise ValueError(f"align objective {name!r} is not one of {tuple(OBJECTIVES)}.")
    return OBJECTIVES[name](src_x, src_y, solver=solver, epsilon=epsilon)


def objective_value(objective: AlignDistance, features, mask, weights, key) -> jax.Array:
    return objective.value(features, mask, weights, key=key)


def embedded_features(model, x) -> jax.Array:
    """What ORCA aligns: the embedder's tokens, mean-pooled (`OrcaModel.features`)."""
    return model.features(x)


@dataclasses.dataclass(frozen=True)
class EmbedderTarget:
    """What an embedder-only stage trains towards: the align stage's distance to the source features, or label
    matching's loss (`orca_jax.train.label_matching`). Both draw the same per-class samples and make one optimizer
    step per epoch; they differ in this record."""

    name: str  # the stage's name: its checkpoint directory, logs and progress bar
    quantity: str  # what `distance` measures, for its history and messages: "distance", "loss"
    distance: AlignDistance
    features: Callable  # (model, inputs) -> per-example features that `distance` compares
    epochs: int
    checkpoint_every: int
    schedule: object  # a config section with lr_multiplier, milestones and gamma (align_optimizer's)
    section: str  # that section's name in the config, for messages


def align_target(source: tuple[np.ndarray, np.ndarray], config) -> EmbedderTarget:
    """The align stage's target: `config.align.objective` to the source (features, labels)."""
    align = config.align
    objective = build_objective(align.objective, *source, solver=align.solver, epsilon=align.epsilon)
    if objective is None:
        raise ValueError("align objective 'none' means no align stage: set align.epochs = 0 instead.")
    return EmbedderTarget("align", "distance", objective, embedded_features, align.epochs, align.checkpoint_every,
                          align, "align")


class AlignStep:
    """One align epoch's update, and the distance alone, for a padded per-class sample `{"index", "mask"}` whose
    inputs are read from the host array `x` when needed.

    When all classes fit in one chunk (`chunk_classes`, or 0 for no limit) the update is one jitted program over the
    whole [classes, samples, ...] batch. With more classes it is streamed, so that neither host nor device memory
    depends on the number of classes (CIFAR-100 at 224 x 224, PSICOV's 60 MB examples): each chunk of classes is read
    and embedded (features only: [classes, samples, width] are small), the objective's value and its gradient with
    respect to all features are computed at once (the distance needs every class together), and then each chunk is
    read and embedded again to pull that gradient back to the embedder's parameters, summed over chunks (the chain
    rule: the same gradient as the unchunked step, up to summation order). The price is a second read and forward
    pass of each chunk.
    """

    def __init__(self, graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, x, mesh: Mesh,
                 chunk_classes: int = 0, features: Callable = embedded_features):
        self.x, self.mesh, self.chunk_classes = x, mesh, chunk_classes

        def class_features(embedder, rest, x):
            model = nnx.merge(graphdef, embedder, rest)
            classes, width = x.shape[:2]
            return features(model, x.reshape(classes * width, *x.shape[2:])).reshape(classes, width, -1)

        def distance(embedder, rest, objective, x, mask, weights, key):
            return objective_value(objective, class_features(embedder, rest, x), mask, weights, key)

        def update(embedder, opt_state, grads):
            updates, opt_state = optimizer.update(grads, opt_state, embedder)
            return optax.apply_updates(embedder, updates), opt_state

        def fused(embedder, rest, opt_state, objective, x, mask, weights, key):
            value, grads = jax.value_and_grad(distance)(embedder, rest, objective, x, mask, weights, key)
            return *update(embedder, opt_state, grads), value

        def pullback(embedder, rest, x, cotangent):
            return jax.vjp(lambda e: class_features(e, rest, x), embedder)[1](cotangent)[0]

        self._fused, self._distance = jax.jit(fused, donate_argnums=(0, 2)), jax.jit(distance)
        self._features, self._pullback = jax.jit(class_features), jax.jit(pullback)
        self._objective = jax.jit(jax.value_and_grad(objective_value, argnums=1))
        self._update = jax.jit(update, donate_argnums=(0, 1))
        self._sum = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=(0,))

    def _chunks(self, index: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(real classes, index rows padded to the chunk size with copies of the first row) per chunk."""
        classes = len(index)
        size = self.chunk_classes if 0 < self.chunk_classes < classes else classes
        chunks = []
        for start in range(0, classes, size):
            rows = index[start : start + size]
            chunks.append((len(rows), np.concatenate([rows, np.repeat(rows[:1], size - len(rows), axis=0)])))
        return chunks

    def _read(self, index: np.ndarray) -> jax.Array:
        rows = np.asarray(self.x[index.reshape(-1)]).astype(np.float32, copy=False)
        return global_batch(rows.reshape(*index.shape, *rows.shape[1:]), self.mesh, axis=1)

    def _all_features(self, embedder, rest, chunks) -> jax.Array:
        features = [self._features(embedder, rest, self._read(rows))[:real] for real, rows in chunks]
        return features[0] if len(features) == 1 else jnp.concatenate(features)

    def distance(self, embedder, rest, objective, sample, weights, key) -> jax.Array:
        mask = global_batch(sample["mask"], self.mesh, axis=1)
        chunks = self._chunks(sample["index"])
        if len(chunks) == 1:
            return self._distance(embedder, rest, objective, self._read(sample["index"]), mask, weights, key)
        return self._objective(objective, self._all_features(embedder, rest, chunks), mask, weights, key)[0]

    def __call__(self, embedder, rest, opt_state, objective, sample, weights, key):
        """(embedder, opt_state, value) after one optimizer step; donates `embedder` and `opt_state`."""
        mask = global_batch(sample["mask"], self.mesh, axis=1)
        chunks = self._chunks(sample["index"])
        if len(chunks) == 1:
            return self._fused(embedder, rest, opt_state, objective, self._read(sample["index"]), mask, weights, key)
        value, cotangent = self._objective(objective, self._all_features(embedder, rest, chunks), mask, weights, key)
        grads, start = None, 0
        for real, rows in chunks:
            size = len(rows)
            piece = cotangent[start : start + real]
            if real < size:  # padding classes get a zero cotangent: they add nothing to the gradient
                piece = jnp.concatenate([piece, jnp.zeros((size - real, *piece.shape[1:]), piece.dtype)])
            chunk_grads = self._pullback(embedder, rest, self._read(rows), piece)
            grads = chunk_grads if grads is None else self._sum(grads, chunk_grads)
            start += real
        return *self._update(embedder, opt_state, grads), value


@dataclasses.dataclass(frozen=True)
class AlignResult:
    distance_before: float
    distance_after: float
    history: list[dict]
    seconds: float


def fixed_sample(samples: ClassSamples, seed: int) -> dict[str, np.ndarray]:
    """The one sample of every class on which distances before and after alignment are measured."""
    return samples.draw(np.random.default_rng([seed, 2**31 - 1]))


@dataclasses.dataclass
class _Stage:
    """What an align run sets up before its first step: sampler, objective, optimizer and the split model."""

    sampler: ClassSampler
    objective: object
    schedule: optax.Schedule
    optimizer: optax.GradientTransformation
    embedder: nnx.State
    rest: nnx.State
    shardings: object
    step: AlignStep
    weights: jax.Array

    @classmethod
    def build(cls, model, train_x, train_labels, target: EmbedderTarget, config, *, mesh):
        align = config.align
        devices = mesh.shape["data"] * mesh.shape["fsdp"]
        sampler = ClassSampler.build(train_labels, align.maxsamples, config.batch_size, multiple_of=devices)
        objective = target.distance
        optimizer, schedule = align_optimizer(config.optimizer, target.schedule)
        graphdef, embedder, rest = nnx.split(model, align_trainable(), ...)
        rules = dict(rules=config.mesh.rules, min_shard_bytes=config.mesh.min_shard_bytes)
        shardings = param_shardings(embedder, mesh, **rules)
        # The step donates the embedder's buffers: train on a copy, so the model stays intact if the run stops early.
        embedder, rest = place(embedder, shardings), place(rest, param_shardings(rest, mesh, **rules))
        rep = replicated(mesh)
        objective = place(objective, jax.tree.map(lambda _: rep, objective))  # built on this process's first device
        step = AlignStep(graphdef, optimizer, train_x, mesh, align.chunk_classes, target.features)
        return cls(sampler, objective, schedule, optimizer, embedder, rest, shardings, step,
                   jax.device_put(sampler.weights, rep))


def measure_distance(model, train_x, train_labels, source, config, *, mesh: Mesh) -> float:
    """The align objective's distance of `model.embedder` as it is, on the fixed sample an align run measures before
    and after: where an embedder that was not aligned (the no-alignment ablations, a borrowed aligned embedder)
    stands on the paper's distance-versus-accuracy plot. Arguments as `run_align`'s."""
    stage = _Stage.build(model, train_x, train_labels, align_target(source, config), config, mesh=mesh)
    sample = fixed_sample(ClassSamples(stage.sampler, 1, config.seed), config.seed)
    return float(stage.step.distance(stage.embedder, stage.rest, stage.objective, sample, stage.weights,
                                     jax.random.key(config.seed)))


def run_align(
    model: nnx.Module,
    train_x: np.ndarray,
    train_labels: np.ndarray,
    source: tuple[np.ndarray, np.ndarray],
    config,
    *,
    mesh: Mesh,
    workdir: epath.PathLike,
    preemption: PreemptionGuard | None = None,
    step_offset: int = 0,
) -> AlignResult:
    """Aligns `model.embedder` in place, resuming from `workdir/align` if a previous run was interrupted.

    `train_labels` group the training inputs `train_x` into classes (pseudo-labels for targets that are not
    classes), `source` is the body's (features, labels); `config` the whole config: its `align` section, the
    fine-tuning `optimizer` (its family, and 10x its learning rate, are the embedder's), `batch_size` (it sets how
    many examples a class draws), `seed`, `data` (the input pipeline) and `mesh` (sharding rules). `preemption` and
    `step_offset` as `run_refine`'s; the stage's step numbers are its epochs. Writes `align_metrics.jsonl` and
    TensorBoard scalars as it goes, then `align_distance.png`, `align_summary.json` and the aligned embedder
    (`aligned_embedder/`) into `workdir`.
    """
    result = run_embedder_stage(model, train_x, train_labels, align_target(source, config), config, mesh=mesh,
                                workdir=workdir, preemption=preemption, step_offset=step_offset)
    write_align_outputs(model, result, epath.Path(workdir), config.align)
    return result


def run_embedder_stage(
    model: nnx.Module,
    train_x: np.ndarray,
    train_labels: np.ndarray,
    target: EmbedderTarget,
    config,
    *,
    mesh: Mesh,
    workdir: epath.PathLike,
    preemption: PreemptionGuard | None = None,
    step_offset: int = 0,
) -> AlignResult:
    """Trains `model.embedder` in place towards `target` (`run_align`'s loop), resuming from `workdir/<name>`;
    returns the value on the fixed sample before and after, the history and the seconds."""
    workdir, seed = epath.Path(workdir), config.seed
    stage = _Stage.build(model, train_x, train_labels, target, config, mesh=mesh)
    sampler, objective, embedder, rest = stage.sampler, stage.objective, stage.embedder, stage.rest
    schedule, step, weights = stage.schedule, stage.step, stage.weights
    opt_state, _ = init_optimizer(stage.optimizer, embedder, stage.shardings)
    samples = ClassSamples(sampler, target.epochs, seed)
    fixed = fixed_sample(samples, seed)
    key = jax.random.key(seed)
    run = StageRun(target.name, workdir, preemption=preemption, step_offset=step_offset)
    start, state, position = run.restore({"embedder": embedder, "opt_state": opt_state},
                                         {"history": [], "distance_before": None, "data": None, "seconds": 0.0})
    embedder, opt_state = state["embedder"], state["opt_state"]
    if start:
        log.info("%s: resumed after epoch %d from %s", target.name, start, workdir / target.name)
    history = position["history"]
    if position["distance_before"] is None:
        position["distance_before"] = float(step.distance(embedder, rest, objective, fixed, weights, key))
    data = config.data
    inputs = iterate(samples, state=position["data"], threads=data.threads, prefetch=data.prefetch,
                     workers=data.workers)
    bar = tqdm(range(start, target.epochs), desc=target.name, unit="epoch", initial=start, total=target.epochs,
               disable=not is_main_process())
    with run:
        for epoch in bar:
            lr = float(schedule(epoch))
            embedder, opt_state, value = step(
                embedder, rest, opt_state, objective, next(inputs), weights, jax.random.fold_in(key, epoch)
            )
            run.check_finite(float(value), target.quantity, f"epoch {epoch + 1}", "epoch",
                             f"Lower optimizer.learning_rate or {target.section}.lr_multiplier, or check the inputs.")
            history.append({"epoch": epoch + 1, target.quantity: float(value), "lr": lr, "seconds": run.seconds})
            run.log.write(history)
            bar.set_postfix({target.quantity: f"{history[-1][target.quantity]:.4g}"})
            stop = run.should_stop(epoch)
            if (epoch + 1) % target.checkpoint_every == 0 or epoch + 1 == target.epochs or stop:
                position.update(data=inputs.get_state())
                run.save(epoch + 1, {"embedder": embedder, "opt_state": opt_state}, position)
            if stop and epoch + 1 < target.epochs:
                run.stop(f"after epoch {epoch + 1}")
    after = float(step.distance(embedder, rest, objective, fixed, weights, key))
    nnx.update(model, embedder)
    return AlignResult(position["distance_before"], after, history, run.seconds)


def write_align_outputs(model: nnx.Module, result: AlignResult, workdir: epath.Path, config) -> None:
    """The aligned embedder on its own (so refine can start from it or be re-run), a summary and a PNG curve."""
    save_tree(workdir / "aligned_embedder", nnx.state(model.embedder, nnx.Param))
    summary = {
        "objective": config.objective,
        "solver": config.solver,
        "epochs": config.epochs,
        "distance_before": result.distance_before,
        "distance_after": result.distance_after,
        "seconds": result.seconds,
    }
    write_file(workdir / "align_summary.json", json.dumps(summary, indent=2))
    if is_main_process():
        write_file(workdir / "align_distance.png", plot_distance_curve(result, config.objective))


def plot_distance_curve(result: AlignResult, label: str, title: str = "ORCA align: embedded target vs source features",
                        *, quantity: str = "distance") -> bytes:
    """An embedder stage's curve: its value per epoch, and before and after on the fixed sample."""
    def draw(plt):
        epochs = [r["epoch"] for r in result.history]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
        ax.plot(epochs, [r[quantity] for r in result.history], marker=".",
                label=f"class-weighted {quantity} (epoch sample)")
        # Before and after are measured on one fixed sample, drawn at epoch 0 and at the last epoch.
        ax.plot([0], [result.distance_before], "s", color="gray",
                label=f"before (fixed sample): {result.distance_before:.4g}")
        ax.plot([epochs[-1]], [result.distance_after], "s", color="green",
                label=f"after (fixed sample): {result.distance_after:.4g}")
        ax.set_xlabel("epoch (= optimizer step)")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.legend(fontsize=8)
        return fig

    return figure_png(draw)


def load_aligned_embedder(model: nnx.Module, path: epath.PathLike, *, directory: bool = False) -> bool:
    """Restores `path/aligned_embedder` (`path` itself with `directory=True`) into `model.embedder`; False when
    there is none, or it does not fit (another body or task) or is damaged."""
    path = epath.Path(path)
    restored = load_tree(path if directory else path / "aligned_embedder", nnx.state(model.embedder, nnx.Param))
    if restored is None:
        return False
    nnx.update(model.embedder, restored)
    return True
