"""The simple baselines: each kind gets the baselines that fit it, each reaches the answer a task with a known one
has, its numbers are orca_jax's metric functions on its predictions, and the command line and the sweep write them
into their tables."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from orca_jax import baselines
from orca_jax.baselines import applicable, fit_baseline, fit_baselines
from orca_jax.config import load_config_file
from orca_jax.config_checks import ConfigError
from orca_jax.data import task_from_arrays
from orca_jax.pipeline import load_configured_task
from orca_jax.sweep.report import t_interval
from orca_jax.sweep.runner import run_sweep
from orca_jax.sweep.variants import Variant, apply_overrides
from orca_jax.train import metrics
from orca_jax.train.task_loss import make_task_loss
from tests.test_exit_status import DRIVER
from tests.test_task_kinds import ROOT


def _objective(task):
    return make_task_loss(task, load_config_file(ROOT / "configs" / "own_data.py").task)


def _separable(n=160, length=16, seed=0):
    """Sequences whose class is the side of a hyperplane they lie on, with a margin."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4 * n, length, 1)).astype(np.float32)
    s = x[..., 0] @ rng.normal(size=length)
    keep = np.abs(s) > 0.5 * s.std()
    return x[keep][:n], (s[keep][:n] > 0).astype(np.int64)


def _smooth(n=200, length=32, seed=0):
    """Zero-mean smooth random series [n, length, 1]."""
    noise = np.random.default_rng(seed).normal(size=(n, length + 4))
    return np.stack([noise[:, i:i + length] for i in range(5)]).mean(0)[..., None].astype(np.float32)


@pytest.fixture(scope="module")
def separable():
    x, y = _separable(n=400, length=8)
    return task_from_arrays(x, y, kind="classification", name="separable")


def test_each_kind_gets_its_baselines():
    x, y = _separable(n=40)
    labels = np.stack([y, 1 - y], axis=1)
    values = _smooth(n=40)
    tasks = {
        "classification": task_from_arrays(x, y),
        "tabular": task_from_arrays(x, y, kind="tabular"),
        "multilabel_auroc": task_from_arrays(x, labels, kind="multilabel_auroc"),
        "regression": task_from_arrays(x, values[:, 0, 0], kind="regression"),
        "dense_1d": task_from_arrays(values, values[..., 0], kind="dense_1d"),
        "dense_1d, two input channels": task_from_arrays(np.concatenate([values, values], -1), values[..., 0],
                                                         kind="dense_1d"),
    }
    expected = {
        "classification": ["logistic_regression", "mlp", "cnn", "minirocket"],
        "tabular": ["logistic_regression", "gradient_boosting"],
        "multilabel_auroc": ["one_vs_rest_logistic"],
        "regression": ["predict_mean", "least_squares"],
        "dense_1d": ["predict_mean", "predict_input", "least_squares"],
        "dense_1d, two input channels": ["predict_mean", "least_squares"],
    }
    for name, task in tasks.items():
        assert [n for n, why in applicable(task).items() if why is None] == expected[name], name
    assert applicable(tasks["dense_1d, two input channels"])["predict_input"] == (
        "inputs (32, 2) and targets (32,) differ in shape")
    with pytest.raises(ConfigError, match="unknown nope"):
        fit_baselines(tasks["dense_1d"], _objective(tasks["dense_1d"]), names=["nope"])
    with pytest.raises(ConfigError, match=r"not for task 'arrays': cnn \(not for kind 'dense_1d'\); predict_input "
                                          r"\(inputs \(32, 2\) and targets \(32,\) differ in shape\)"):
        two = tasks["dense_1d, two input channels"]
        fit_baselines(two, _objective(two), names=["cnn", "predict_input", "least_squares"])


def test_logistic_regression_separates_a_linearly_separable_task(separable):
    result = fit_baseline(separable, _objective(separable), "logistic_regression")
    assert (result.name, result.metric, result.val, result.test) == ("logistic_regression", "accuracy", 1.0, 1.0)
    assert result.params["C"] in (0.01, 0.1, 1.0, 10.0) and result.seconds > 0


def test_networks_learn_a_linearly_separable_task(separable, monkeypatch):
    for grid in ("MLP_WIDTHS", "CNN_WIDTHS", "WEIGHT_DECAYS"):  # one grid point each: most of the time is compiling
        monkeypatch.setattr(baselines, grid, getattr(baselines, grid)[:1])
    monkeypatch.setattr(baselines, "MAX_EPOCHS", 50)
    for name in ("mlp", "cnn"):
        result = fit_baseline(separable, _objective(separable), name)
        assert result.test >= 0.9, (name, result)  # chance is about 0.5
        assert 1 <= result.params["epoch"] <= result.params["epochs"]


@pytest.mark.slow  # numba compiles MiniRocket's transform once per environment (then cached): up to a minute
def test_minirocket_tells_frequencies_apart():
    rng = np.random.default_rng(0)
    y = np.arange(120) % 2
    t = np.arange(32)
    x = np.sin((1 + 3 * y[:, None]) * 2 * np.pi * t / 32 + rng.uniform(0, 6.3, (120, 1)))[..., None]
    task = task_from_arrays(x.astype(np.float32), y, kind="classification")
    result = fit_baseline(task, _objective(task), "minirocket")
    assert result.test == 1.0 and result.params["features"] == 9996


def test_tables_and_labels():
    x, y = _separable(n=120, length=6)
    tabular = task_from_arrays(x, y, kind="tabular")
    for name in ("logistic_regression", "gradient_boosting"):
        result = fit_baseline(tabular, _objective(tabular), name)
        assert result.metric == "auroc" and result.test > 0.9, result
    labels = np.stack([y, 1 - y, np.zeros_like(y)], axis=1)  # the last label is never positive
    multilabel = task_from_arrays(x, labels, kind="multilabel_auroc")
    result = fit_baseline(multilabel, _objective(multilabel), "one_vs_rest_logistic")
    assert result.metric == "mean_auroc" and result.test > 0.9


def test_dense_identity_baselines_and_their_metric():
    x = _smooth()
    task = task_from_arrays(x, x[..., 0], kind="dense_1d")
    report = fit_baselines(task, _objective(task))
    results = {r.name: r for r in report.results}
    assert report.metric == "nrmse" and report.not_applicable == {}
    assert results["predict_input"].test == 0.0 and results["predict_input"].val == 0.0
    assert results["least_squares"].test < 1e-3 and results["least_squares"].params == {"alpha": 1e-4}
    assert 0.95 < results["predict_mean"].test < 1.1  # zero-mean targets: the mean is about 0
    # The number is the metric function's on the baseline's predictions: the training targets' mean.
    y_test = np.asarray(task.test.y)
    mean = np.broadcast_to(np.asarray(task.train.y, np.float64).mean(0).astype(np.float32), y_test.shape)
    assert results["predict_mean"].test == metrics.nrmse(mean, y_test)


# ---------------------------------------------------------------------------------------- command line, sweep


@pytest.fixture(scope="module")
def identity_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("identity") / "identity.npz"
    x = _smooth(n=120)
    np.savez(path, x=x, y=x[..., 0])
    return path


def test_the_script_writes_the_table_and_refuses_a_bad_task(identity_file, tmp_path):
    w = f"--workdir={tmp_path / 'w'}"
    cases = [
        ["--config=configs/own_data.py", f"--task=npz:{identity_file}", "--config.task.kind=dense_1d", "--seed=3",
         "--baselines=predict_input,predict_mean", w],
        ["--task=nope", w],
        [w],
    ]
    done = subprocess.run([sys.executable, "-c", DRIVER, "scripts/baselines.py", json.dumps(cases)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (code, output), (bad_code, bad), (none_code, none) = json.loads(done.stdout.splitlines()[-1])
    assert code == 0, output
    table = (tmp_path / "w" / "baselines.md").read_text()
    assert table in output and "| predict_input | 0 | 0 | – |" in table and "seed 3" in table
    saved = json.loads((tmp_path / "w" / "baselines.json").read_text())
    assert [r["name"] for r in saved["results"]] == ["predict_input", "predict_mean"]
    assert (saved["seed"], saved["metric"], saved["identity"]["task_config"]["kind"]) == (3, "nrmse", "dense_1d")
    assert bad_code == 2 and "Traceback" not in bad and "Unknown task 'nope'" in bad and len(bad.splitlines()) == 1
    assert none_code == 2 and "give --task=NAME" in none and "Traceback" not in none


def _stub_run(config, workdir):
    """pipeline.run's stand-in: a finished run of a dense task, in the files the sweep reads."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    summary = {"task": "identity", "kind": "dense_1d", "body": "b",
               "refine": {"metric": "nrmse", "best_val_nrmse": 0.5, "test_nrmse": 0.6 + 0.01 * config.seed}}
    (workdir / "summary.json").write_text(json.dumps(summary))
    return summary


def test_the_sweep_reports_baselines_per_seed_beside_the_runs(identity_file, tmp_path, capsys):
    config = load_config_file(ROOT / "configs" / "own_data.py", "smoke")
    config.task.name, config.task.kind = f"npz:{identity_file}", "dense_1d"
    config.lock()
    records = run_sweep(config, [Variant("otdd-annealed", {})], [0, 1], tmp_path, run_fn=_stub_run, baselines=True)
    assert [(r.variant, r.seed, r.baseline) for r in records[:3]] == [
        ("otdd-annealed", 0, False), ("otdd-annealed", 1, False), ("baseline: predict_mean", 0, True)]
    assert "baselines seed 1: fitted in" in capsys.readouterr().out

    # Each seed's split is its runs' (the validation split moves with the seed), and its reports are kept.
    saved = {seed: json.loads((tmp_path / "baselines" / f"seed{seed}" / "baselines.json").read_text())
             for seed in (0, 1)}
    for seed in (0, 1):
        task = load_configured_task(apply_overrides(config, {"seed": seed}))
        assert saved[seed]["examples"] == {s: len(getattr(task, s)) for s in ("train", "val", "test")}
    means = [{r["name"]: r for r in saved[seed]["results"]}["predict_mean"] for seed in (0, 1)]
    assert means[0]["val"] != means[1]["val"]

    with open(tmp_path / "results.csv", newline="") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["otdd-annealed", "baseline: predict_mean", "baseline: predict_input",
                          "baseline: least_squares"]
    interval = t_interval([m["test"] for m in means])
    row = rows["baseline: predict_mean"]
    assert (row["baseline"], row["runs"], row["metric"], row["distance_mean"]) == ("True", "2", "nrmse", "")
    assert (float(row["test_mean"]), float(row["test_ci_low"]), float(row["test_ci_high"])) == pytest.approx(
        (interval.mean, interval.low, interval.high))
    md = (tmp_path / "results.md").read_text()
    assert "2 runs: 1 variants x seeds 0, 1." in md and "Rows `baseline: <name>`" in md
    assert "| baseline: predict_input | 2 | 0 | 0 [0, 0] | 0 [0, 0] | – |" in md

    # A rerun reuses the baselines of unchanged data.
    records = run_sweep(config, [Variant("otdd-annealed", {})], [0, 1], tmp_path, run_fn=_stub_run, baselines=True)
    assert {r.status for r in records if r.baseline} == {"skipped"}
    assert "baselines seed 0: fitted earlier, reused" in capsys.readouterr().out
