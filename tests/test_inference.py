"""Using a trained model, without training one: the key tables read backwards, the task record, and the command
lines refusing bad inputs and unusable directories with one message each and exit status 2. What a trained run's
model does (predict, evaluate, export, the exported body against transformers) is checked on every task kind's run
in tests/test_task_kinds.py (tests/inference_checks.py), so that no kind is trained twice.
"""

import json
import re
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from orca_jax.config import base_config
from orca_jax.data import task_from_arrays
from orca_jax.inference import ModelError, load_model, write_task_record
from orca_jax.inference.model import config_from_json
from orca_jax.inference.record import command_line, read_task_record
from orca_jax.models.pretrained import ARCHITECTURES, load_checkpoint
from orca_jax.pipeline import build_model
from orca_jax.train.checkpoints import save_tree
from orca_jax.train.task_loss import make_task_loss
from orca_jax.weights import read_tensors
from orca_jax.weights.to_hf import render, to_checkpoint_tensors
from scripts import predict as predict_cli
from tests.test_task_kinds import SEQ, bodies  # noqa: F401  (bodies: a fixture)


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
    write_task_record(workdir, task, make_task_loss(task, config.task), "none")
    return workdir


def test_the_task_record_keeps_the_commands_of_earlier_starts(recorded, tmp_path, monkeypatch):
    workdir = tmp_path / "resumed"
    shutil.copytree(recorded, workdir)
    first = read_task_record(workdir)
    task = task_from_arrays(SEQ, (SEQ[:, 0, 0] > 0).astype(np.int64), kind="classification")
    monkeypatch.setattr("sys.argv", ["/repo/scripts/train.py", "--config=c.py", "--config.refine.epochs=9"])
    write_task_record(workdir, task, make_task_loss(task, base_config().task), "none")
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
    built = build_model(config, info, info.task_loss())
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
