"""PaRe: the gate's mixing against a direct NumPy construction, the decaying count, the straight-through gradient
reaching the gate (and only in the soft phase), and a PaRe refine stage on 8 devices equal to one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from orca_jax.parallel import make_mesh
from orca_jax.train.pare import PareParts, mix_tokens, replaced_count, soft_top_k
from tests.text_checkpoints import save_tiny_text_model
from tests.train.test_refine import make_model, params_of, refine, refine_config, tiny_task


def numpy_mix(target, source, target_scores, source_scores, k):
    """Per example: the k lowest-scored target positions, ascending, get the k highest-scored source tokens in
    ascending position order."""
    out = target.copy()
    for b in range(len(target)):
        replaced = np.sort(np.argsort(target_scores[b], kind="stable")[:k])
        chosen = np.sort(np.argsort(-source_scores[b], kind="stable")[:k])
        out[b, replaced] = source[b, chosen]
    return out


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_hard_mixing_equals_a_direct_construction(k):
    rng = np.random.default_rng(k)
    target, source = rng.normal(size=(2, 2, 7, 4)).astype(np.float32)
    target_scores, source_scores = rng.random((2, 2, 7)).astype(np.float32)
    got = mix_tokens(jnp.asarray(target), jnp.asarray(source), jnp.asarray(target_scores), jnp.asarray(source_scores),
                     jnp.asarray(k), soft=False)
    np.testing.assert_array_equal(np.asarray(got), numpy_mix(target, source, target_scores, source_scores, k))


def test_the_count_decays_linearly_from_start_to_end():
    counts = [replaced_count(e, 10, 64, 0.5, 0.0) for e in range(10)]
    assert counts == [32, 28, 25, 22, 19, 16, 12, 9, 6, 3]  # the official int(32 - 32 e / 10) for ECG
    # CIFAR-100's official begin_num 2000, end_num 1500 over 3,136 tokens: k = int(2000 - 1500 e / epochs).
    official = [int(2000 - 1500 * e / 20) for e in range(20)]
    assert [replaced_count(e, 20, 3136, 2000 / 3136, 500 / 3136) for e in range(20)] == official


def test_soft_top_k_is_exactly_k_hot_and_its_gradient_reaches_the_scores():
    scores = jnp.asarray(np.random.default_rng(0).random((3, 9)), jnp.float32)
    mask = soft_top_k(scores, jnp.asarray(4), 0.9, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(mask).sum(1), 4)
    assert set(np.unique(np.asarray(mask))) <= {0.0, 1.0}
    grad = jax.grad(lambda s: jnp.sum(soft_top_k(s, jnp.asarray(4), 0.9, jax.random.key(0)) * jnp.arange(9.0)))(scores)
    assert np.all(np.isfinite(grad)) and np.abs(np.asarray(grad)).max() > 0


def test_the_straight_through_gradient_reaches_the_gate_in_the_soft_phase_only():
    rng = np.random.default_rng(1)
    target, source = (jnp.asarray(a, jnp.float32) for a in rng.normal(size=(2, 2, 8, 5)))
    parts = PareParts(5, 5, 3, rngs=nnx.Rngs(0))
    weights = jnp.asarray(rng.normal(size=(2, 8, 5)), jnp.float32)

    def objective(gate, soft):
        scores = lambda tokens: jax.nn.sigmoid(gate(tokens)[..., 0])  # noqa: E731
        mixed = mix_tokens(target, source, scores(target), scores(source), jnp.asarray(3), soft=soft,
                           key=jax.random.key(2))
        return jnp.sum(mixed * weights)

    for soft in (True, False):
        grads = nnx.grad(lambda g: objective(g, soft))(parts.gate)
        largest = max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(grads))
        assert (largest > 0) == soft, (soft, largest)
    # The soft phase's values are the hard mixing's: the masks are 1 where they select.
    scores = lambda tokens: parts.scores(tokens)  # noqa: E731
    soft = mix_tokens(target, source, scores(target), scores(source), jnp.asarray(3), soft=True,
                      key=jax.random.key(2))
    kept = np.isin(np.asarray(soft), np.asarray(target)).all(-1)
    assert (~kept).sum(1).tolist() == [3, 3]


@pytest.fixture(scope="module")
def text_body(tmp_path_factory):
    return save_tiny_text_model("roberta", tmp_path_factory.mktemp("body"), tokenizer=True)


def pare_model(body_dir):
    model = make_model(body_dir)
    model.pare = PareParts(32, 32, 10, rngs=nnx.Rngs(5))  # python_docs: 10 classes
    return model


@pytest.mark.slow
def test_a_pare_refine_stage_trains_the_gate_and_on_8_devices_equals_one(text_body, tmp_path):
    task = tiny_task()
    config = refine_config(2, optimizer="sgd")
    config.body.checkpoint, config.source.name, config.source.size = str(text_body), "python_docs", 64
    config.refine.pare.update(enabled=True, start_fraction=0.5, end_fraction=0.0, soft_epochs=1)
    config.mesh.min_shard_bytes = 0
    one, eight = pare_model(text_body), pare_model(text_body)
    gate_before = np.asarray(one.pare.gate.kernel[...])
    r1 = refine(one, task, config, mesh=make_mesh(devices=jax.devices()[:1]), workdir=tmp_path / "1")
    r8 = refine(eight, task, config, mesh=make_mesh(), workdir=tmp_path / "8")
    assert np.abs(np.asarray(one.pare.gate.kernel[...]) - gate_before).max() > 0  # the soft epoch trained the gate
    np.testing.assert_allclose([h["train_loss"] for h in r8.history], [h["train_loss"] for h in r1.history],
                               rtol=1e-5)
    for a, b in zip(params_of(one), params_of(eight)):
        np.testing.assert_allclose(a, b, atol=1e-5)
