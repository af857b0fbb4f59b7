"""The benchmark metrics that read per-example metadata, against direct computations: PSICOV MAE8 (each protein's
own length, and the official first-length variant), Cosmic pixel AUROC (scores without ignored pixels, and the
official thresholded variant), FSD50K clip-level mAP."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from orca_jax.train.metrics import METRICS, MetricAccumulator


def official_psicov_loops(predictions, targets, lengths, pad=10):
    """The official evaluation, loop for loop (in-place triangle averaging, 0.01 floor, padding shift, per-protein
    window, separation >= 24 and distance <= 8 masks, nanmean)."""
    p, y = predictions.astype(np.float64).copy(), targets.astype(np.float64).copy()
    size = p.shape[1]
    for j in range(size):
        for k in range(j, size):
            p[:, j, k] = (p[:, k, j] + p[:, j, k]) / 2.0
    p[p < 0.01] = 0.01
    p[:, : size - pad, : size - pad] = p[:, pad // 2 : size - pad // 2, pad // 2 : size - pad // 2].copy()
    y[:, : size - pad, : size - pad] = y[:, pad // 2 : size - pad // 2, pad // 2 : size - pad // 2].copy()
    maes = []
    for i, length in enumerate(lengths):
        average = np.full((length, length), 100.0)
        for j in range(length):
            for k in range(j, length):
                average[j, k] = (p[i, k, j] + p[i, j, k]) / 2.0
        truth = y[i, :length, :length].copy()
        for a in range(length):
            for b in range(length):
                if b - a < 24 or truth[a, b] > 8:
                    truth[a, b] = average[a, b] = np.nan
        maes.append(np.nan if np.isnan(truth).all() else np.nanmean(np.abs(truth - average)))
    return np.nanmean(maes)


def test_psicov_mae8_scores_each_protein_on_its_own_length():
    rng = np.random.default_rng(0)
    lengths = np.asarray([28, 34, 30])
    targets = np.full((3, 44, 44), 100.0, np.float32)
    for i, n in enumerate(lengths):
        targets[i, 5 : 5 + n, 5 : 5 + n] = rng.uniform(2, 14, size=(n, n))
    outputs = targets + rng.normal(scale=2.0, size=targets.shape).astype(np.float32)
    ours = METRICS["psicov_mae8"].fn(outputs, targets, length=lengths)
    assert ours == pytest.approx(official_psicov_loops(outputs, targets, lengths), rel=1e-10)
    official = METRICS["psicov_mae8_official"].fn(outputs, targets, length=lengths)
    assert official == pytest.approx(official_psicov_loops(outputs, targets, [28, 28, 28]), rel=1e-10)
    assert official != pytest.approx(ours) and not METRICS["psicov_mae8"].higher_is_better


def test_pixel_auroc_leaves_ignored_pixels_out_and_the_official_variant_thresholds():
    rng = np.random.default_rng(1)
    targets = (rng.random((4, 16, 16)) < 0.2).astype(np.float32)
    ignore = (rng.random((4, 16, 16)) < 0.1).astype(np.uint8)
    scores = (targets * 2 - 1 + rng.normal(size=targets.shape)).astype(np.float32)
    keep = ignore == 0
    accumulator = MetricAccumulator("pixel_auroc")
    for part in (slice(0, 3), slice(3, 4)):  # batches with the ignore mask as per-example metadata
        accumulator.update(scores[part], targets[part], np.ones(len(targets[part])), ignore=ignore[part])
    assert accumulator.result() == pytest.approx(roc_auc_score(targets[keep], scores[keep]))
    masked = targets * (1 - ignore)
    official = roc_auc_score(masked.ravel(), (scores * (1 - ignore) > 0).ravel())
    assert METRICS["pixel_auroc_thresholded"].fn(scores, masked, ignore=ignore) == pytest.approx(official)


def test_clip_map_averages_logits_over_each_clips_chunks():
    rng = np.random.default_rng(2)
    clips = np.asarray([7, 7, 3, 9, 9, 9, 4, 4])
    clip_targets = {c: (rng.random(5) < 0.5).astype(np.int32) for c in set(clips)}
    clip_targets[3][:] = [1, 0, 1, 0, 1]
    clip_targets[4][:] = [0, 1, 0, 1, 0]
    targets = np.stack([clip_targets[c] for c in clips])
    scores = rng.normal(size=targets.shape).astype(np.float32)
    order = sorted(set(clips))
    means = np.stack([scores[clips == c].mean(0) for c in order])
    truth = np.stack([clip_targets[c] for c in order])
    expected = np.mean([average_precision_score(truth[:, k], means[:, k]) for k in range(5) if truth[:, k].any()])
    assert METRICS["clip_mean_average_precision"].fn(scores, targets, clip=clips) == pytest.approx(expected)
