"""The configs run end to end through the pipeline and the command line (smoke variants, offline)."""

import json
from pathlib import Path

import pytest

from orca_jax.config import load_config_file
from orca_jax.pipeline import run
from tests.image_checkpoints import TWO_STAGES, save_tiny_swin

ROOT = Path(__file__).resolve().parents[1]


def load_config(name, variant="smoke"):
    return load_config_file(ROOT / "configs" / f"{name}.py", variant)


@pytest.mark.slow
def test_digits_smoke_runs_the_2d_path_on_a_tiny_swin_with_label_matching(tmp_path):
    save_tiny_swin(tmp_path / "swin", **TWO_STAGES)
    config = load_config("digits")
    config.body.checkpoint = str(tmp_path / "swin")
    config.source.cache_dir = str(tmp_path / "cache")
    config.align.label_matching.update(epochs=2, head_steps=20)  # the Swin body's pooled source features
    summary = run(config, tmp_path / "work")
    assert set(summary["align"]) >= {"distance_before", "distance_after"}
    assert set(summary["label_matching"]) >= {"loss_before", "loss_after", "source_head_accuracy"}
    assert (tmp_path / "work" / "aligned_embedder").is_dir()
    assert (tmp_path / "work" / "label_matching_summary.json").is_file()


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="Unknown variant 'tiny'"):
        load_config("mnist1d", "tiny")


def test_align_labels_are_pseudo_labels_for_tasks_without_classes():
    import dataclasses

    import numpy as np

    from orca_jax.data.tasks import load_task

    from orca_jax.data.types import Split
    from orca_jax.pipeline import align_labels

    task = load_task("mnist1d")
    np.testing.assert_array_equal(align_labels(task, 0), task.train.y)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 6)) * 10
    targets = centres[np.arange(400) % 10] + rng.normal(size=(400, 6))  # dense regression targets, 10 clusters
    dense = dataclasses.replace(task, train=Split(task.train.x[:400], targets.astype(np.float32)), kind="regression")
    labels = align_labels(dense, 0)
    assert labels.shape == (400,) and len(np.unique(labels)) == 10
    # k-means recovers the clusters: examples of one centre share one pseudo-label.
    for c in range(10):
        assert len(np.unique(labels[np.arange(400) % 10 == c])) == 1


@pytest.mark.slow
def test_demo_smoke_aligns_with_the_packaged_minilm_then_refines(tmp_path):
    config = load_config("demo")
    config.source.cache_dir = str(tmp_path / "cache")
    summary = run(config, tmp_path / "work")
    assert summary["align"]["distance_after"] < summary["align"]["distance_before"]
    refine = summary["refine"]
    assert refine["metric"] == "accuracy" and 0.0 <= refine["test_accuracy"] <= 1.0
    for name in ("summary.json", "config.json", "align_metrics.jsonl", "align_distance.png", "align_summary.json",
                 "refine_metrics.jsonl"):
        assert (tmp_path / "work" / name).is_file(), name
    assert (tmp_path / "work" / "aligned_embedder").is_dir() and (tmp_path / "work" / "refine_best").is_dir()
    assert json.loads((tmp_path / "work" / "summary.json").read_text()) == summary


def test_a_random_body_has_the_architecture_not_the_weights(tmp_path):
    import jax
    import numpy as np
    from flax import nnx

    from orca_jax.config import load_config_file
    from orca_jax.data import task_from_arrays
    from orca_jax.data.source_features import cache_key
    from orca_jax.pipeline import build_model
    from orca_jax.train.task_loss import make_task_loss
    from tests.text_checkpoints import save_tiny_text_model

    body_dir = save_tiny_text_model("roberta", tmp_path / "body", tokenizer=True)
    x = np.random.default_rng(0).normal(size=(40, 12, 2)).astype(np.float32)
    task = task_from_arrays(x, np.arange(40) % 2)
    config = load_config_file(ROOT / "configs" / "own_data.py", "smoke")
    config.body.checkpoint = str(body_dir)
    models = {}
    for init in ("pretrained", "random"):
        config.body.init = init
        models[init] = build_model(config, task, make_task_loss(task, config.task))
    pretrained, random = (jax.tree.leaves(nnx.state(models[k].body, nnx.Param)) for k in ("pretrained", "random"))
    assert [a.shape for a in pretrained] == [b.shape for b in random]
    assert sum(not np.array_equal(a, b) for a, b in zip(pretrained, random)) > len(pretrained) // 2
    # Their source features are cached apart.
    keys = [cache_key(body_dir, "python_docs", size=10, seed=0, weights=w) for w in ("pretrained", "random-seed0")]
    assert keys[0] != keys[1]


@pytest.mark.slow
def test_without_an_align_stage_the_starting_embedders_distance_is_measured(tmp_path):
    import numpy as np

    from orca_jax.config import load_config_file
    from orca_jax.data import task_from_arrays
    from tests.text_checkpoints import save_tiny_text_model

    body_dir = save_tiny_text_model("roberta", tmp_path / "body", tokenizer=True)
    x = np.random.default_rng(0).normal(size=(64, 12, 2)).astype(np.float32)
    task = task_from_arrays(x, (x[:, :, 0].mean(1) > 0).astype(int))
    summaries = {}
    for epochs in (0, 1):
        config = load_config_file(ROOT / "configs" / "own_data.py", "smoke")
        config.body.checkpoint, config.source.cache_dir = str(body_dir), str(tmp_path / "cache")
        config.align.update(dict(epochs=epochs, objective="mmd"))
        config.embedder.init, config.refine.epochs = "body", 0
        summaries[epochs] = run(config, tmp_path / f"w{epochs}", task=task)
    unaligned = summaries[0]["align"]
    assert unaligned["epochs"] == 0 and unaligned["distance_before"] == unaligned["distance_after"]
    # The same embedder (copied from the body) measured on the same fixed sample as an align run's "before".
    assert unaligned["distance_before"] == pytest.approx(summaries[1]["align"]["distance_before"], rel=1e-6)


def test_pseudo_labels_of_targets_too_large_for_memory_are_learned_chunk_by_chunk(monkeypatch):
    import importlib

    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    module = importlib.import_module("orca_jax.ot.pseudo_labels")
    rng = np.random.default_rng(0)
    truth = np.arange(600) % 10
    targets = (rng.normal(size=(10, 50)) * 10)[truth] + rng.normal(size=(600, 50))
    reads = []

    class Lazy:  # a reader that must not be read whole
        shape, dtype = targets.shape, targets.dtype

        def __len__(self):
            return len(targets)

        def __getitem__(self, rows):
            reads.append(rows)
            return targets[rows]

    monkeypatch.setattr(module, "IN_MEMORY_BYTES", targets.size * 4 // 5)  # five chunks' worth
    labels = module.pseudo_labels(Lazy(), seed=0)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert reads and all(isinstance(r, slice) and r.stop - r.start <= 121 for r in reads)
