"""The align stage: official sampling, it lowers the distance, trains only the embedder, shards, resumes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from orca_jax.config import base_config
from orca_jax.models import from_pretrained
from orca_jax.models.embedders import SequenceEmbedder
from orca_jax.models.heads import ClassificationHead
from orca_jax.models.orca import OrcaModel
from orca_jax.parallel import make_mesh
from orca_jax.train.align import ClassSampler, load_aligned_embedder, run_align
from tests.image_checkpoints import save_tiny_swin
from tests.text_checkpoints import save_tiny_text_model

OPTIMIZER = ConfigDict(dict(name="adamw", learning_rate=1e-3, weight_decay=0.0, momentum=0.9, b1=0.9, b2=0.98,
                            eps=1e-8))


def align_config(epochs, **overrides):
    """The whole config an align run reads: its align section as given, the test's optimizer, batches of 8."""
    config = base_config()
    config.align.update(dict(epochs=epochs, maxsamples=24, checkpoint_every=2, **overrides))
    config.optimizer.update(OPTIMIZER)
    config.batch_size = 8
    return config


@pytest.fixture(scope="module")
def body_dir(tmp_path_factory):
    return save_tiny_text_model("roberta", tmp_path_factory.mktemp("body"))


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    x = (rng.normal(size=(120, 20, 2)) + y[:, None, None]).astype(np.float32)
    # Source features: 4 labelled clusters at the scale of the body's embedding outputs.
    src_y = rng.integers(0, 4, 400)
    src_x = (rng.normal(size=(400, 32)) * 0.5 + np.eye(4, 32)[src_y] * 2).astype(np.float32)
    return x, y, (src_x, src_y)


def make_model(body_dir):
    body = from_pretrained(body_dir)
    rngs = nnx.Rngs(0)
    embedder = SequenceEmbedder.from_body(body, 2, 20, target_seq_len=10, rngs=rngs)
    return OrcaModel(embedder, body, ClassificationHead(32, 3, rngs=rngs))


def align(model, task, workdir, epochs, mesh=None, **overrides):
    x, y, source = task
    return run_align(model, x, y, source, align_config(epochs, **overrides), mesh=mesh or make_mesh(),
                     workdir=workdir)


def test_sampler_follows_the_official_exceed_maxsamples_rule():
    labels = np.array([0] * 3 + [1] * 50 + [2] * 200 + [3])
    sampler = ClassSampler.build(labels, maxsamples=40, batch_size=16, multiple_of=8)
    np.testing.assert_array_equal(sampler.classes, [0, 1, 2])  # class 3 has one example: skipped
    np.testing.assert_array_equal(sampler.draw, [3, 48, 48])  # batches of 16 until more than 40
    np.testing.assert_allclose(sampler.weights, np.array([3, 50, 200]) / labels.size)
    assert sampler.width == 48
    index, mask = sampler.sample(np.random.default_rng(0))
    np.testing.assert_array_equal(mask.sum(1), [3, 48, 48])
    for row, c in enumerate(sampler.classes):
        real = index[row][mask[row]]
        assert (labels[real] == c).all() and len(set(real)) == len(real)


def test_align_lowers_the_distance_and_trains_only_the_embedder(body_dir, task, tmp_path):
    model = make_model(body_dir)
    frozen_before = nnx.state(model, nnx.Not(nnx.PathContains("embedder")))
    embedder_before = nnx.state(model.embedder, nnx.Param)
    frozen_before, embedder_before = jax.tree.map(np.array, (frozen_before, embedder_before))
    result = align(model, task, tmp_path, epochs=8)
    assert result.distance_after < 0.9 * result.distance_before, result
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(nnx.state(model, nnx.Not(nnx.PathContains("embedder"))))):
        np.testing.assert_array_equal(a, b)
    changed = [np.abs(a - np.asarray(b)).max() > 0 for a, b in
               zip(jax.tree.leaves(embedder_before), jax.tree.leaves(nnx.state(model.embedder, nnx.Param)))]
    assert all(changed)
    lines = (tmp_path / "align_metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 9))
    assert (tmp_path / "align_distance.png").stat().st_size > 1000
    assert list((tmp_path / "tensorboard" / "align").glob("events.out.tfevents.*"))
    fresh = make_model(body_dir)
    assert load_aligned_embedder(fresh, tmp_path)
    for a, b in zip(jax.tree.leaves(nnx.state(fresh.embedder)), jax.tree.leaves(nnx.state(model.embedder))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_align_on_8_devices_equals_one_device(body_dir, task, tmp_path):
    one = make_model(body_dir)
    eight = make_model(body_dir)
    r1 = align(one, task, tmp_path / "one", epochs=3, mesh=make_mesh(devices=jax.devices()[:1]))
    r8 = align(eight, task, tmp_path / "eight", epochs=3, mesh=make_mesh())
    assert jax.device_count() == 8
    np.testing.assert_allclose([h["distance"] for h in r8.history], [h["distance"] for h in r1.history], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(nnx.state(one.embedder)), jax.tree.leaves(nnx.state(eight.embedder))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.slow
def test_interrupted_align_resumes_to_the_same_result(body_dir, task, tmp_path):
    whole = make_model(body_dir)
    align(whole, task, tmp_path / "whole", epochs=4)
    resumed = make_model(body_dir)
    align(resumed, task, tmp_path / "parts", epochs=2)  # "crash" after 2 epochs (checkpoint_every=2)
    again = make_model(body_dir)  # a new process: fresh model, same workdir
    result = align(again, task, tmp_path / "parts", epochs=4)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    for a, b in zip(jax.tree.leaves(nnx.state(whole.embedder)), jax.tree.leaves(nnx.state(again.embedder))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def _swin_model(tmp_path):
    from orca_jax.models.embedders import ImageEmbedder

    save_tiny_swin(tmp_path / "swin", image_size=224, embed_dim=8, depths=(1, 1), num_heads=(1, 1), window_size=7)
    body = from_pretrained(tmp_path / "swin")
    rngs = nnx.Rngs(0)
    return OrcaModel(ImageEmbedder.from_body(body, 3, rngs=rngs), body, ClassificationHead(16, 3, rngs=rngs))


@pytest.mark.slow
def test_a_streamed_align_step_bounds_memory_by_a_chunk_and_equals_the_whole_step(tmp_path):
    """2D inputs resized to 224 x 224 (3,136 patch tokens each), 8 samples per class: the whole-batch step's
    temporary memory grows with the number of classes; the streamed step's programs do not."""
    import optax

    from orca_jax.ot import MMDLoss
    from orca_jax.train.align import AlignStep
    from orca_jax.train.finetune import align_trainable

    model = _swin_model(tmp_path)
    graphdef, embedder, rest = nnx.split(model, align_trainable(), ...)
    optimizer = optax.adamw(1e-3)
    objective = MMDLoss.build(np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32))
    key, mesh = jax.random.key(0), make_mesh()
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(60, 32, 32, 3)).astype(np.float32)
    whole, streamed = AlignStep(graphdef, optimizer, x, mesh, 0), AlignStep(graphdef, optimizer, x, mesh, 3)

    def temp_bytes(program, *args):
        return program.lower(*args).compile().memory_analysis().temp_size_in_bytes

    def shape(*dims):
        return jax.ShapeDtypeStruct(dims, np.float32)

    opt_state = optimizer.init(embedder)
    whole_bytes = {c: temp_bytes(whole._fused, embedder, rest, opt_state, objective, shape(c, 8, 32, 32, 3),
                                 jax.ShapeDtypeStruct((c, 8), bool), shape(c), key) for c in (10, 100)}
    chunk = temp_bytes(streamed._features, embedder, rest, shape(3, 8, 32, 32, 3)) + temp_bytes(
        streamed._pullback, embedder, rest, shape(3, 8, 32, 32, 3), shape(3, 8, 8))
    losses = {c: temp_bytes(streamed._objective, objective, shape(c, 8, 8), jax.ShapeDtypeStruct((c, 8), bool),
                            shape(c), key) for c in (10, 100)}
    assert whole_bytes[100] > 5 * whole_bytes[10], whole_bytes  # all classes at once: ~10x
    assert chunk + losses[100] < 1.5 * (chunk + losses[10]), (chunk, losses)  # bounded by a chunk
    assert chunk + losses[100] < whole_bytes[100] / 5

    # 7 classes of 8 samples in chunks of 3 (the last padded): the same distance and the same update.
    sample = {"index": rng.permutation(60)[:56].reshape(7, 8), "mask": np.ones((7, 8), bool)}
    sample["mask"][6, 5:] = False
    weights = np.full(7, 1 / 7, np.float32)
    np.testing.assert_allclose(float(whole.distance(embedder, rest, objective, sample, weights, key)),
                               float(streamed.distance(embedder, rest, objective, sample, weights, key)), rtol=1e-5)
    copies = [jax.tree.map(jnp.copy, embedder) for _ in range(2)]
    results = [step(e, rest, optimizer.init(e), objective, sample, weights, key)
               for step, e in zip((whole, streamed), copies)]
    np.testing.assert_allclose(float(results[0][2]), float(results[1][2]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_l2_objective_is_the_mean_distance_to_randomly_paired_source_points():
    from orca_jax.ot.l2 import L2Loss

    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 6)).astype(np.float32)
    tgt = rng.normal(size=(3, 5, 6)).astype(np.float32)
    mask = np.ones((3, 5), bool)
    mask[2, 3:] = False
    tgt[2, 3:] = np.nan  # padding may hold anything
    weights = np.array([0.5, 0.3, 0.2], np.float32)
    key = jax.random.key(3)
    idx = np.asarray(jax.random.randint(key, (3, 5), 0, 50))
    expected = sum(w * np.mean(np.linalg.norm(tgt[c][mask[c]] - src[idx[c][mask[c]]], axis=1))
                   for c, w in enumerate(weights))
    loss = L2Loss.build(src)
    np.testing.assert_allclose(float(loss.value(tgt, mask, weights, key=key)), expected, rtol=1e-5)
    value, grad = loss(tgt, mask, weights, key=key)  # the call every align distance has (ot/distance.py)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    diff = np.nan_to_num(tgt) - src[idx]  # d/dt of w_c · mean ‖t − s‖ is w_c / n_c · (t − s) / ‖t − s‖
    by_hand = weights[:, None, None] / mask.sum(1)[:, None, None] * diff / np.linalg.norm(diff, axis=-1)[..., None]
    np.testing.assert_allclose(np.asarray(grad), np.where(mask[..., None], by_hand, 0.0), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="draws source points at random: pass key="):
        loss(tgt, mask, weights)
