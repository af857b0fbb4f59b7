"""Task kinds: what a task's targets are, and the head, loss, metric and align labels that follow from them.

A kind is chosen by the task's loader (or `task.kind` in the config) and fixes defaults that the config may still
override (`task.loss`, `task.metric`, `task.class_weighting`). The pairings follow the official code:

| kind | targets | head | loss | metric | align labels |
|---|---|---|---|---|---|
| classification | int class ids [N] | linear | cross-entropy | accuracy | classes |
| classification_f1 | int class ids [N] | linear | cross-entropy | macro-F1 (ECG) | classes |
| tabular | int class ids [N] | linear | cross-entropy, 1/frequency class weights (OpenML) | AUROC | classes |
| multilabel_auroc | {0, 1} [N, labels] | linear | BCE (`pos_weight`) | mean AUROC (DeepSEA) | k-means |
| multilabel_map | {0, 1} [N, labels] | linear | BCE (`pos_weight`) | mAP (FSD50K) | k-means |
| regression | floats [N] or [N, k] | linear | MSE | R² (drug response; officially reported as 1 − R²) | k-means |
| dense_1d | floats [N, L] or [N, L, C] | dense 1D | nRMSE | nRMSE (PDEBench 1D) | k-means |
| dense_2d | floats [N, H, W] or [N, H, W, C] | dense 2D | nRMSE | nRMSE (PDEBench 2D) | k-means |
| dense_2d_relative_l2 | floats [N, H, W] or [N, H, W, C] | dense 2D | relative L2 (summed) | relative L2 (Darcy) | k-means |
| dense_2d_binary | {0, 1} [N, H, W], meta `ignore` | dense 2D | BCE | pixel AUROC on scores (Cosmic) | k-means |
| distance_map | floats [N, H, W], meta `length` | dense 2D | MSE | MAE₈ per protein length (PSICOV) | k-means |
| multilabel_clip_map | {0, 1} [N, labels], meta `clip` | linear | BCE (`pos_weight`) | clip-level mAP (FSD50K) | k-means |

Metrics are reported as they are named (accuracy, R², AUROC), not as the official code's "1 − x" errors; the
metric's direction for model selection is in `orca_jax.train.metrics.METRICS`. "Align labels" are what the align
stage groups target examples by: the true classes of single-label kinds, else k-means (k = 10) pseudo-labels of the
flattened targets, as the official code does.
"""

from __future__ import annotations

import dataclasses

TARGETS = ("classes", "multilabel", "values")
HEADS = ("linear", "dense_1d", "dense_2d")
CLASS_WEIGHTINGS = ("none", "inverse_frequency")


@dataclasses.dataclass(frozen=True)
class TaskKind:
    targets: str  # one of TARGETS
    head: str  # one of HEADS
    loss: str  # a name in orca_jax.train.losses.LOSSES
    metric: str  # a name in orca_jax.train.metrics.METRICS
    class_weighting: str = "none"  # one of CLASS_WEIGHTINGS (cross-entropy only)

    @property
    def align_labels(self) -> str:
        return "classes" if self.targets == "classes" else "kmeans"


TASK_KINDS: dict[str, TaskKind] = {
    "classification": TaskKind("classes", "linear", "cross_entropy", "accuracy"),
    "classification_f1": TaskKind("classes", "linear", "cross_entropy", "macro_f1"),
    "tabular": TaskKind("classes", "linear", "cross_entropy", "auroc", class_weighting="inverse_frequency"),
    "multilabel_auroc": TaskKind("multilabel", "linear", "binary_cross_entropy", "mean_auroc"),
    "multilabel_map": TaskKind("multilabel", "linear", "binary_cross_entropy", "mean_average_precision"),
    "regression": TaskKind("values", "linear", "mse", "r2"),
    "dense_1d": TaskKind("values", "dense_1d", "nrmse", "nrmse"),
    "dense_2d": TaskKind("values", "dense_2d", "nrmse", "nrmse"),
    "dense_2d_relative_l2": TaskKind("values", "dense_2d", "relative_l2", "relative_l2"),
    # The last three read per-example metadata (`Split.meta`): Cosmic's ignore mask, PSICOV's protein lengths,
    # the FSD50K clip each chunk comes from.
    "dense_2d_binary": TaskKind("values", "dense_2d", "binary_cross_entropy", "pixel_auroc"),
    "distance_map": TaskKind("values", "dense_2d", "mse", "psicov_mae8"),
    "multilabel_clip_map": TaskKind("multilabel", "linear", "binary_cross_entropy", "clip_mean_average_precision"),
}


def get_task_kind(name: str) -> TaskKind:
    if name not in TASK_KINDS:
        raise ValueError(f"Unknown task kind {name!r}; known kinds: {sorted(TASK_KINDS)}.")
    return TASK_KINDS[name]
