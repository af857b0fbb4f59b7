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
- `auroc` (single-label, tabular): logits `[n, classes]`, integer labels `[n]`; `r2`: outputs and targets of one
  shape.
- `relative_l2` (mean of the official LpLoss ratios over examples), `nrmse`: dense outputs and targets.
- Benchmark metrics that need per-example metadata (`Split.meta`, passed by name): `clip_mean_average_precision`
  (FSD50K, `clip`), `pixel_auroc` / `pixel_auroc_thresholded` (Cosmic, `ignore`), `psicov_mae8` /
  `psicov_mae8_official` (PSICOV, `length`); the `_official` variants reproduce the official code's numbers,
  bugs included, for comparison with published results.
Each is reported as is (accuracy, not the official 1 - accuracy); `METRICS[name].higher_is_better` says which way
is better for model selection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from scipy.special import softmax
from sklearn.metrics import average_precision_score, f1_score, r2_score, roc_auc_score

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


def auroc(logits: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of a single-label classifier as the official tabular (OpenML) code scores it: two classes, the
    probability of class 1; more, one-vs-one on the softmax probabilities."""
    probs = softmax(logits.astype(np.float64), axis=-1)
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovo", labels=np.arange(probs.shape[1])))


def r2(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Coefficient of determination, averaged uniformly over outputs (the official drug-response configs report
    1 - R^2)."""
    return float(r2_score(targets.reshape(len(targets), -1), outputs.reshape(len(outputs), -1)))


def relative_l2(outputs: np.ndarray, targets: np.ndarray) -> float:
    return float(losses.relative_l2(outputs, targets, reduction="mean"))


def nrmse(outputs: np.ndarray, targets: np.ndarray) -> float:
    return float(losses.nrmse(outputs, targets))


def clip_mean_average_precision(scores: np.ndarray, targets: np.ndarray, clip: np.ndarray) -> float:
    """FSD50K's clip-level mAP: a clip's logits are averaged over its chunks (`clip`: the clip id of each example,
    from the split's meta), then `mean_average_precision` over clips (a clip's chunks share its targets)."""
    clips, first, inverse = np.unique(np.asarray(clip), return_index=True, return_inverse=True)
    sums = np.zeros((len(clips), scores.shape[1]), np.float64)
    np.add.at(sums, inverse.reshape(-1), scores.astype(np.float64))
    counts = np.bincount(inverse.reshape(-1), minlength=len(clips))[:, None]
    return mean_average_precision(sums / counts, targets[first])


def pixel_auroc(scores: np.ndarray, targets: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Cosmic's AUROC over pixels, on the scores (logits), leaving out pixels the data marks to ignore (`ignore`,
    per pixel, from the split's meta). The official metric thresholds the outputs at 0 first and counts ignored
    pixels as correct negatives: `pixel_auroc_thresholded`."""
    keep = np.ones(targets.shape, bool) if ignore is None else np.asarray(ignore).reshape(targets.shape) == 0
    return float(roc_auc_score(targets[keep].ravel() > 0.5, scores.reshape(targets.shape)[keep].ravel()))


def pixel_auroc_thresholded(scores: np.ndarray, targets: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """The official Cosmic number (reported as 1 - this): outputs and targets multiplied by (1 - ignore), outputs
    thresholded at 0, then AUROC of those 0/1 predictions over all pixels of the split."""
    keep = 1.0 if ignore is None else 1.0 - np.asarray(ignore, np.float32).reshape(targets.shape)
    predicted = (scores.reshape(targets.shape) * keep) > 0
    return float(roc_auc_score((targets * keep).ravel() > 0.5, predicted.ravel()))


def _psicov_mae(outputs: np.ndarray, targets: np.ndarray, lengths: np.ndarray, pad: int = 10,
                separation: int = 24, threshold: float = 8.0) -> float:
    """The official PSICOV evaluation (from the PDNet code) with protein i scored on its own lengths[i] x lengths[i]
    window: the prediction's upper triangle is averaged with its transpose, floored at 0.01, the 5-residue padding
    removed, then the upper triangle averaged with the lower once more (so the lower triangle weighs 3/4), and the
    MAE taken over residue pairs at least `separation` apart whose true distance is at most `threshold`. Proteins
    without such pairs are skipped; the mean over proteins is returned (inf when none has any)."""
    predictions = np.asarray(outputs, np.float64).reshape(targets.shape)
    size = predictions.shape[-1]
    upper = np.triu(np.ones((size, size), bool))
    predictions = np.maximum(np.where(upper, (predictions + predictions.swapaxes(1, 2)) / 2.0, predictions), 0.01)
    half = pad // 2
    maes = []
    for p, y, length in zip(predictions, np.asarray(targets, np.float64), lengths):
        window = slice(half, half + int(length))
        p, y = p[window, window], y[window, window]
        j, k = np.triu_indices(int(length), separation)
        pairs = y[j, k] <= threshold
        if pairs.any():
            maes.append(np.mean(np.abs(y[j, k] - (p[k, j] + p[j, k]) / 2.0)[pairs]))
    return float(np.mean(maes)) if maes else float("inf")


def psicov_mae8(outputs: np.ndarray, targets: np.ndarray, length: np.ndarray) -> float:
    """PSICOV's MAE8 (lower is better): mean absolute error of long-range (separation >= 24) contacts (<= 8 A),
    each protein on its own length (`length`, from the split's meta). See `_psicov_mae`."""
    return _psicov_mae(outputs, targets, np.asarray(length))


def psicov_mae8_official(outputs: np.ndarray, targets: np.ndarray, length: np.ndarray) -> float:
    """The number the official code reports: it evaluates one protein at a time and looks the length up by the
    index within that one-protein chunk, so every protein is scored on the first protein's window."""
    return _psicov_mae(outputs, targets, np.full(len(targets), np.asarray(length)[0]))


@dataclasses.dataclass(frozen=True)
class Metric:
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool


METRICS: dict[str, Metric] = {
    "accuracy": Metric(accuracy, True),
    "macro_f1": Metric(macro_f1, True),
    "mean_auroc": Metric(mean_auroc, True),
    "mean_average_precision": Metric(mean_average_precision, True),
    "auroc": Metric(auroc, True),
    "r2": Metric(r2, True),
    "relative_l2": Metric(relative_l2, False),
    "nrmse": Metric(nrmse, False),
    "clip_mean_average_precision": Metric(clip_mean_average_precision, True),
    "pixel_auroc": Metric(pixel_auroc, True),
    "pixel_auroc_thresholded": Metric(pixel_auroc_thresholded, True),
    "psicov_mae8": Metric(psicov_mae8, False),
    "psicov_mae8_official": Metric(psicov_mae8_official, False),
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; known metrics: {sorted(METRICS)}.")
    return METRICS[name]


class MetricAccumulator:
    """Collects (outputs, targets, per-example metadata) of the real examples of each batch, then computes the
    metric once over all. Metadata arrays (a split's `meta`) reach the metric function as keyword arguments."""

    def __init__(self, metric: str):
        self.name, self.metric = metric, get_metric(metric)
        self._outputs: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._meta: dict[str, list[np.ndarray]] = {}

    def update(self, outputs, targets, mask=None, **meta) -> None:
        """A batch's outputs and targets (any array type; copied to host NumPy), its [batch] mask of real rows and
        its per-example metadata."""
        outputs, targets = np.asarray(outputs), np.asarray(targets)
        meta = {name: np.asarray(values) for name, values in meta.items()}
        if len(outputs) != len(targets) or any(len(v) != len(outputs) for v in meta.values()):
            raise ValueError(f"Batch has {len(outputs)} outputs but {len(targets)} targets"
                             + "".join(f", {len(v)} {k}" for k, v in meta.items()) + ".")
        if mask is not None:
            keep = np.asarray(mask) > 0
            if keep.shape != (len(outputs),):
                raise ValueError(f"mask must be [batch] = ({len(outputs)},), got shape {keep.shape}.")
            outputs, targets = outputs[keep], targets[keep]
            meta = {name: values[keep] for name, values in meta.items()}
        self._outputs.append(outputs)
        self._targets.append(targets)
        for name, values in meta.items():
            self._meta.setdefault(name, []).append(values)

    def __len__(self) -> int:
        return sum(len(t) for t in self._targets)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(outputs, targets, metadata) of every real example accumulated so far."""
        if not len(self):
            raise ValueError(f"No examples were accumulated for {self.name}: call update() with at least one real row.")
        meta = {name: np.concatenate(values) for name, values in self._meta.items()}
        return np.concatenate(self._outputs), np.concatenate(self._targets), meta

    def result(self) -> float:
        outputs, targets, meta = self.arrays()
        return self.metric.fn(outputs, targets, **meta)
