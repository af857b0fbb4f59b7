"""A benchmark config end to end (`:smoke`, a tiny random body of the config's family through
--config.body.checkpoint), from tiny files in the published format through the task's loader, with the test metric
it reports recomputed from the test outputs it saved."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from orca_jax.config import load_config_file
from orca_jax.data.benchmarks.nb360 import psicov
from orca_jax.pipeline import run
from tests.benchmarks import published
from tests.benchmarks.test_metrics import official_psicov_loops
from tests.image_checkpoints import save_tiny_swin

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_psicov_smoke_config_aligns_and_refines_from_published_files(tmp_path, monkeypatch):
    """The path the kinds' runs (tests/test_task_kinds.py) do not take: Swin on a dense 2D task through its loader's
    per-protein reads, clipped MSE, and per-example metadata reaching the metric (MAE8 with each protein's length).
    Every config's own model and steps: tests/benchmarks/test_configs.py."""
    torch.manual_seed(0)
    save_tiny_swin(tmp_path / "swin")
    monkeypatch.setattr(psicov, "PSICOV_WINDOW", 64)  # the official 512 x 512 x 57 window is 60 MB an example
    published.write_psicov(tmp_path / "data", {"deepcov": [40 + i for i in range(20)], "psicov": [45, 50]})
    config = load_config_file(ROOT / "configs" / "nb360.py", "psicov,smoke")
    config.task.data_dir = str(tmp_path / "data")
    config.body.checkpoint = str(tmp_path / "swin")
    config.source.cache_dir = str(tmp_path / "source_features")
    # MMD instead of OTDD: the same align stage (pseudo-labels, class samples, embedder updates) at half the compile
    # time; the OTDD programs, ~10 s to compile each for any task, are tested in tests/train and tests/ot.
    config.align.objective = "mmd"
    summary = run(config, tmp_path / "work")
    assert np.isfinite(summary["align"]["distance_before"]) and np.isfinite(summary["align"]["distance_after"])
    refine = summary["refine"]
    assert refine["metric"] == "psicov_mae8"
    saved = dict(np.load(tmp_path / "work" / "test_outputs.npz"))
    expected = official_psicov_loops(saved["outputs"], saved["targets"], saved["meta_length"])
    assert refine["test_psicov_mae8"] == pytest.approx(expected, rel=1e-5)
    assert json.loads((tmp_path / "work" / "summary.json").read_text())["task"] == config.task.name
