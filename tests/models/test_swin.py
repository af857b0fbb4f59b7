"""Swin body: parity with transformers' PyTorch SwinModel on tiny random checkpoints, the skip-the-patch-embedding
entry point, the small-grid rule, checkpoint loading (classification heads, legacy and new key names, index
buffers) and verify_weights.py."""

import functools
import importlib.util
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from orca_jax.models import Swin, SwinConfig, from_pretrained, load_checkpoint
from orca_jax.models.swin import WindowAttention, block_window, relative_position_index, stage_windows
from orca_jax.parity import compare_with_transformers, worst
from orca_jax.parity.swin import compare_models, reference_encode
from orca_jax.weights import WeightConversionError

TOLERANCE = 1e-4

# Several stages with patch merging, window 4 (not 7), odd stage grids (16 -> 8 -> 4: the last equals the window).
MULTI_STAGE = dict(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2, 2], num_heads=[2, 2, 4], window_size=4)
# Absolute position embeddings, no qkv bias, window 3, another epsilon and activation.
ABSOLUTE = dict(
    image_size=28, patch_size=4, embed_dim=12, depths=[2, 2], num_heads=[2, 3], window_size=3,
    use_absolute_embeddings=True, qkv_bias=False, layer_norm_eps=1e-6, hidden_act="gelu_new", mlp_ratio=2.0,
)
# Window 3 on grids 8x12 and 4x6 (not multiples of the window), images 30x45 (not multiples of the patch).
PADDED = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=3)
# Window 7 on grids 8x8 then 4x4: the second stage is smaller than the window (transformers 5.24 fails there).
SMALL_GRID = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=7)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """transformers initialises bias tables, position embeddings and norms to constants; perturb every parameter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model.eval()


def save(model: torch.nn.Module, directory) -> str:
    model.save_pretrained(directory)
    return str(directory)


def images(batch, height, width, channels=3, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, height, width, channels)).astype(np.float32)


@functools.partial(nnx.jit, static_argnums=3)
def forward(model, x, rngs=None, output_hidden_states=False):
    return model(x, output_hidden_states=output_hidden_states, rngs=rngs)


@functools.partial(nnx.jit, static_argnums=2)
def encode(model, tokens, grid):
    return model.encode(tokens, grid)


def assert_parity(comparisons):
    assert comparisons, "nothing was compared"
    assert worst(comparisons).within(TOLERANCE), [(c.name, c.max_abs_diff) for c in comparisons]


@pytest.fixture(scope="module")
def multi_stage(tmp_path_factory):
    reference = randomize(transformers.SwinModel(transformers.SwinConfig(**MULTI_STAGE)))
    return reference, save(reference, tmp_path_factory.mktemp("swin_multi_stage"))


@pytest.mark.parametrize(
    "hf_config, height, width",
    [(ABSOLUTE, 28, 28), (PADDED, 30, 45), (PADDED, 45, 30)],
    ids=["absolute-positions", "non-square-padded", "tall-padded"],
)
def test_parity_with_transformers(tmp_path, hf_config, height, width):
    reference = randomize(transformers.SwinModel(transformers.SwinConfig(**hf_config)))
    model = from_pretrained(save(reference, tmp_path))
    comparisons = compare_models(model, reference, images(2, height, width), prefix="images")
    stages = len(hf_config["depths"])
    assert len(comparisons) == 2 * (stages + 1) + 2  # every stage as tokens and as a map, last state, pooled
    assert_parity(comparisons)


@pytest.mark.slow
@pytest.mark.parametrize(
    "window, side", [(7, 224), (12, 384)], ids=["hub-window7-224", "hub-window12-384"]
)
def test_parity_on_hub_geometry(tmp_path, window, side):
    """The hub's geometries (patch 4, four stages, grids 56-28-14-7 or 96-48-24-12: the last stage equals the window)
    at a small width; the classification layout as the hub's checkpoints have it."""
    config = transformers.SwinConfig(
        image_size=side, patch_size=4, embed_dim=8, depths=[2, 2, 4, 2], num_heads=[1, 2, 2, 4], window_size=window,
        num_labels=3,
    )
    classifier = randomize(transformers.SwinForImageClassification(config))
    model = from_pretrained(save(classifier, tmp_path))
    assert [w for _, w, _ in stage_windows(model.config, (side, side))] == [window] * 4
    assert_parity(compare_models(model, classifier.swin, images(1, side, side), prefix="images"))


def test_multi_stage_parity_and_shapes(multi_stage):
    reference, path = multi_stage
    model = from_pretrained(path)
    # 16x16 -> 8x8 -> 4x4 grids; the last stage's window equals its grid, so its shift is off.
    assert stage_windows(model.config, (32, 32)) == [((16, 16), 4, 2), ((8, 8), 4, 2), ((4, 4), 4, 0)]
    out = forward(model, jnp.asarray(images(2, 32, 32)), None, True)
    assert out.last_hidden_state.shape == (2, 16, 64) and out.pooler_output.shape == (2, 64)
    assert [h.shape for h in out.hidden_states] == [(2, 256, 16), (2, 64, 32), (2, 16, 64), (2, 16, 64)]
    assert [m.shape for m in out.reshaped_hidden_states] == [(2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 64), (2, 4, 4, 64)]
    assert_parity(compare_models(model, reference, images(2, 32, 32, seed=1), prefix="images"))


def test_encode_skips_the_patch_embedding(multi_stage):
    reference, path = multi_stage
    model = from_pretrained(path)
    x = jnp.asarray(images(2, 32, 32))

    @nnx.jit
    def both(model, x):
        tokens, grid = model.embeddings(x)
        assert grid == (16, 16) and tokens.shape == (2, 256, 16)
        return model(x), model.encode(tokens, grid)

    full, skipped = both(model, x)
    np.testing.assert_allclose(skipped.last_hidden_state, full.last_hidden_state, rtol=0, atol=1e-6)
    np.testing.assert_allclose(skipped.pooler_output, full.pooler_output, rtol=0, atol=1e-6)
    # On tokens that no patch embedding produced, against transformers' encoder (a non-square grid too).
    rng = np.random.default_rng(3)
    for grid in [(16, 16), (20, 14)]:  # transformers needs every stage's grid to be at least the window
        other = rng.normal(size=(2, grid[0] * grid[1], 16)).astype(np.float32)
        ours = encode(model, jnp.asarray(other), grid).last_hidden_state
        np.testing.assert_allclose(ours, reference_encode(reference, other, grid), rtol=0, atol=TOLERANCE)
    with pytest.raises(ValueError, match=r"\[batch, 6\*6=36, 16\] for grid \(6, 6\)"):
        model.encode(jnp.asarray(other), (6, 6))


def _original_swin_reference(reference: transformers.SwinModel, grid: tuple[int, int]) -> transformers.SwinModel:
    """transformers with the original Swin's small-grid rule: a block whose grid side is below the window gets a
    bias module for the shrunken window holding the centre of the checkpoint's table (transformers keeps the full
    one and fails). transformers itself already shrinks the window and turns the shift off."""
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias  # noqa: PLC0415

    full = reference.config.window_size
    for stage in reference.encoder.layers:
        window = min(grid)
        if window < full:
            for block in stage.blocks:
                old = block.attention.relative_position_bias
                heads = old.relative_position_bias_table.shape[1]
                table = old.relative_position_bias_table.detach().reshape(2 * full - 1, 2 * full - 1, heads)
                centre = table[full - window : full + window - 1, full - window : full + window - 1]
                new = SwinRelativePositionBias(heads, (window, window))
                with torch.no_grad():
                    new.relative_position_bias_table.copy_(centre.reshape(-1, heads))
                block.attention.relative_position_bias = new
        if stage.downsample is not None:
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
    return reference


def test_grid_smaller_than_window_follows_original_swin(tmp_path):
    config = transformers.SwinConfig(**SMALL_GRID)
    path = save(randomize(transformers.SwinModel(config)), tmp_path)
    x = images(2, 32, 32)
    with torch.no_grad(), pytest.raises(RuntimeError):  # the transformers 5.24 bug this rule works around
        transformers.SwinModel.from_pretrained(path).eval()(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    model = from_pretrained(path)
    assert stage_windows(model.config, (32, 32)) == [((8, 8), 7, 3), ((4, 4), 4, 0)]
    assert block_window((4, 9), 7, True) == (4, 0) and block_window((8, 9), 7, True) == (7, 3)
    reference = _original_swin_reference(transformers.SwinModel.from_pretrained(path).eval(), (8, 8))
    assert_parity(compare_models(model, reference, x, prefix="images"))
    # A non-square grid whose short side is below the window: window 3 (padding the long side), no shift.
    reference = _original_swin_reference(transformers.SwinModel.from_pretrained(path).eval(), (8, 11))
    assert_parity(compare_models(model, reference, images(1, 32, 44), prefix="images"))


def test_classification_checkpoint_loads_its_body(tmp_path, caplog):
    classifier = randomize(transformers.SwinForImageClassification(transformers.SwinConfig(**PADDED, num_labels=5)))
    path = save(classifier, tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = load_checkpoint(path)
    assert loaded.report.body_prefix == "swin."
    assert loaded.report.ignored_head_keys == ("classifier.bias", "classifier.weight")
    assert "classifier.weight" in caplog.text
    assert_parity(compare_models(loaded.model, classifier.swin, images(2, 32, 32), prefix="images"))


def _with_index_buffers(path, window: int, corrupt: str | None = None):
    """Adds the relative_position_index buffers that hub files carry (transformers 5 no longer saves them)."""
    file = f"{path}/model.safetensors"
    tensors = load_file(file)
    tables = [k for k in tensors if k.endswith("attention.self.relative_position_bias_table")]
    for key in tables:
        index = relative_position_index(window).astype(np.int64)
        name = key.replace("relative_position_bias_table", "relative_position_index")
        if name == corrupt:
            index = index.copy()
            index[0, 1] += 1
        tensors[name] = index
    save_file(tensors, file, metadata={"format": "pt"})
    return sorted(k.replace("relative_position_bias_table", "relative_position_index") for k in tables)


def test_relative_position_index_buffers_are_checked_and_dropped(tmp_path):
    classifier = randomize(transformers.SwinForImageClassification(transformers.SwinConfig(**PADDED, num_labels=3)))
    path = save(classifier, tmp_path)
    names = _with_index_buffers(path, PADDED["window_size"])
    # The index matches transformers' own buffer, and hub files spell it under attention.self.
    np.testing.assert_array_equal(
        relative_position_index(3).reshape(-1),
        classifier.swin.encoder.layers[0].blocks[0].attention.relative_position_bias.relative_position_index.numpy(),
    )
    assert all(".attention.self.relative_position_index" in n for n in names)
    loaded = load_checkpoint(path)
    assert loaded.report.dropped_buffers == tuple(n[len("swin.") :] for n in names)
    bad = "swin.encoder.layers.1.blocks.0.attention.self.relative_position_index"
    _with_index_buffers(path, PADDED["window_size"], corrupt=bad)
    with pytest.raises(WeightConversionError, match=r"encoder\.layers\.1\.blocks\.0\.attention\.self\.relative_position_index"):
        load_checkpoint(path)


def test_new_style_key_names_load_the_same(tmp_path, multi_stage):
    """transformers 5's in-memory names (q_proj, mlp.fc1, ...) are other spellings of the legacy file names."""
    _, path = multi_stage
    legacy = load_file(f"{path}/model.safetensors")
    renames = [
        ("attention.self.query", "attention.q_proj"), ("attention.self.key", "attention.k_proj"),
        ("attention.self.value", "attention.v_proj"), ("attention.output.dense", "attention.o_proj"),
        ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
        ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"),
    ]
    renamed = {}
    for key, value in legacy.items():
        for old, new in renames:
            key = key.replace(old, new)
        renamed[key] = value
    assert renamed.keys() != legacy.keys()
    directory = tmp_path / "renamed"
    directory.mkdir()
    (directory / "config.json").write_text(open(f"{path}/config.json").read())
    save_file(renamed, str(directory / "model.safetensors"), metadata={"format": "pt"})
    a, b = nnx.state(from_pretrained(path), nnx.Param), nnx.state(from_pretrained(directory), nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # A file holding both spellings of a tensor is a duplicate, named.
    save_file({**renamed, **legacy}, str(directory / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightConversionError, match="duplicate"):
        from_pretrained(directory)


def test_unmapped_and_mis_shaped_keys_are_errors(tmp_path, multi_stage):
    _, path = multi_stage
    tensors = load_file(f"{path}/model.safetensors")
    tensors["encoder.layers.0.blocks.0.attention.self.query.weight"] = np.zeros((16, 8), np.float32)
    tensors["encoder.layers.0.blocks.0.unknown.weight"] = np.zeros((1,), np.float32)
    del tensors["layernorm.weight"]
    directory = tmp_path / "broken"
    directory.mkdir()
    (directory / "config.json").write_text(open(f"{path}/config.json").read())
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightConversionError) as error:
        from_pretrained(directory)
    message = str(error.value)
    assert "shape mismatch for 'encoder.layers.0.blocks.0.attention.self.query.weight'" in message
    assert "unmapped key 'encoder.layers.0.blocks.0.unknown.weight'" in message
    assert "missing: layernorm.scale" in message


def test_dropout_and_drop_path_only_with_rngs():
    config = SwinConfig(image_size=8, patch_size=2, embed_dim=8, depths=(2,), num_heads=(2,), window_size=4,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
    x = jnp.asarray(images(4, 8, 8))

    @nnx.jit
    def eval_and_train(model, rngs):
        return model(x).last_hidden_state, model(x, rngs=rngs).last_hidden_state

    eval_out, train = eval_and_train(Swin(config, rngs=nnx.Rngs(0)), nnx.Rngs(dropout=1))
    np.testing.assert_array_equal(train, eval_out)  # all rates are 0
    for rates in [dict(hidden_dropout_prob=0.2), dict(drop_path_rate=0.5)]:
        model = Swin(SwinConfig(**{**config.__dict__, **rates}), rngs=nnx.Rngs(0))
        evaluated, train = eval_and_train(model, nnx.Rngs(dropout=1))
        np.testing.assert_array_equal(evaluated, eval_out)  # same initialisation; without rngs nothing is dropped
        assert not np.allclose(train, eval_out), rates
    # Attention-probability dropout, on one attention module (each dropout site costs seconds of compilation).
    attention_config = SwinConfig(**{**config.__dict__, "attention_probs_dropout_prob": 0.2})
    f32 = dict(param_dtype=jnp.float32, dtype=jnp.float32)
    attention = WindowAttention(8, 2, 4, attention_config, **f32, rngs=nnx.Rngs(0))
    windows, bias = jnp.asarray(images(1, 1, 16, 8)), jnp.zeros((1, 2, 16, 16))
    np.testing.assert_array_equal(attention(windows, bias, None), attention(windows, bias, None))
    assert not np.allclose(attention(windows, bias, nnx.Rngs(dropout=1)), attention(windows, bias, None))
    assert config.drop_path_rates == (0.0, 0.0)
    deeper = SwinConfig(**{**config.__dict__, "depths": (2, 2), "num_heads": (2, 2), "drop_path_rate": 0.3})
    assert deeper.drop_path_rates == pytest.approx((0, 0.1, 0.2, 0.3))


def test_gradients_reach_every_parameter(multi_stage):
    _, path = multi_stage
    graphdef, params = nnx.split(from_pretrained(path), nnx.Param)
    x = jnp.asarray(images(1, 32, 32))
    grads = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x).pooler_output ** 2)))(params)
    for path_, leaf in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(leaf)) and np.any(leaf != 0), jax.tree_util.keystr(path_)


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match=r"num_heads\[1\]=3"):
        SwinConfig.from_hf({**MULTI_STAGE, "num_heads": [2, 3, 4], "model_type": "swin"})
    with pytest.raises(ValueError, match="swinv2"):
        SwinConfig.from_hf({**MULTI_STAGE, "model_type": "swinv2"})
    model = Swin(SwinConfig(**{**ABSOLUTE, "depths": (1, 1)}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"absolute position embeddings for a \(7, 7\) patch grid"):
        model(jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        model(jnp.zeros((1, 3, 28, 28)))


def test_verify_weights_script(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("verify_weights", Path(__file__).parents[2] / "scripts/verify_weights.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    main = script.main
    reference = randomize(transformers.SwinForImageClassification(transformers.SwinConfig(**PADDED, num_labels=2)))
    path = save(reference, tmp_path)
    assert main([path, "--length", "30"]) == 0
    printed = capsys.readouterr().out
    assert "images 30x30/stage 2" in printed and "tokens 8x8/encode" in printed and "PASS" in printed
    names = [c.name for c in compare_with_transformers(path, batch=1, length=30)]
    assert "images 30x30/pooler" in names
