"""Checks that a trained run's model can be used afterwards, made on every task kind's run of
tests/test_task_kinds.py (so that no kind is trained twice): it loads back, predicts exactly the test outputs the
run saved, evaluates to the test metric its summary reports, and exports to a directory that loads to identical
outputs; the exported bodies are Hugging Face checkpoints that transformers' PyTorch models load strictly and
match; the command lines reproduce the run. The kinds' runs use different fine-tune modes, so that loading is
checked for every split between trained and frozen parameters.
"""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from orca_jax.inference import ModelError, export_model, load_model
from orca_jax.inference.model import predict_rows
from orca_jax.models.lora import has_adapters
from scripts import evaluate as evaluate_cli, export as export_cli, predict as predict_cli

# kind -> (refine.finetune_method, refine.select). Kinds sharing inputs and losses share a mode, and so programs.
MODES = {
    "classification": ("all", "best"),
    "classification_f1": ("all", "last"),
    "tabular": ("layernorm", "best"),
    "multilabel_auroc": ("non-attn", "best"),
    "multilabel_map": ("non-attn", "best"),
    "regression": ("lora", "best"),
    "dense_1d": ("all", "best"),
    "dense_2d": ("frozen-body", "best"),
    "dense_2d_relative_l2": ("layernorm", "best"),
}


def _hf_body_matches_transformers(exported):
    """The exported body, loaded by transformers' AutoModel (nothing missing, unexpected or mis-shaped), computes
    what orca-jax's body computes, through the body's own embeddings."""
    ours, export_dir = exported.model.body, exported.path
    theirs, loading = transformers.AutoModel.from_pretrained(str(export_dir / "body"), output_loading_info=True)
    assert all(not loading[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    rng = np.random.default_rng(1)
    with torch.no_grad():
        if theirs.config.model_type == "swin":
            images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
            want = theirs.eval()(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).last_hidden_state
            got = ours(images).last_hidden_state
        else:
            ids = rng.integers(3, theirs.config.vocab_size, size=(2, 9))
            want = theirs.eval()(input_ids=torch.from_numpy(ids)).last_hidden_state
            got = ours(ids).last_hidden_state
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-5, rtol=0)


def _batch_shapes_do_not_follow_the_input_size(model, x, expected):
    """Any number of rows, streamed in padded batches of a few fixed shapes: one compiled program per shape of
    the ladder, not per input size."""
    for n in (1, 3, 5, 7):
        np.testing.assert_allclose(model.outputs(x[:n], batch_size=8), expected[:n], rtol=1e-6, atol=1e-6)
    assert model._prepared()[0]._cache_size() == 2  # 8 rows (1..8 examples on 8 devices) and the 16 of the split
    assert [predict_rows(n, 256) for n in (1, 2, 3, 5, 200, 300)] == [1, 2, 4, 8, 256, 256]


def _command_lines_reproduce_the_run(workdir, task, summary, tmp_path, capsys):
    """scripts/evaluate.py, export.py and predict.py, run in-process, on the run's own test split; evaluate with
    the workdir given relative to the current directory, as a user types it (Orbax restores only absolute paths)."""
    np.savez(tmp_path / "test.npz", x=task.test.x, y=task.test.y)
    capsys.readouterr()
    here = os.getcwd()
    os.chdir(workdir.parent)
    try:
        assert evaluate_cli.main([f"--model={workdir.name}", f"--data=npz:{tmp_path / 'test.npz'}"]) == 0
    finally:
        os.chdir(here)
    assert json.loads(capsys.readouterr().out)["value"] == summary["refine"]["test_accuracy"]
    export = tmp_path / "cli_export"
    assert export_cli.main([f"--workdir={workdir}", f"--out={export}"]) == 0
    card = (export / "README.md").read_text()
    for fact in ("classification", "accuracy", "[N, 12, 2]", f"{summary['refine']['test_accuracy']:.4g}",
                 "upload_folder", "AutoModel.from_pretrained"):
        assert fact in card
    capsys.readouterr()
    assert export_cli.main([f"--workdir={workdir}", f"--out={export}"]) == 2  # not over an earlier export
    assert "exists and is not empty" in capsys.readouterr().err
    out = tmp_path / "predictions.npz"
    assert predict_cli.main([f"--model={export}", f"--inputs=npz:{tmp_path / 'test.npz'}", f"--out={out}"]) == 0
    with np.load(out) as written:
        assert sorted(written.files) == ["classes", "outputs", "probabilities"]
        np.testing.assert_array_equal(written["outputs"], np.load(workdir / "test_outputs.npz")["outputs"])


def check_the_runs_model(kind, task, workdir, summary, body_dir, tmp_path, capsys):
    """The run's model, loaded back, predicts exactly its saved test outputs, evaluates to its summary's test
    metric and exports to identical outputs (tests/test_task_kinds.py calls this on each kind's run)."""
    saved = np.load(workdir / "test_outputs.npz")
    x, y = np.asarray(task.test.x), np.asarray(task.test.y)

    model = load_model(workdir)
    assert (model.kind, model.which, model.stage) == (kind, MODES[kind][1], "refine")
    predictions = model.predict(x)
    if MODES[kind][0] == "lora":  # the loaded model's adapters are merged: the same outputs up to float rounding
        assert not has_adapters(model.model)
        np.testing.assert_allclose(predictions["outputs"], saved["outputs"], rtol=1e-5, atol=1e-5)
        saved = {"outputs": predictions["outputs"]}
    else:
        np.testing.assert_array_equal(predictions["outputs"], saved["outputs"])
    targets = model.info.task_loss().kind.targets
    if targets == "classes":
        np.testing.assert_allclose(predictions["probabilities"].sum(1), 1.0, rtol=1e-6)
        np.testing.assert_array_equal(predictions["classes"], saved["outputs"].argmax(1))
    elif targets == "multilabel":
        np.testing.assert_array_equal(predictions["labels"], saved["outputs"] >= 0)
    else:  # values, decoded to the targets' units: the model's own targets' scale, not the normalised one
        assert set(predictions) == {"outputs"} and predictions["outputs"].shape == y.shape

    metric = summary["refine"]["metric"]
    scores = model.evaluate(x, y)
    assert scores["metric"] == metric
    rel = 1e-4 if MODES[kind][0] == "lora" else 0
    assert scores["value"] == pytest.approx(summary["refine"][f"test_{metric}"], rel=rel)
    assert len(scores["metrics"]) >= 2

    export_model(model, tmp_path / "export")
    exported = load_model(tmp_path / "export")
    np.testing.assert_array_equal(exported.predict(x)["outputs"], saved["outputs"])
    files = [p for p in (tmp_path / "export").rglob("*") if p.suffix in (".json", ".md")]
    assert not any(str(body_dir) in p.read_text() for p in files)  # nothing points at the body

    if kind == "classification_f1":  # select=last: loaded above from refine/, without the optimizer state
        with pytest.raises(ModelError, match="refine.select=last"):
            load_model(workdir, "best")
    if kind == "classification":
        _batch_shapes_do_not_follow_the_input_size(model, x, saved["outputs"])
        _command_lines_reproduce_the_run(workdir, task, summary, tmp_path, capsys)
    if kind in ("classification", "dense_2d"):  # the text body and the Swin body
        _hf_body_matches_transformers(exported)
