"""A task's loss (`TaskLoss`): the kind's loss with the config's options, and the outputs its metric sees.

"Objective" in orca-jax means the align stage's distance (`orca_jax.ot.distance`); this is what refine minimises.

The task's kind (`orca_jax.data.kinds`) picks the defaults; the config's `task` section may override them:
- `loss`, `metric`: names in `losses.LOSSES` / `metrics.METRICS` ("" = the kind's);
- `class_weighting`: "inverse_frequency" weights cross-entropy by 1 / class frequency in the training split (the
  official OpenML loss; "" = the kind's, "none" = unweighted);
- `pos_weight`: BCE's weight of positive targets (official: DeepSEA 4, FSD50K 10; <= 0 = none);
- `clip_targets`: training targets above this value are clipped in the loss (official PSICOV: 16 Å; <= 0 = none);
  evaluation always sees the real targets;
- `ignore_meta`: the name of a per-example `Split.meta` array of the targets' shape whose 1s mark elements the loss
  must not learn from (Cosmic's ignored pixels): outputs and targets are multiplied by (1 - ignore) before the loss,
  exactly as the official Cosmic loss does ("" = none);
- `normalize_targets`: "elementwise" (a mean and standard deviation per target element over the training split, as
  the official Darcy `UnitGaussianNormalizer`) or "global" (one mean and deviation); the model then predicts
  normalised values, which are decoded before the loss and the metric, so both are in the targets' units.

Outputs of value-valued kinds are reshaped to the targets' shape (a linear head's [batch, prod(shape)], a dense head's
[batch, ..., 1] for targets without a channel axis).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from orca_jax.data.kinds import TaskKind, get_task_kind
from orca_jax.data.types import DataError, Task
from orca_jax.train.losses import get_loss
from orca_jax.train.metrics import get_metric

NORMALIZATIONS = ("none", "elementwise", "global")
_CHUNK = 4096  # rows per pass when computing target statistics (targets may be memory-mapped)


@dataclasses.dataclass(frozen=True)
class TaskLoss:
    kind: TaskKind
    loss_name: str
    metric: str
    target_shape: tuple[int, ...]
    class_weights: np.ndarray | None = None
    pos_weight: float | None = None
    clip_targets: float | None = None
    target_mean: np.ndarray | None = None
    target_std: np.ndarray | None = None
    ignore_meta: str | None = None

    @property
    def loss_meta(self) -> tuple[str, ...]:
        """The `Split.meta` arrays a training step must feed to `loss`."""
        return (self.ignore_meta,) if self.ignore_meta else ()

    @property
    def higher_is_better(self) -> bool:
        return get_metric(self.metric).higher_is_better

    @property
    def num_outputs(self) -> int:
        """Outputs of a linear head: one per target element for value-valued kinds."""
        return int(np.prod(self.target_shape, dtype=np.int64))

    def outputs(self, raw: jax.Array) -> jax.Array:
        """The model's raw outputs in the targets' shape and units (what losses and metrics compare)."""
        if self.kind.targets != "values":
            return raw
        out = raw.astype(jnp.float32).reshape(raw.shape[0], *self.target_shape)
        if self.target_mean is not None:
            out = out * self.target_std + self.target_mean
        return out

    def loss(self, raw: jax.Array, targets: jax.Array, mask: jax.Array, meta: dict | None = None) -> jax.Array:
        """The training loss of a padded batch (`mask`: 1 for real rows; `meta`: the batch's `loss_meta` arrays);
        jittable."""
        outputs = self.outputs(raw)
        if self.ignore_meta:
            keep = 1.0 - meta[self.ignore_meta].astype(jnp.float32).reshape(targets.shape)
            outputs, targets = outputs * keep, targets * keep
        options = {}
        if self.class_weights is not None:
            options["class_weights"] = self.class_weights
        if self.pos_weight is not None:
            options["pos_weight"] = self.pos_weight
        if self.clip_targets is not None:
            targets = jnp.minimum(targets, self.clip_targets)
        return get_loss(self.loss_name)(outputs, targets, mask, **options)


def linear_outputs(task: Task, task_loss: TaskLoss) -> int:
    """Outputs of a linear head (or any model ending in one): a logit per class or label, else one per target
    element."""
    return task_loss.num_outputs if task_loss.kind.targets == "values" else task.num_classes


def make_task_loss(task: Task, task_config) -> TaskLoss:
    """The loss of `task` with the options of the config's `task` section (see the module docstring)."""
    kind = get_task_kind(task.kind)
    c = task_config
    loss_name, metric = c.loss or kind.loss, c.metric or kind.metric
    # Names are checked before any work (`config_checks`); what depends on the task's kind is checked here.
    weighting = c.class_weighting or kind.class_weighting
    if weighting != "none" and loss_name != "cross_entropy":
        raise ValueError(f"task.class_weighting={weighting!r} weights cross-entropy, but the loss is {loss_name!r}; "
                         "set task.class_weighting=none.")
    if c.pos_weight > 0 and loss_name != "binary_cross_entropy":
        raise ValueError(f"task.pos_weight={c.pos_weight} weights binary cross-entropy, but the loss is {loss_name!r}; "
                         "set task.pos_weight=0.")
    if (c.normalize_targets != "none" or c.clip_targets > 0) and kind.targets != "values":
        raise ValueError(f"task.normalize_targets / task.clip_targets apply to real-valued targets; kind {task.kind!r} "
                         f"has {kind.targets} targets.")
    class_weights = _inverse_frequency(np.asarray(task.train.y), task.num_classes) if weighting != "none" else None
    mean = std = None
    if c.normalize_targets != "none":
        mean, std = _target_statistics(task.train.y, elementwise=c.normalize_targets == "elementwise")
    if c.ignore_meta:
        found = task.train.meta.get(c.ignore_meta)
        if found is None or np.shape(found)[1:] != task.target_shape:
            raise DataError(
                f"task.ignore_meta={c.ignore_meta!r}: the training split has "
                + (f"no meta array of that name (it has {sorted(task.train.meta)})" if found is None else
                   f"a meta array of example shape {np.shape(found)[1:]}, not the targets' {task.target_shape}")
                + "; set task.ignore_meta='' or use a task that provides it."
            )
    return TaskLoss(
        kind, loss_name, metric, task.target_shape, class_weights,
        float(c.pos_weight) if c.pos_weight > 0 else None, float(c.clip_targets) if c.clip_targets > 0 else None,
        mean, std, c.ignore_meta or None,
    )


def _inverse_frequency(labels: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes).astype(np.float64)
    # A class absent from the training split never appears in its loss; weight 0 keeps the vector finite.
    return np.where(counts > 0, len(labels) / np.maximum(counts, 1) / num_classes, 0.0).astype(np.float32)


def _target_statistics(y, *, elementwise: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the training targets (float64 accumulation, chunked over rows), as the
    official normaliser computes them: the unbiased deviation, plus 1e-5."""
    total = squares = 0.0
    for start in range(0, len(y), _CHUNK):
        chunk = np.asarray(y[start : start + _CHUNK], np.float64)
        total = total + (chunk.sum(axis=0) if elementwise else chunk.sum())
        squares = squares + (np.square(chunk).sum(axis=0) if elementwise else np.square(chunk).sum())
    count = len(y) if elementwise else len(y) * int(np.prod(y.shape[1:], dtype=np.int64))
    mean = total / count
    std = np.sqrt(np.maximum((squares - count * np.square(mean)) / max(count - 1, 1), 0.0)) + 1e-5
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)
