"""The refine stage: sharded steps equal single-device ones, and an interrupted run resumes to the same end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from orca_jax.config import base_config
from orca_jax.data.types import Split, Task
from orca_jax.train.task_loss import make_task_loss
from orca_jax.models import from_pretrained
from orca_jax.models.embedders import SequenceEmbedder
from orca_jax.models.heads import ClassificationHead
from orca_jax.models.orca import OrcaModel
from orca_jax.parallel import make_mesh
from orca_jax.train.finetune import trainable
from orca_jax.train.refine import evaluation_batch, evaluation_batches, run_refine
from tests.parallel.shards import bytes_per_device
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
    return run_refine(model, task, make_task_loss(task, config.task), config, **kwargs)


def make_model(body_dir, param_dtype=jnp.float32, dtype=jnp.float32):
    body = from_pretrained(body_dir, param_dtype=param_dtype, dtype=dtype)
    rngs = nnx.Rngs(0)
    return OrcaModel(SequenceEmbedder.from_body(body, 2, 12, target_seq_len=6, rngs=rngs), body,
                     ClassificationHead(32, 3, param_dtype=param_dtype, dtype=dtype, rngs=rngs))


def refine_config(epochs, optimizer="adamw", **refine):
    c = base_config()
    c.batch_size = 8
    c.optimizer.update(dict(name=optimizer, learning_rate=1e-3, weight_decay=1e-2))
    c.refine.update(dict(epochs=epochs, warmup_epochs=1, decay_epochs=4, clip=1.0, accum=2, **refine))
    return c


def params_of(model):
    return jax.tree.map(np.asarray, jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.slow
@pytest.mark.parametrize("data, fsdp, batch_size", [(8, 1, 6), (2, 4, 8)])
def test_refine_on_8_devices_equals_one_device(body_dir, tmp_path, data, fsdp, batch_size):
    # SGD: Adam's normalisation turns float32 reduction-order noise in near-zero gradients into O(lr) steps, which
    # would compare the summation order of the two programs rather than their sharding. A batch of 6 runs as 8 rows
    # on 8 devices, 2 of them masked padding: the same updates as 6 rows on one device.
    task = tiny_task()
    one, eight = make_model(body_dir), make_model(body_dir)
    config = refine_config(2, optimizer="sgd")
    config.batch_size = batch_size
    config.mesh.min_shard_bytes = 0  # the tiny model's tensors are all small: shard every divisible one
    r1 = refine(one, task, config, mesh=make_mesh(devices=jax.devices()[:1]), workdir=tmp_path / "1")
    r8 = refine(eight, task, config, mesh=make_mesh(data, fsdp), workdir=tmp_path / "8")
    assert jax.device_count() == 8
    np.testing.assert_allclose([h["train_loss"] for h in r8.history], [h["train_loss"] for h in r1.history],
                               rtol=1e-5)
    for a, b in zip(params_of(one), params_of(eight)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert r1.test == pytest.approx(r8.test, abs=1e-9)
    # The fine-tuned model keeps the run's layout: with fsdp = 4 each device holds about a quarter of the trained
    # parameters (the rest of the bytes: tensors with no dimension divisible by 4).
    trained = nnx.state(eight, trainable("all"))
    held = bytes_per_device(trained)
    whole = sum(leaf.nbytes for leaf in jax.tree.leaves(trained))
    assert len(held) == 8
    assert max(held.values()) / whole == pytest.approx(1 / fsdp, abs=0.05 if fsdp > 1 else 1e-9)


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



@pytest.mark.slow
def test_bfloat16_compute_over_float32_weights_keeps_updates_at_official_learning_rates(body_dir, tmp_path):
    """At lr 1e-6 (the official ECG/OpenML rates) an update is ~1e-6 of a weight of ~0.1, far below bfloat16's
    resolution (~4e-3 relative): float32 master weights keep every update, bfloat16 weights lose them."""
    task = tiny_task()
    config = refine_config(1)
    config.optimizer.learning_rate = 1e-6
    config.refine.clip = -1.0
    runs = {}
    for name, param_dtype, dtype in [("f32", jnp.float32, jnp.float32), ("mixed", jnp.float32, jnp.bfloat16),
                                     ("bf16", jnp.bfloat16, jnp.bfloat16)]:
        model = make_model(body_dir, param_dtype, dtype)
        before = nnx.state(model, trainable("all"))
        before = jax.tree.map(np.asarray, before)
        result = refine(model, task, config, mesh=make_mesh(), workdir=tmp_path / name)
        after = jax.tree.map(np.asarray, nnx.state(model, trainable("all")))
        changed = [bool(np.any(a != b)) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))]
        runs[name] = (result, changed, {a.dtype for a in jax.tree.leaves(after)})
    mixed, f32, bf16 = runs["mixed"], runs["f32"], runs["bf16"]
    assert mixed[2] == {np.dtype(np.float32)} and all(mixed[1]), "every trainable parameter moves"
    assert sum(bf16[1]) < len(bf16[1]) / 2, "in pure bfloat16 most parameters do not move at all"
    np.testing.assert_allclose(mixed[0].history[0]["train_loss"], f32[0].history[0]["train_loss"], rtol=2e-2)


@pytest.mark.parametrize("examples, limit, per_batch", [(400, 256, 200), (1000, 256, 250), (256, 256, 256),
                                                        (257, 256, 129), (5, 256, 5), (7, 2, 2)])
def test_evaluation_batches_are_as_few_as_the_limit_allows_and_even(examples, limit, per_batch):
    assert evaluation_batch(examples, limit) == per_batch
    batches = -(-examples // per_batch)
    assert per_batch <= limit and batches == -(-examples // limit) and batches * per_batch - examples < batches


def test_the_test_split_reuses_the_validation_batch_unless_that_is_less_than_half_its_own():
    assert evaluation_batches(400, 1000, 256) == (200, 200)  # mnist1d: one compiled evaluation step
    assert evaluation_batches(300, 300, 256) == (150, 150)
    assert evaluation_batches(20, 10_000, 256) == (20, 250)  # not 500 batches of 20
