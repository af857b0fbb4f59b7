"""Sharding by rules on 8 fake CPU devices, mesh data=2 x fsdp=4: which spec each rule gives, memory per device
measured from the arrays' shards, and sharded train steps equal to the one-device computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from orca_jax.models import lora
from orca_jax.models.embedders import SequenceEmbedder
from orca_jax.models.heads import ClassificationHead
from orca_jax.models.orca import OrcaModel
from orca_jax.models.text_encoder import TextEncoder, TextEncoderConfig
from orca_jax.parallel import (
    init_optimizer,
    make_mesh,
    optimizer_shardings,
    param_shardings,
    place,
    replicated,
)
from orca_jax.param_paths import path_name
from orca_jax.train.finetune import trainable
from orca_jax.train.optimizers import refine_optimizer
from tests.parallel.shards import born_sharded, bytes_per_device


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(data=2, fsdp=4)


def tiny_orca_model(mode="all"):
    config = TextEncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=40, pad_token_id=1,
                               padding_offset_positions=True, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
    body, rngs = TextEncoder(config, rngs=nnx.Rngs(0)), nnx.Rngs(1)
    embedder = SequenceEmbedder.from_body(body, 4, 16, target_seq_len=8, rngs=rngs)
    if mode == "lora":  # as pipeline.build_model adds them
        lora.add_adapters(body, rank=4, alpha=8.0, rngs=nnx.Rngs(2))
    return OrcaModel(embedder, body, ClassificationHead(32, 4, rngs=rngs))


def model_params():
    return nnx.state(tiny_orca_model(), nnx.Param)


def model_parts(mode):
    """(graphdef, trainable, frozen): the tiny model split as the refine stage splits it in fine-tune `mode`."""
    return nnx.split(tiny_orca_model(mode), trainable(mode), ...)


def specs(shardings) -> dict[str, P]:
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {path_name(path): sharding.spec for path, sharding in flat}


def finetune_optimizer(name, accum=2):
    # eps 1e-3, not 1e-8: Adam would turn the rounding noise of gradients that are exactly 0 in theory (a key bias,
    # which softmax ignores) into learning-rate-sized steps of either sign, different in each layout.
    opt = ConfigDict(dict(name=name, learning_rate=1e-2, weight_decay=0.01, momentum=0.9, b1=0.9, b2=0.98, eps=1e-3))
    refine = ConfigDict(dict(accum=accum, clip=1.0, warmup_epochs=1, decay_epochs=3))
    return refine_optimizer(opt, refine, steps_per_epoch=4)


def abstract(**shapes):
    return {name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in shapes.items()}


def test_fsdp_splits_the_largest_dividing_dimension_and_falls_back_to_replication(mesh):
    tree = abstract(wide=(6, 8), tall=(12, 8), square=(8, 8), odd=(6, 3), scalar=(), small=(4, 4))
    got = specs(param_shardings(tree, mesh, min_shard_bytes=65))
    assert got == {"wide": P(None, "fsdp"), "tall": P("fsdp", None), "square": P("fsdp", None), "odd": P(),
                   "scalar": P(), "small": P()}  # small: 64 bytes, under the threshold
    assert set(specs(param_shardings(tree, make_mesh(data=8, fsdp=1))).values()) == {P()}


def test_first_matching_rule_wins_and_unmatched_parameters_are_replicated(mesh):
    param = lambda *shape: nnx.Param(jax.ShapeDtypeStruct(shape, jnp.float32))  # noqa: E731  as from eval_shape
    layer = lambda: {"attention": {"qkv": {"kernel": param(32, 96), "bias": param(96)}},  # noqa: E731
                     "mlp": {"kernel": param(32, 64), "bias": param(64)}}
    params = {"embedder": {"position": param(40, 32), "projection": param(2, 4, 32)},
              "body": {"layers": {0: layer(), 1: layer()}}, "head": {"kernel": param(32, 4)}}
    rules = (
        ("body/layers/0/.*", "replicate"),
        ("body/.*/kernel", ("fsdp", None)),
        ("body/.*", "fsdp"),
        ("embedder/position", [None, ["data", "fsdp"]]),  # lists, as a config written to JSON holds them
    )
    got = specs(param_shardings(params, mesh, rules, min_shard_bytes=0))
    assert got == {
        "body/layers/0/attention/qkv/kernel": P(), "body/layers/0/attention/qkv/bias": P(),
        "body/layers/0/mlp/kernel": P(), "body/layers/0/mlp/bias": P(),
        # the explicit rule, not fsdp's choice of the largest dimension
        "body/layers/1/attention/qkv/kernel": P("fsdp", None), "body/layers/1/mlp/kernel": P("fsdp", None),
        "body/layers/1/attention/qkv/bias": P("fsdp"), "body/layers/1/mlp/bias": P("fsdp"),
        "embedder/position": P(None, ("data", "fsdp")), "embedder/projection": P(), "head/kernel": P(),
    }


def test_bad_rules_are_errors_that_name_the_problem(mesh):
    params = {"head": abstract(bias=(4,), kernel=(32, 4))}
    with pytest.raises(ValueError, match=r"head/bias \(shape \(4,\)\) over \('data', 'fsdp'\) = 8"):
        param_shardings(params, mesh, (("head/bias", (("data", "fsdp"),)),))
    with pytest.raises(ValueError, match="names axes \\['model'\\]"):
        param_shardings(params, mesh, ((".*", ("model",)),))
    with pytest.raises(ValueError, match="has 2 entries but head/bias has shape"):
        param_shardings(params, mesh, (("head/bias", ("fsdp", None)),))
    with pytest.raises(ValueError, match="are \\(regex, rule\\) pairs"):
        param_shardings(params, mesh, (".*", "fsdp"))
    with pytest.raises(ValueError, match="'shard' for '.\\*' is not"):
        param_shardings(params, mesh, ((".*", "shard"),))


def test_parameters_and_optimizer_state_are_born_sharded(mesh):
    params, shardings = born_sharded(model_params, mesh, min_shard_bytes=0)
    # Born sharded: laid out by the rules, each device holding a quarter, with the values of an unsharded init.
    assert all(leaf.sharding == s for leaf, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)))
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    held = bytes_per_device(params)
    assert len(held) == 8 and max(held.values()) <= 0.26 * total, (total, held)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(jax.jit(model_params)())):
        np.testing.assert_array_equal(got, want)
    opt_state, _ = init_optimizer(finetune_optimizer("adamw"), params, shardings)
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(opt_state))
    held = bytes_per_device(opt_state)
    assert len(held) == 8 and max(held.values()) <= 0.26 * total, (total, held)
    # With the default 1 MiB threshold this tiny model would stay whole on every device, as with fsdp = 1.
    assert set(specs(param_shardings(jax.eval_shape(model_params), mesh)).values()) == {P()}


def test_loaded_weights_are_placed_as_a_copy(mesh):
    weights = {"kernel": jnp.arange(64.0).reshape(8, 8), "bias": jnp.arange(8.0)}
    shardings = param_shardings(weights, mesh, min_shard_bytes=0)
    placed = place(weights, shardings)
    assert placed["kernel"].sharding == shardings["kernel"] and len(bytes_per_device(placed)) == 8
    jax.jit(lambda tree: tree, donate_argnums=0)(placed)  # donating the copy leaves the originals alive
    np.testing.assert_array_equal(weights["kernel"], np.arange(64.0).reshape(8, 8))
    one = make_mesh(devices=jax.devices()[:1])  # even where the layout is unchanged
    copy = place(weights, param_shardings(weights, one))
    assert copy["bias"].unsafe_buffer_pointer() != weights["bias"].unsafe_buffer_pointer()


@pytest.mark.parametrize("name, mode", [("adamw", "all"), ("sgd", "layernorm"), ("adam", "non-attn")])
def test_optimizer_state_mirrors_the_parameters(mesh, name, mode):
    rules = (("body/layers/0/attention/.*", "replicate"), (".*", "fsdp"))
    params = jax.eval_shape(lambda: model_parts(mode)[1])
    shardings = param_shardings(params, mesh, rules, min_shard_bytes=0)
    by_param = specs(shardings)
    assert len(set(by_param.values())) > 2
    opt_shardings = optimizer_shardings(jax.eval_shape(finetune_optimizer(name).init, params), params, shardings)
    mirrored = 0
    for path, sharding in jax.tree_util.tree_flatten_with_path(opt_shardings)[0]:
        names = path_name(path)
        owner = next((p for p in by_param if names.endswith("/" + p)), None)
        assert sharding.spec == (by_param[owner] if owner else P()), names
        mirrored += owner is not None
    # At least the accumulated gradient sum for every parameter that trains; frozen ones are not in the state.
    assert mirrored >= len(jax.tree.leaves(params)) > 0
    assert len(jax.tree.leaves(params)) < len(jax.tree.leaves(jax.eval_shape(model_params)))


def make_step(graphdef, optimizer):
    def step(params, frozen, opt_state, x, y):
        def loss(params):
            logits = nnx.merge(graphdef, params, frozen)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


@pytest.mark.slow
@pytest.mark.parametrize("name, mode", [("adamw", "all"), ("sgd", "layernorm"), ("adamw", "lora")])
def test_sharded_train_steps_equal_one_device(mesh, name, mode):
    optimizer = finetune_optimizer(name)
    graphdef, _, frozen = nnx.split(nnx.eval_shape(lambda: tiny_orca_model(mode)), trainable(mode), ...)
    step = make_step(graphdef, optimizer)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(4, 16, 16, 4)).astype(np.float32)
    ys = rng.integers(0, 4, size=(4, 16)).astype(np.int32)
    trainable_params, frozen_params = (lambda: model_parts(mode)[1]), (lambda: model_parts(mode)[2])

    # One device, everything whole.
    one = make_mesh(devices=jax.devices()[:1])
    params, shardings = born_sharded(trainable_params, one, ((".*", "replicate"),))
    frozen, _ = born_sharded(frozen_params, one, ((".*", "replicate"),))
    opt_state, _ = init_optimizer(optimizer, params, shardings)
    want = []
    for x, y in zip(xs, ys):
        params, opt_state, value = jax.jit(step)(params, frozen, opt_state, x, y)
        want.append(float(value))
    want_params = params

    params, shardings = born_sharded(trainable_params, mesh, min_shard_bytes=0)
    frozen, frozen_shardings = born_sharded(frozen_params, mesh, min_shard_bytes=0)
    opt_state, opt_shardings = init_optimizer(optimizer, params, shardings)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    sharded = jax.jit(step, in_shardings=(shardings, frozen_shardings, opt_shardings, batch, batch),
                      out_shardings=(shardings, opt_shardings, replicated(mesh)), donate_argnums=(0, 2))
    got = []
    for x, y in zip(xs, ys):
        params, opt_state, value = sharded(params, frozen, opt_state, jax.device_put(x, batch),
                                           jax.device_put(y, batch))
        got.append(float(value))
    held = bytes_per_device(params)
    assert max(held.values()) <= 0.26 * sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    initial = jax.tree.leaves(trainable_params())
    movement = [np.max(np.abs(b - b0)) for b, b0 in zip(jax.tree.leaves(want_params), initial)]
    assert sum(m > 0 for m in movement) > 0.8 * len(movement)  # the steps trained
    # Float32 reduction order differs between the layouts. Measured: differences up to 6e-6 of the largest distance
    # any parameter moved (AdamW and SGD, with the fused and the separate query/key/value projections).
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(want_params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * max(movement), err_msg=path_name(path))
