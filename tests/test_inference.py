"""Using a trained model: every task kind's run is loaded back and predicts exactly the test outputs the run saved,
evaluates to the test metric its summary reports, and exports to a directory that loads to identical outputs; the
exported bodies are Hugging Face checkpoints that transformers' PyTorch models load strictly and match; the command
lines refuse bad inputs and unusable directories with one message each and exit status 2.

Each kind is trained once (one refine epoch, no align stage, which prediction does not depend on) on the synthetic
data and tiny bodies of tests/test_task_kinds.py, and all checks of that kind's run are made in one test, so the
run is never trained twice, whichever pytest-xdist worker gets it. The fine-tune modes differ between kinds, so that
loading is checked for every split between trained and frozen parameters.
"""

import json
import re
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from orca_jax.config import base_config
from orca_jax.data import task_from_arrays
from orca_jax.inference import ModelError, export_model, load_model, write_task_record
from orca_jax.inference.model import config_from_json, predict_rows
from orca_jax.inference.record import command_line, read_task_record
from orca_jax.models.pretrained import ARCHITECTURES, load_checkpoint
from orca_jax.pipeline import build_model, run
from orca_jax.train.checkpoints import save_tree
from orca_jax.train.objective import make_objective
from orca_jax.weights import read_tensors
from orca_jax.weights.to_hf import render, to_checkpoint_tensors
from scripts import evaluate as evaluate_cli, export as export_cli, predict as predict_cli
from tests.test_task_kinds import CASES, SEQ, bodies, smoke_config  # noqa: F401  (bodies: a fixture)

# kind -> (refine.finetune_method, refine.select). Kinds sharing inputs and losses share a mode, and so programs.
MODES = {
    "classification": ("all", "best"),
    "classification_f1": ("all", "last"),
    "tabular": ("layernorm", "best"),
    "multilabel_auroc": ("non-attn", "best"),
    "multilabel_map": ("non-attn", "best"),
    "regression": ("frozen-body", "best"),
    "dense_1d": ("all", "best"),
    "dense_2d": ("frozen-body", "best"),
    "dense_2d_relative_l2": ("layernorm", "best"),
}


def _task(kind):
    _, x, y, _, _ = CASES[kind]
    return task_from_arrays(x, y, kind=kind, val_fraction=0.25, test_fraction=0.25)


def _config(bodies, kind):
    body, _, _, options, _ = CASES[kind]
    config = smoke_config(bodies, body, **options)
    config.align.update(epochs=0, objective="none")
    config.refine.epochs = 1
    config.refine.finetune_method, config.refine.select = MODES[kind]
    return config


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
    """scripts/evaluate.py, export.py and predict.py, run in-process, on the run's own test split."""
    np.savez(tmp_path / "test.npz", x=task.test.x, y=task.test.y)
    capsys.readouterr()
    assert evaluate_cli.main([f"--model={workdir}", f"--data=npz:{tmp_path / 'test.npz'}"]) == 0
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


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_runs_model_predicts_evaluates_and_exports_as_the_run_did(kind, bodies, tmp_path, capsys):  # noqa: F811
    task, workdir = _task(kind), tmp_path / "work"
    summary = run(_config(bodies, kind), workdir, task=task)
    saved = np.load(workdir / "test_outputs.npz")
    x, y = np.asarray(task.test.x), np.asarray(task.test.y)

    model = load_model(workdir)
    assert (model.kind, model.which, model.stage) == (kind, MODES[kind][1], "refine")
    predictions = model.predict(x)
    np.testing.assert_array_equal(predictions["outputs"], saved["outputs"])
    targets = model.info.objective().kind.targets
    if targets == "classes":
        np.testing.assert_allclose(predictions["probabilities"].sum(1), 1.0, rtol=1e-6)
        np.testing.assert_array_equal(predictions["classes"], saved["outputs"].argmax(1))
    elif targets == "multilabel":
        np.testing.assert_array_equal(predictions["labels"], saved["outputs"] >= 0)
    else:  # values, decoded to the targets' units: the model's own targets' scale, not the normalised one
        assert set(predictions) == {"outputs"} and predictions["outputs"].shape == y.shape

    metric = summary["refine"]["metric"]
    scores = model.evaluate(x, y)
    assert scores["metric"] == metric and scores["value"] == summary["refine"][f"test_{metric}"]
    assert len(scores["metrics"]) >= 2

    export_model(model, tmp_path / "export")
    exported = load_model(tmp_path / "export")
    np.testing.assert_array_equal(exported.predict(x)["outputs"], saved["outputs"])
    files = [p for p in (tmp_path / "export").rglob("*") if p.suffix in (".json", ".md")]
    assert not any(str(bodies[CASES[kind][0]]) in p.read_text() for p in files)  # nothing points at the body

    if kind == "classification_f1":  # select=last: loaded above from refine/, without the optimizer state
        with pytest.raises(ModelError, match="refine.select=last"):
            load_model(workdir, "best")
    if kind == "classification":
        _batch_shapes_do_not_follow_the_input_size(model, x, saved["outputs"])
        _command_lines_reproduce_the_run(workdir, task, summary, tmp_path, capsys)
    if kind in ("classification", "dense_2d"):  # the text body and the Swin body
        _hf_body_matches_transformers(exported)


@pytest.mark.parametrize("body", ["text", "image"])
def test_the_key_tables_read_backwards_give_the_checkpoint_back(body, bodies):  # noqa: F811
    """Every tensor of the body's save_pretrained file, byte for byte, from the loaded body's parameters: the names
    come from the loading rules themselves, so export and load cannot drift apart."""
    loaded = load_checkpoint(bodies[body])
    params = {".".join(map(str, path)): np.asarray(var.get_value())
              for path, var in nnx.to_flat_state(nnx.state(loaded.model, nnx.Param))}
    tensors = to_checkpoint_tensors(params, ARCHITECTURES[loaded.hf_config["model_type"]].key_table(loaded.config))
    original = read_tensors(bodies[body])
    assert sorted(tensors) == sorted(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(tensors[name], tensor, err_msg=name)
    assert render(r"encoder\.layer\.(\d+)\.attention\.(?:self\.query|q_proj)\.(?:weight|gamma)", {1: "3"}) == (
        "encoder.layer.3.attention.self.query.weight")


@pytest.fixture(scope="module")
def recorded(bodies, tmp_path_factory):  # noqa: F811
    """A workdir holding only what a run writes when it starts (config.json and the task record): enough for the
    input checks, which run before any model is built."""
    workdir = tmp_path_factory.mktemp("recorded")
    task = task_from_arrays(SEQ, (SEQ[:, 0, 0] > 0).astype(np.int64), kind="classification")
    config = base_config()
    config.body.checkpoint = str(bodies["text"])
    (workdir / "config.json").write_text(config.to_json_best_effort())
    write_task_record(workdir, task, make_objective(task, config.task), "none")
    return workdir


def test_the_task_record_keeps_the_commands_of_earlier_starts(recorded, tmp_path, monkeypatch):
    workdir = tmp_path / "resumed"
    shutil.copytree(recorded, workdir)
    first = read_task_record(workdir)
    task = task_from_arrays(SEQ, (SEQ[:, 0, 0] > 0).astype(np.int64), kind="classification")
    monkeypatch.setattr("sys.argv", ["/repo/scripts/train.py", "--config=c.py", "--config.refine.epochs=9"])
    write_task_record(workdir, task, make_objective(task, base_config().task), "none")
    again = read_task_record(workdir)
    assert again.command[-1] == "--config.refine.epochs=9" and again.earlier_commands == (first.command,)
    assert (again.input_shape, again.num_classes, again.examples) == ((12, 2), 2, {"train": 69, "val": 8, "test": 19})
    assert command_line(again.command) == "python scripts/train.py --config=c.py --config.refine.epochs=9"


_BAD_INPUTS = {
    "a wrong length": (np.zeros((4, 10, 2), np.float32), r"has example shape \(10, 2\); the model takes \[N, 12, 2\]"),
    "wrong channels": (np.zeros((4, 12, 3), np.float32), "It has 3 channels where the model was trained on 2"),
    "channels first": (np.zeros((4, 2, 12), np.float32), r"channels-first .* x.transpose\(0, 2, 1\)"),
    "no batch axis": (np.zeros((12, 2), np.float32), r"one example without the batch axis.*x\[None\]"),
    "text": (np.full((4, 12, 2), "a"), r"dtype <U1; .* as real numbers \(e.g. x.astype\(np.float32\)\)"),
    "NaN": (np.where(np.arange(96).reshape(4, 12, 2) == 7, np.nan, 0.0), r"1 NaN or infinite value \(the first at "
                                                                          r"index \(0, 3, 1\)\)"),
}


@pytest.mark.parametrize("case", sorted(_BAD_INPUTS))
def test_inputs_that_do_not_fit_are_refused_with_one_message_and_status_2(case, recorded, tmp_path, capsys):
    x, message = _BAD_INPUTS[case]
    np.savez(tmp_path / "new.npz", x=x)
    status = predict_cli.main([f"--model={recorded}", f"--inputs=npz:{tmp_path / 'new.npz'}",
                               f"--out={tmp_path / 'p.npz'}"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "p.npz").exists()


def test_directories_that_hold_no_usable_model_are_named(recorded, bodies, tmp_path, capsys):  # noqa: F811
    np.savez(tmp_path / "new.npz", x=np.zeros((2, 12, 2), np.float32))
    old = tmp_path / "old"
    shutil.copytree(recorded, old)
    (old / "task.json").unlink()
    cases = {
        tmp_path / "nothing": "neither an orca-jax workdir",
        bodies["text"]: "holds a Hugging Face checkpoint",
        old: "has no task.json.*Rerun the command that trained it",
        recorded: "the align-only run has no usable aligned_embedder",  # started, then stopped before any epoch
    }
    for directory, message in cases.items():
        status = predict_cli.main([f"--model={directory}", f"--inputs=npz:{tmp_path / 'new.npz'}",
                                   f"--out={tmp_path / 'p.npz'}"])
        err = capsys.readouterr().err
        assert status == 2 and re.search(message, err, flags=re.DOTALL), (directory, err)
    assert predict_cli.main([f"--model={recorded}", "--inputs=new.npz", f"--out={tmp_path / 'p.npz'}"]) == 2
    assert "give the arrays as npz:FILE.npz" in capsys.readouterr().err


def test_an_align_only_run_loads_but_will_not_predict(recorded, tmp_path, capsys):
    """refine.epochs=0: the aligned embedder loads (the features alignment produced), the untrained head is not
    used for predictions."""
    workdir = tmp_path / "aligned"
    shutil.copytree(recorded, workdir)
    saved = json.loads((workdir / "config.json").read_text())
    saved["align"]["epochs"], saved["align"]["objective"] = 1, "mmd"
    (workdir / "config.json").write_text(json.dumps(saved))
    config, info = config_from_json(saved), read_task_record(workdir)
    built = build_model(config, info, info.objective())
    aligned = jax.tree.map(lambda a: a + 1.0, nnx.state(built.embedder, nnx.Param))
    save_tree(workdir / "aligned_embedder", aligned)
    model = load_model(workdir)
    assert model.stage == "align" and model.which is None
    np.testing.assert_array_equal(model.model.embedder.projection.kernel[...],
                                  aligned["projection"]["kernel"][...])
    with pytest.raises(ModelError, match="never trained"):
        model.predict(np.zeros((2, 12, 2), np.float32))
    np.savez(tmp_path / "new.npz", x=np.zeros((2, 12, 2), np.float32))
    assert predict_cli.main([f"--model={workdir}", f"--inputs=npz:{tmp_path / 'new.npz'}",
                             f"--out={tmp_path / 'p.npz'}"]) == 2
    assert "refine.init_embedder" in capsys.readouterr().err
