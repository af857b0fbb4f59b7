"""Every task kind runs align + refine end to end on small synthetic data, the test metric it reports equals an
independent computation (scikit-learn or by hand) on the test outputs it saved, and the trained model can be used
afterwards (tests/inference_checks.py)."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, r2_score, roc_auc_score

from orca_jax.config import load_config_file
from orca_jax.data import task_from_arrays
from orca_jax.pipeline import run
from tests.image_checkpoints import save_tiny_swin
from tests.inference_checks import MODES, check_the_runs_model
from tests.text_checkpoints import save_tiny_text_model

ROOT = Path(__file__).resolve().parents[1]
N = 96


@pytest.fixture(scope="module")
def bodies(tmp_path_factory):
    root = tmp_path_factory.mktemp("bodies")
    save_tiny_swin(root / "swin")
    # One source-feature cache for the module: each body's features are computed once, not once per kind.
    return {"text": save_tiny_text_model("roberta", root / "text", tokenizer=True), "image": root / "swin",
            "cache": root / "source_features"}


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _nrmse(o, t):
    o, t = o.reshape(len(o), -1), t.reshape(len(t), -1)
    return np.mean(np.linalg.norm(o - t, axis=1) / np.linalg.norm(t, axis=1))


RNG = np.random.default_rng(0)
SEQ = RNG.normal(size=(N, 12, 2)).astype(np.float32)
IMG = RNG.uniform(size=(N, 8, 8, 1)).astype(np.float32)
CLASSES = (SEQ[:, :, 0].mean(1) > 0).astype(np.int64) + (SEQ[:, :, 1].mean(1) > 0)

# kind -> (body, inputs, targets, task options, reference metric on (outputs, targets)). Kinds that differ only in
# their metric (classification / classification_f1, multilabel_auroc / multilabel_map) share inputs and loss
# options, so their runs share compiled programs. The Swin is a single-stage stand-in: its patch merging is
# tested in tests/models and the 2D pipeline run in tests/test_pipeline.py.
CASES = {
    "classification": ("text", SEQ, CLASSES, {}, lambda o, t: accuracy_score(t, o.argmax(1))),
    "classification_f1": ("text", SEQ, CLASSES, {}, lambda o, t: f1_score(t, o.argmax(1), average="macro")),
    "tabular": ("text", SEQ[:, :1, :], CLASSES, {},
                lambda o, t: roc_auc_score(t, _softmax(o.astype(np.float64)), multi_class="ovo")),
    "multilabel_auroc": ("text", SEQ, (SEQ[:, :4, 0] > 0).astype(np.int32), {"pos_weight": 4.0},
                         lambda o, t: np.mean([roc_auc_score(t[:, k], o[:, k]) for k in range(4)])),
    "multilabel_map": ("text", SEQ, (SEQ[:, :4, 1] > 0).astype(np.int32), {"pos_weight": 4.0},
                       lambda o, t: np.mean([average_precision_score(t[:, k], o[:, k]) for k in range(4)])),
    "regression": ("text", SEQ, SEQ.sum(axis=(1, 2)), {}, lambda o, t: r2_score(t, o)),
    "dense_1d": ("text", SEQ, 1.0 + np.cumsum(SEQ[:, :, 0], axis=1), {"normalize_targets": "global"}, _nrmse),
    "dense_2d": ("image", IMG, 1.0 + IMG[..., 0] ** 2, {}, _nrmse),
    "dense_2d_relative_l2": ("image", IMG, np.concatenate([IMG, 1 - IMG], -1), {"normalize_targets": "elementwise"},
                             _nrmse),  # the mean relative L2 equals the mean nRMSE
}


def smoke_config(bodies, body, **task):
    config = load_config_file(ROOT / "configs" / "own_data.py", "smoke")
    config.body.checkpoint = str(bodies[body])
    config.source.cache_dir = str(bodies["cache"])
    if body == "image":
        config.source.name = "digits"
    config.task.update(task)
    # MMD instead of OTDD: the align stage's kind-dependent part (true classes or pseudo-labels of the targets) at
    # less compile time; the OTDD programs are the same for every kind and tested in tests/ot and tests/train.
    config.align.objective = "mmd"
    return config


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_kind_aligns_refines_reports_an_honest_metric_and_its_model_is_usable(kind, bodies, tmp_path, capsys):
    body, x, y, options, reference = CASES[kind]
    task = task_from_arrays(x, y, kind=kind, val_fraction=0.25, test_fraction=0.25)
    config = smoke_config(bodies, body, **options)
    config.refine.finetune_method, config.refine.select = MODES[kind]
    summary = run(config, tmp_path / "work", task=task)
    assert summary["kind"] == kind
    assert np.isfinite(summary["align"]["distance_before"]) and np.isfinite(summary["align"]["distance_after"])
    refine = summary["refine"]
    saved = np.load(tmp_path / "work" / "test_outputs.npz")
    np.testing.assert_array_equal(saved["targets"], np.asarray(task.test.y).astype(saved["targets"].dtype))
    assert saved["outputs"].shape[0] == len(task.test)
    assert refine[f"test_{refine['metric']}"] == pytest.approx(reference(saved["outputs"], saved["targets"]),
                                                               rel=1e-5, abs=1e-6)
    assert "notes" in refine  # 24 validation examples: the run says selection on them is noisy
    check_the_runs_model(kind, task, tmp_path / "work", summary, bodies[body], tmp_path, capsys)


def test_loss_options_are_checked_against_the_loss(bodies, tmp_path):
    task = task_from_arrays(SEQ, CLASSES)
    config = smoke_config(bodies, "text", pos_weight=3.0)
    with pytest.raises(ValueError, match="task.pos_weight=3.0 weights binary cross-entropy, but the loss is "
                                         "'cross_entropy'"):
        run(config, tmp_path / "w", task=task)
