"""One align step and one refine step of a benchmark config end to end (`:smoke`, a tiny random body of the config's
family through --config.body.checkpoint), from tiny files in the published formats through the task's loader. The
test metric each run reports is recomputed from the test outputs it saved."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from sklearn.metrics import roc_auc_score

from orca_jax.config import load_config_file
from orca_jax.data.benchmarks import nb360
from orca_jax.pipeline import run
from tests.benchmarks import published
from tests.benchmarks.test_metrics import official_psicov_loops
from tests.benchmarks.test_openml import write_numeric
from tests.text_checkpoints import save_tiny_text_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bodies(tmp_path_factory):
    """Tiny random bodies, and one source-feature cache for all runs (each body's features are computed once)."""
    root = tmp_path_factory.mktemp("bodies")
    torch.manual_seed(0)
    transformers.SwinModel(transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                   num_heads=[2, 2], window_size=4)).save_pretrained(root / "swin")
    return {"text": save_tiny_text_model("roberta", root / "text", tokenizer=True), "image": root / "swin",
            "cache": root / "source_features"}


def _probabilities(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# One run per distinct path (each costs ~20 s of compilation): a text body on a 1D multi-label task (memory-mapped npz,
# BCE with pos_weight, mean AUROC), a text body on a tabular task (the openml cache, class-weighted CE, AUROC), Swin
# on a dense 2D task with per-example metadata (PSICOV: per-protein reads, clipped MSE, MAE8 with each length).
# name: (config, body, writer, metric, reference(outputs, targets, saved test outputs))
CASES = {
    "deepsea": ("nb360.py:deepsea,smoke", "text", lambda root: published.write_deepsea(root, n=24), "mean_auroc",
                lambda o, t, m: np.mean([roc_auc_score(t[:, k], o[:, k]) for k in range(36)
                                         if 0 < t[:, k].sum() < len(t)])),
    "openml": ("openml.py:1510,smoke", "text", lambda root: write_numeric(root, rows=100), "auroc",
               lambda o, t, m: roc_auc_score(t, _probabilities(o.astype(np.float64))[:, 1])),
    "psicov": ("nb360.py:psicov,smoke", "image",
               lambda root: published.write_psicov(root, {"deepcov": [40 + i for i in range(20)], "psicov": [45, 50]}),
               "psicov_mae8", lambda o, t, m: official_psicov_loops(o, t, m["meta_length"])),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_benchmark_config_aligns_and_refines_one_step(name, bodies, tmp_path, monkeypatch):
    config_name, body, write, metric, reference = CASES[name]
    if name == "psicov":  # the official 512 x 512 x 57 window is 60 MB an example: a smaller one for CI
        monkeypatch.setattr(nb360, "PSICOV_WINDOW", 64)
    write(tmp_path / "data")
    file, _, variant = config_name.partition(":")
    config = load_config_file(ROOT / "configs" / file, variant)
    config.task.data_dir = str(tmp_path / "data")
    config.body.checkpoint = str(bodies[body])
    config.source.cache_dir = str(bodies["cache"])
    # MMD instead of OTDD: the same align stage (pseudo-labels, class samples, embedder updates) at half the compile
    # time; the OTDD programs, ~10 s to compile each for any task, are tested in tests/train and tests/ot.
    config.align.objective = "mmd"
    summary = run(config, tmp_path / "work")
    assert np.isfinite(summary["align"]["distance_before"]) and np.isfinite(summary["align"]["distance_after"])
    refine = summary["refine"]
    assert refine["metric"] == metric
    saved = dict(np.load(tmp_path / "work" / "test_outputs.npz"))
    assert refine[f"test_{metric}"] == pytest.approx(reference(saved["outputs"], saved["targets"], saved), rel=1e-5)
    assert json.loads((tmp_path / "work" / "summary.json").read_text())["task"] == config.task.name
