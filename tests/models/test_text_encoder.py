"""The BERT-family encoder against transformers' PyTorch models, and its entry points."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from orca_jax.models import TextEncoderConfig, from_pretrained, load_checkpoint
from orca_jax.parity import compare_with_transformers, worst
from tests.text_checkpoints import TINY_TEXT_CONFIGS, save_tiny_text_model

TOLERANCE = 1e-4


@pytest.mark.parametrize("name", sorted(TINY_TEXT_CONFIGS))
def test_tiny_random_checkpoints_match_transformers(name, tmp_path):
    directory = save_tiny_text_model(name, tmp_path)
    comparisons = compare_with_transformers(directory, batch=3, length=12, seed=1)
    # ids without a mask, ids with padding, inputs_embeds; every layer of each, plus the pooler.
    layers = TINY_TEXT_CONFIGS[name][1]["num_hidden_layers"]
    assert len(comparisons) == 3 * (layers + 2)
    assert worst(comparisons).within(TOLERANCE), worst(comparisons)


def test_encode_skips_the_embedding_module(tmp_path):
    loaded = load_checkpoint(save_tiny_text_model("roberta", tmp_path))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 100, size=(2, 9)))
    full = loaded.model(ids, output_hidden_states=True)
    embedded = full.hidden_states[0]
    via_encode = loaded.model.encode(embedded)
    np.testing.assert_allclose(via_encode.last_hidden_state, full.last_hidden_state, atol=1e-6)
    # ... and it really skipped the embeddings: feeding the same tensor through __call__ as inputs_embeds adds
    # positions and a layer norm again and gives something else.
    again = loaded.model(inputs_embeds=embedded)
    assert np.abs(np.asarray(again.last_hidden_state - full.last_hidden_state)).max() > 1e-2


def test_roberta_positions_skip_padding_and_start_after_the_pad_id(tmp_path):
    model = from_pretrained(save_tiny_text_model("roberta", tmp_path))  # pad_token_id = 1
    ids = jnp.asarray([[5, 6, 7, 1, 1]])
    np.testing.assert_array_equal(model.embeddings.position_ids(5, ids), [[2, 3, 4, 1, 1]])
    np.testing.assert_array_equal(model.embeddings.position_ids(5), [[2, 3, 4, 5, 6]])


def test_too_long_input_names_the_limit(tmp_path):
    model = from_pretrained(save_tiny_text_model("roberta", tmp_path))  # 34 positions, first is 2 -> 32 tokens
    model(jnp.ones((1, 32), jnp.int32) * 5)
    with pytest.raises(ValueError, match="exceeds this body's 32 positions"):
        model(jnp.ones((1, 33), jnp.int32) * 5)


def test_dropout_only_with_rngs(tmp_path):
    model = from_pretrained(save_tiny_text_model("bert-gelu", tmp_path))
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 90, size=(2, 10)))
    a = model(ids).last_hidden_state
    np.testing.assert_array_equal(a, model(ids).last_hidden_state)
    b = model(ids, rngs=nnx.Rngs(dropout=0)).last_hidden_state
    c = model(ids, rngs=nnx.Rngs(dropout=1)).last_hidden_state
    assert np.abs(np.asarray(a - b)).max() > 1e-3 and np.abs(np.asarray(b - c)).max() > 1e-3
    np.testing.assert_array_equal(b, model(ids, rngs=nnx.Rngs(dropout=0)).last_hidden_state)


def test_dropout_override_replaces_the_checkpoint_rates(tmp_path):
    directory = save_tiny_text_model("bert-gelu", tmp_path)
    assert from_pretrained(directory).config.hidden_dropout_prob == 0.1
    model = from_pretrained(directory, dropout=0.0)
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.0
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 90, size=(2, 10)))
    np.testing.assert_array_equal(model(ids, rngs=nnx.Rngs(dropout=0)).last_hidden_state, model(ids).last_hidden_state)
    with pytest.raises(ValueError, match="dropout=1.5"):
        from_pretrained(directory, dropout=1.5)


def test_exactly_one_input():
    config = TextEncoderConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=8)
    from orca_jax.models import TextEncoder

    model = TextEncoder(config, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model(jnp.ones((1, 3), jnp.int32), inputs_embeds=jnp.ones((1, 3, 8)))


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        TextEncoderConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="hidden_act='mish'"):
        TextEncoderConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=8, hidden_act="mish")
    with pytest.raises(ValueError, match="relative_key"):
        TextEncoderConfig.from_hf({"model_type": "bert", "position_embedding_type": "relative_key"})


def test_jit_and_grad_through_the_functional_split(tmp_path):
    model = from_pretrained(save_tiny_text_model("roberta", tmp_path))
    graphdef, params = nnx.split(model, nnx.Param)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 32)), jnp.float32)

    @jax.jit
    def loss(params, x):
        return jnp.mean(nnx.merge(graphdef, params).encode(x).last_hidden_state ** 2)

    grads = jax.grad(loss)(params, x)
    # Central finite difference along a random direction in the first layer's query/key/value kernel.
    kernel = params["layers"][0]["attention"]["qkv"]["kernel"]
    direction = jnp.asarray(np.random.default_rng(1).normal(size=kernel.shape), jnp.float32)
    g = grads["layers"][0]["attention"]["qkv"]["kernel"]
    analytic = float(jnp.sum(g[...] * direction))

    def shifted(h):
        p = jax.tree.map(lambda a: a, params)
        p["layers"][0]["attention"]["qkv"]["kernel"].set_value(kernel[...] + h * direction)
        return float(loss(p, x))

    with jax.default_matmul_precision("highest"):
        h = 1e-2
        numeric = (shifted(h) - shifted(-h)) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-5)
