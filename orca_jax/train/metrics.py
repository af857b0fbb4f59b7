"""Evaluation metrics over a whole split, and the registry of task kinds (head, loss, metric, direction).

The official code averages AUROC / F1 / mAP over 1000-example chunks and its "validation" is the test set; here a
metric is always computed once over every example of the split (`MetricAccumulator` collects the real rows of each
padded batch on the host), and model selection uses a validation split (see design decision 9). Metrics take the
model's raw outputs and the targets as NumPy arrays:
- `accuracy`, `macro_f1` (scikit-learn's macro average over the labels present in targets or predictions): logits
  `[n, classes]`, integer labels `[n]`.
- `mean_auroc`, `mean_average_precision` (scikit-learn's ROC AUC and average precision per label, then the mean):
  scores `[n, labels]` (logits or probabilities: both are rank-based, so no threshold is applied, unlike the
  official Cosmic metric), {0, 1} targets. Labels whose targets hold a single class (AUROC), or no positive (AP),
  have no defined value and are left out of the mean; a split where no label is left raises.
- `relative_l2` (mean of the official LpLoss ratios over examples), `nrmse`: dense outputs and targets.
Each is reported as is (accuracy, not the official 1 - accuracy); `METRICS[name].higher_is_better` says which way
is better for model selection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from flax import nnx
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from orca_jax.models.heads import ClassificationHead, ImageDenseHead, SequenceDenseHead
from orca_jax.train import losses


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def macro_f1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(f1_score(labels, np.argmax(logits, axis=-1), average="macro"))


def _mean_over_labels(
    name: str, score: Callable, scores: np.ndarray, targets: np.ndarray, keep: np.ndarray, needs: str
) -> float:
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"{name} takes scores and targets of the same shape [n, labels], got {scores.shape} and "
                         f"{targets.shape}.")
    if not keep.any():
        raise ValueError(f"{name} is undefined on this split: no label has {needs}.")
    return float(np.mean([score(targets[:, k], scores[:, k]) for k in np.flatnonzero(keep)]))


def mean_auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    positives = np.sum(targets > 0, axis=0)
    keep = (positives > 0) & (positives < len(targets))
    return _mean_over_labels("mean_auroc", roc_auc_score, scores, targets, keep, "both positive and negative examples")


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    keep = np.any(targets > 0, axis=0)
    return _mean_over_labels("mean_average_precision", average_precision_score, scores, targets, keep, "a positive")


def relative_l2(outputs: np.ndarray, targets: np.ndarray) -> float:
    return float(losses.relative_l2(outputs, targets, reduction="mean"))


def nrmse(outputs: np.ndarray, targets: np.ndarray) -> float:
    return float(losses.nrmse(outputs, targets))


@dataclasses.dataclass(frozen=True)
class Metric:
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool


METRICS: dict[str, Metric] = {
    "accuracy": Metric(accuracy, True),
    "macro_f1": Metric(macro_f1, True),
    "mean_auroc": Metric(mean_auroc, True),
    "mean_average_precision": Metric(mean_average_precision, True),
    "relative_l2": Metric(relative_l2, False),
    "nrmse": Metric(nrmse, False),
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; known metrics: {sorted(METRICS)}.")
    return METRICS[name]


class MetricAccumulator:
    """Collects (outputs, targets) of the real examples of each batch, then computes the metric once over all."""

    def __init__(self, metric: str):
        self.name, self.metric = metric, get_metric(metric)
        self._outputs: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def update(self, outputs, targets, mask=None) -> None:
        """A batch's outputs and targets (any array type; copied to host NumPy) and its [batch] mask of real rows."""
        outputs, targets = np.asarray(outputs), np.asarray(targets)
        if len(outputs) != len(targets):
            raise ValueError(f"Batch has {len(outputs)} outputs but {len(targets)} targets.")
        if mask is not None:
            keep = np.asarray(mask) > 0
            if keep.shape != (len(outputs),):
                raise ValueError(f"mask must be [batch] = ({len(outputs)},), got shape {keep.shape}.")
            outputs, targets = outputs[keep], targets[keep]
        self._outputs.append(outputs)
        self._targets.append(targets)

    def __len__(self) -> int:
        return sum(len(t) for t in self._targets)

    def result(self) -> float:
        if not len(self):
            raise ValueError(f"No examples were accumulated for {self.name}: call update() with at least one real row.")
        return self.metric.fn(np.concatenate(self._outputs), np.concatenate(self._targets))


@dataclasses.dataclass(frozen=True)
class TaskKind:
    """What a kind of task trains and reports: head class, loss and metric (names in `LOSSES` and `METRICS`)."""

    head: type[nnx.Module]
    loss: str
    metric: str

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric].higher_is_better


# Official pairings: classification (CIFAR-100, NinaPro, Satellite...), ECG (macro-F1), DeepSEA (AUROC), FSD50K
# (mAP), PDEBench 1D and 2D (nRMSE), NAS-Bench-360 Darcy (relative L2).
TASK_KINDS: dict[str, TaskKind] = {
    "classification": TaskKind(ClassificationHead, "cross_entropy", "accuracy"),
    "classification_f1": TaskKind(ClassificationHead, "cross_entropy", "macro_f1"),
    "multilabel_auroc": TaskKind(ClassificationHead, "binary_cross_entropy", "mean_auroc"),
    "multilabel_map": TaskKind(ClassificationHead, "binary_cross_entropy", "mean_average_precision"),
    "dense_1d": TaskKind(SequenceDenseHead, "nrmse", "nrmse"),
    "dense_2d": TaskKind(ImageDenseHead, "nrmse", "nrmse"),
    "dense_2d_relative_l2": TaskKind(ImageDenseHead, "relative_l2", "relative_l2"),
}


def get_task_kind(name: str) -> TaskKind:
    if name not in TASK_KINDS:
        raise ValueError(f"Unknown task kind {name!r}; known kinds: {sorted(TASK_KINDS)}.")
    return TASK_KINDS[name]
