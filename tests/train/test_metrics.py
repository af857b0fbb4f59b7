"""Metrics over a whole split equal scikit-learn's on all examples, and differ from the official chunk averages."""

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import average_precision_score, f1_score, r2_score, roc_auc_score

from orca_jax.data.kinds import TASK_KINDS, get_task_kind
from orca_jax.train import losses
from orca_jax.train.metrics import METRICS, MetricAccumulator, get_metric, mean_auroc, mean_average_precision

RNG = np.random.default_rng(0)
N, BATCH, CHUNK = 50, 8, 20  # padded batches of 8 (the last has 2 real rows); official-style chunks 20, 20, 10


def _pad(a, rows):
    return np.concatenate([a, (RNG.normal(size=(rows, *a.shape[1:])) * 5).astype(a.dtype)])


def _accumulate(name, outputs, targets):
    """Feeds the split in fixed-shape batches, the last padded with garbage rows that the mask removes."""
    acc = MetricAccumulator(name)
    for start in range(0, len(targets), BATCH):
        out, tgt = outputs[start : start + BATCH], targets[start : start + BATCH]
        real = len(tgt)
        acc.update(_pad(out, BATCH - real), _pad(tgt, BATCH - real), np.arange(BATCH) < real)
    assert len(acc) == len(targets)
    return acc.result()


def _chunk_average(fn, outputs, targets):
    """The official evaluation: the metric on each chunk of the split, averaged over chunks."""
    return np.mean([fn(outputs[i : i + CHUNK], targets[i : i + CHUNK]) for i in range(0, len(targets), CHUNK)])


def _multilabel_data():
    labels = 5
    targets = (RNG.random(size=(N, labels)) < [0.5, 0.3, 0.15, 0.1, 0.0]).astype(np.int32)  # label 4: never positive
    scores = targets * 0.8 + RNG.normal(size=(N, labels))
    return scores, targets


def test_known_values():
    """scikit-learn's documented examples, so the functions are anchored to numbers, not only to sklearn calls."""
    scores, targets = np.array([[0.1], [0.4], [0.35], [0.8]]), np.array([[0], [0], [1], [1]])
    assert mean_auroc(scores, targets) == pytest.approx(0.75)
    assert mean_average_precision(scores, targets) == pytest.approx(0.8333333)


@pytest.mark.parametrize("name, reference", [
    ("accuracy", lambda logits, y: np.mean(logits.argmax(-1) == y)),
    ("macro_f1", lambda logits, y: f1_score(y, logits.argmax(-1), average="macro")),
])
def test_classification_metrics_over_whole_split(name, reference):
    labels = RNG.integers(0, 4, size=N)
    logits = RNG.normal(size=(N, 4)) + 1.2 * np.eye(4)[labels]
    expected = reference(logits, labels)
    assert _accumulate(name, logits, labels) == pytest.approx(expected, abs=1e-12)
    assert abs(_chunk_average(reference, logits, labels) - expected) > 1e-3


def test_mean_auroc_whole_split_and_single_class_labels_left_out():
    scores, targets = _multilabel_data()
    keep = [0, 1, 2, 3]  # label 4 has no positive example: its AUROC is undefined
    expected = roc_auc_score(targets[:, keep], scores[:, keep], average="macro")
    assert _accumulate("mean_auroc", scores, targets) == pytest.approx(expected, abs=1e-12)
    assert abs(_chunk_average(mean_auroc, scores, targets) - expected) > 1e-3
    all_positive = np.ones_like(targets)
    all_positive[:, 0] = targets[:, 0]  # only label 0 has both classes
    assert mean_auroc(scores, all_positive) == pytest.approx(roc_auc_score(targets[:, 0], scores[:, 0]))
    with pytest.raises(ValueError, match="no label has both"):
        mean_auroc(scores, np.zeros_like(targets))


def test_mean_average_precision_whole_split():
    scores, targets = _multilabel_data()
    expected = average_precision_score(targets[:, :4], scores[:, :4], average="macro")
    assert _accumulate("mean_average_precision", scores, targets) == pytest.approx(expected, abs=1e-12)
    assert abs(_chunk_average(mean_average_precision, scores, targets) - expected) > 1e-3


def test_relative_l2_is_the_mean_over_all_examples():
    targets = RNG.normal(size=(N, 6, 6, 1)).astype(np.float32)
    outputs = targets + RNG.normal(size=targets.shape).astype(np.float32) * RNG.uniform(0.05, 1.0, size=(N, 1, 1, 1))
    norms = lambda a: np.linalg.norm(a.reshape(N, -1), axis=1)  # noqa: E731
    expected = np.mean(norms(outputs - targets) / norms(targets))
    assert _accumulate("relative_l2", outputs, targets) == pytest.approx(expected, rel=1e-5)
    chunked = _chunk_average(lambda o, t: float(losses.relative_l2(o, t, reduction="mean")), outputs, targets)
    assert abs(chunked - expected) > 1e-3  # the last chunk (10 examples) weighs as much as a full one


def test_tabular_auroc_binary_and_one_vs_one():
    labels = RNG.integers(0, 2, N)
    logits = RNG.normal(size=(N, 2)) + labels[:, None] * np.array([0.0, 1.0])
    assert _accumulate("auroc", logits, labels) == pytest.approx(roc_auc_score(labels, softmax(logits, 1)[:, 1]))
    labels = RNG.integers(0, 4, N)
    logits = RNG.normal(size=(N, 4)) + np.eye(4)[labels]
    expected = roc_auc_score(labels, softmax(logits, 1), multi_class="ovo")
    assert _accumulate("auroc", logits, labels) == pytest.approx(expected)
    # By hand for two classes: the fraction of (positive, negative) pairs ranked correctly.
    scores, y = np.array([[0, 0.1], [0, 0.9], [0, 0.4], [0, 0.8]]), np.array([0, 1, 0, 0])
    assert get_metric("auroc").fn(scores, y) == pytest.approx(1.0)


def test_r2_over_the_whole_split():
    targets = RNG.normal(size=(N, 3)).astype(np.float32)
    outputs = targets + RNG.normal(size=(N, 3)).astype(np.float32) * 0.5
    assert _accumulate("r2", outputs, targets) == pytest.approx(r2_score(targets, outputs), rel=1e-6)
    y = targets[:, 0]
    by_hand = 1 - np.sum((y - outputs[:, 0]) ** 2) / np.sum((y - y.mean()) ** 2)
    assert _accumulate("r2", outputs[:, 0], y) == pytest.approx(by_hand, rel=1e-5)


def test_registry_names_and_errors():
    kind = get_task_kind("multilabel_auroc")
    assert (kind.head, kind.loss, kind.metric, kind.align_labels, METRICS[kind.metric].higher_is_better) == (
        "linear", "binary_cross_entropy", "mean_auroc", "kmeans", True
    )
    assert get_task_kind("dense_2d_relative_l2").head == "dense_2d"
    assert not METRICS[get_task_kind("dense_2d_relative_l2").metric].higher_is_better
    assert get_task_kind("classification_f1").align_labels == "classes"
    assert get_task_kind("tabular").class_weighting == "inverse_frequency"
    for name, kind in TASK_KINDS.items():
        assert kind.metric in METRICS and losses.get_loss(kind.loss), name
    with pytest.raises(ValueError, match="known kinds: .*'dense_1d'"):
        get_task_kind("segmentation")
    with pytest.raises(ValueError, match="known metrics: .*'accuracy'"):
        get_metric("auc")
    with pytest.raises(ValueError, match="No examples"):
        MetricAccumulator("accuracy").result()
