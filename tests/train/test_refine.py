"""The refine stage: sharded steps equal single-device ones, and an interrupted run resumes to the same end."""

import jax
import numpy as np
import pytest
from flax import nnx

from orca_jax.config import base_config
from orca_jax.data.tasks import Split, Task
from orca_jax.train.objective import make_objective
from orca_jax.models import from_pretrained
from orca_jax.models.embedders import SequenceEmbedder
from orca_jax.models.heads import ClassificationHead
from orca_jax.models.orca import OrcaModel
from orca_jax.parallel import make_mesh
from orca_jax.train.refine import run_refine
from tests.text_checkpoints import save_tiny_text_model


@pytest.fixture(scope="module")
def body_dir(tmp_path_factory):
    return save_tiny_text_model("roberta", tmp_path_factory.mktemp("body"))


def tiny_task(n_train=44):
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 3, n).astype(np.int32)
        return Split((rng.normal(size=(n, 12, 2)) + y[:, None, None]).astype(np.float32), y)

    return Task("tiny", split(n_train), split(16), split(16), "NLC", "classification", 3)


def refine(model, task, config, **kwargs):
    return run_refine(model, task, make_objective(task, config.task), config, **kwargs)


def make_model(body_dir):
    body = from_pretrained(body_dir)
    rngs = nnx.Rngs(0)
    return OrcaModel(SequenceEmbedder.from_body(body, 2, 12, target_seq_len=6, rngs=rngs), body,
                     ClassificationHead(32, 3, rngs=rngs))


def refine_config(epochs, optimizer="adamw", **refine):
    c = base_config()
    c.batch_size = 8
    c.optimizer.update(dict(name=optimizer, learning_rate=1e-3, weight_decay=1e-2))
    c.refine.update(dict(epochs=epochs, warmup_epochs=1, decay_epochs=4, clip=1.0, accum=2, **refine))
    return c


def params_of(model):
    return jax.tree.map(np.asarray, jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.slow
def test_refine_on_8_devices_equals_one_device(body_dir, tmp_path):
    # SGD: Adam's normalisation turns float32 reduction-order noise in near-zero gradients into O(lr) steps, which
    # would compare the summation order of the two programs rather than their sharding.
    task = tiny_task()
    one, eight = make_model(body_dir), make_model(body_dir)
    config = refine_config(2, optimizer="sgd")
    r1 = refine(one, task, config, mesh=make_mesh(devices=jax.devices()[:1]), workdir=tmp_path / "1")
    r8 = refine(eight, task, config, mesh=make_mesh(), workdir=tmp_path / "8")
    assert jax.device_count() == 8
    np.testing.assert_allclose([h["train_loss"] for h in r8.history], [h["train_loss"] for h in r1.history],
                               rtol=1e-5)
    for a, b in zip(params_of(one), params_of(eight)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert r1.test == r8.test


@pytest.mark.slow
def test_interrupted_refine_resumes_to_the_same_parameters(body_dir, tmp_path):
    task = tiny_task()
    whole = make_model(body_dir)
    full = refine(whole, task, refine_config(3), mesh=make_mesh(), workdir=tmp_path / "whole")
    refine(make_model(body_dir), task, refine_config(1), mesh=make_mesh(), workdir=tmp_path / "parts")
    resumed = make_model(body_dir)  # a new process: fresh model, same workdir
    again = refine(resumed, task, refine_config(3), mesh=make_mesh(), workdir=tmp_path / "parts")
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    np.testing.assert_allclose([h["train_loss"] for h in again.history], [h["train_loss"] for h in full.history],
                               rtol=1e-6)
    for a, b in zip(params_of(whole), params_of(resumed)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert (tmp_path / "whole" / "refine_metrics.jsonl").read_text().count("\n") == 3
    # The resumed run's JSONL is rewritten from the checkpointed history: three lines, not four.
    assert (tmp_path / "parts" / "refine_metrics.jsonl").read_text().count("\n") == 3
    assert list((tmp_path / "parts" / "tensorboard" / "refine").glob("events.out.tfevents.*"))


def test_batch_size_must_divide_over_the_devices(body_dir, tmp_path):
    config = refine_config(1)
    config.batch_size = 6
    with pytest.raises(ValueError, match="batch_size=6 does not divide over the mesh's 8"):
        refine(make_model(body_dir), tiny_task(), config, mesh=make_mesh(), workdir=tmp_path)
