"""The refine optimizer equals the official PyTorch loop step by step, and each fine-tune mode's path rules train
exactly the parameters the official name rule (`src/utils.py::set_param_grad`) trains, applied to the official names
of ours."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from ml_collections import ConfigDict

from orca_jax.models import TextEncoder, TextEncoderConfig
from orca_jax.models.embedders import ImageEmbedder, SequenceEmbedder
from orca_jax.models.orca import OrcaModel
from orca_jax.train.finetune import ALIGN_RULES, FINETUNE_RULES, align_trainable, is_trainable, trainable
from orca_jax.train.optimizers import refine_optimizer
from tests.image_checkpoints import TWO_STAGES, tiny_swin


def optimizer_config(name, learning_rate, weight_decay, momentum=0.9):
    return ConfigDict(dict(name=name, learning_rate=learning_rate, weight_decay=weight_decay, momentum=momentum,
                           b1=0.9, b2=0.98, eps=1e-8))


def refine_config(accum=1, clip=-1.0, warmup_epochs=0.0, decay_epochs=2.0):
    return ConfigDict(dict(accum=accum, clip=clip, warmup_epochs=warmup_epochs, decay_epochs=decay_epochs))


# ---- The official loop (src/main.py::train_one_epoch with WarmupLR), in torch, on a tiny problem --------------------

def official_warmup_lr(warmup_epochs, decay_epochs, n_train):
    """src/task_configs.py::get_scheduler('WarmupLR'): per-batch factor, no clamping."""
    warmup, total = int(warmup_epochs * n_train), int(decay_epochs * n_train)

    def factor(step):
        if warmup > 0 and step < warmup:
            return step / max(1.0, warmup)
        return (total - step) / (total - warmup)

    return factor


def tiny_loss(w, q, m, b, x, y):
    """Works on torch tensors and jax arrays alike; q stands for a frozen attention projection."""
    pred = (x @ w).tanh() if isinstance(x, torch.Tensor) else jnp.tanh(x @ w)
    return (((pred @ q @ m + b) - y) ** 2).sum()


TORCH_OPTIMIZERS = {
    "sgd": (torch.optim.SGD, dict(momentum=0.9, weight_decay=0.01)),
    "adam": (torch.optim.Adam, dict(betas=(0.9, 0.98), weight_decay=0.01)),
    "adamw": (torch.optim.AdamW, dict(betas=(0.9, 0.98), weight_decay=0.1)),
}


def official_loop(p0, data, name, lr, accum, clip, warmup_epochs, decay_epochs):
    """Parameters after every micro-batch: loss not divided by accum, clip after each backward, step every accum
    batches, scheduler every batch, zero_grad at each epoch's start (leftover partial sums discarded)."""
    epochs, n_train = data[0].shape[:2]
    w, q, m, b = (torch.tensor(p0[k], requires_grad=k != "q") for k in "wqmb")
    cls, kwargs = TORCH_OPTIMIZERS[name]
    optimizer = cls([w, m, b], lr=lr, **kwargs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, official_warmup_lr(warmup_epochs, decay_epochs, n_train))
    history = []
    for epoch in range(epochs):
        optimizer.zero_grad()
        for i in range(n_train):
            tiny_loss(w, q, m, b, torch.tensor(data[0][epoch, i]), torch.tensor(data[1][epoch, i])).backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_([w, q, m, b], clip)
            if (i + 1) % accum == 0:
                optimizer.step()
                optimizer.zero_grad()
            scheduler.step()
            history.append({k: t.detach().numpy().copy() for k, t in zip("wqmb", (w, q, m, b))})
    return history


# The tiny problem's parameters under OrcaModel-like paths: q is a query/key/value projection, m an MLP kernel.
TINY_PATHS = {"w": ("embedder", "w"), "q": ("body", "layers", 0, "attention", "qkv", "kernel"),
              "m": ("body", "layers", 0, "mlp_in", "kernel"), "b": ("head", "b")}


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the official order
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("clip", [-1.0, 0.5])
def test_refine_optimizer_equals_the_official_loop(name, clip):
    """2 epochs of 7 micro-batches, accum 3 (one micro-batch left over per epoch), warm-up 3 micro-batches and decay
    to 21, non-attn mode (q frozen); parameters compared after every micro-batch."""
    rng = np.random.default_rng(0)
    p0 = {k: rng.normal(size=s).astype(np.float32) for k, s in dict(w=(3, 2), q=(2, 2), m=(2, 2), b=(2,)).items()}
    data = (rng.normal(size=(2, 7, 4, 3)).astype(np.float32), rng.normal(size=(2, 7, 4, 2)).astype(np.float32))
    lr, warmup_epochs, decay_epochs = 0.01 if name == "sgd" else 0.05, 3 / 7, 3.0
    expected = official_loop(p0, data, name, lr, 3, clip, warmup_epochs, decay_epochs)

    opt_config = optimizer_config(name, lr, TORCH_OPTIMIZERS[name][1]["weight_decay"])
    optimizer = refine_optimizer(opt_config, refine_config(3, clip, warmup_epochs, decay_epochs), 7)
    trains = {k: is_trainable("non-attn", path) for k, path in TINY_PATHS.items()}
    assert trains == {"w": True, "q": False, "m": True, "b": True}
    params = {k: jnp.asarray(v) for k, v in p0.items() if trains[k]}  # the refine stage's split: q stays out
    grad = jax.grad(lambda params, x, y: tiny_loss(q=jnp.asarray(p0["q"]), **params, x=x, y=y))
    update = jax.jit(optimizer.update)
    state = optimizer.init(params)
    for step, want in enumerate(expected):
        epoch, i = divmod(step, 7)
        updates, state = update(grad(params, data[0][epoch, i], data[1][epoch, i]), state, params)
        params = optax.apply_updates(params, updates)
        for k in "wmb":
            np.testing.assert_allclose(params[k], want[k], rtol=2e-5, atol=2e-6, err_msg=f"{k} after micro-batch {step}")
    assert not np.allclose(expected[-1]["w"], p0["w"])  # it did train


# ---- Fine-tune modes on tiny OrcaModels ------------------------------------------------------------------------

class TinyHead(nnx.Module):
    def __init__(self, width, rngs):
        self.linear = nnx.Linear(width, 3, rngs=rngs)

    def __call__(self, pooled, sequence):
        return self.linear(pooled)


def tiny_text_model():
    config = TextEncoderConfig(vocab_size=11, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=40, pad_token_id=1,
                               padding_offset_positions=True, layer_norm_eps=1e-5)
    body, rngs = TextEncoder(config, rngs=nnx.Rngs(0)), nnx.Rngs(1)
    model = OrcaModel(SequenceEmbedder.from_body(body, 1, 12, target_seq_len=6, rngs=rngs), body, TinyHead(16, rngs))
    return model, jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 1)), jnp.float32)


def tiny_swin_model():
    body, rngs = tiny_swin(embed_dim=8, **TWO_STAGES), nnx.Rngs(1)
    model = OrcaModel(ImageEmbedder.from_body(body, 1, rngs=rngs), body, TinyHead(16, rngs))
    return model, jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 1)), jnp.float32)


# Our paths (dotted) -> the official model's names (wrapper1D / wrapper2D over HF RoBERTa / Swin); None: the official
# model has no such parameter (it replaces the body's embeddings and pooler). Parameter leaf names kept as ours. Our
# fused query/key/value projection holds three official parameters ({qkv} stands for each of their names).
OFFICIAL_NAMES = [
    (r"body\.(embeddings|pooler)\..*", None),
    (r"embedder\.(.*)", r"embedder.\1"),
    (r"head\.(.*)", r"predictor.\1"),
    (r"body\.layernorm\.(.*)", r"model.swin.layernorm.\1"),
    (r"body\.layers\.(\d+)\.downsample\.(.*)", r"model.swin.encoder.layers.\1.downsample.\2"),
    (r"body\.layers\.(\d+)\.blocks\.(\d+)\.attention\.qkv\.(.*)",
     r"model.swin.encoder.layers.\1.blocks.\2.attention.self.{qkv}.\3"),
    (r"body\.layers\.(\d+)\.blocks\.(\d+)\.attention\.relative_position_bias_table",
     r"model.swin.encoder.layers.\1.blocks.\2.attention.self.relative_position_bias_table"),
    (r"body\.layers\.(\d+)\.blocks\.(\d+)\.attention\.out\.(.*)",
     r"model.swin.encoder.layers.\1.blocks.\2.attention.output.dense.\3"),
    (r"body\.layers\.(\d+)\.blocks\.(\d+)\.(layernorm_before|layernorm_after)\.(.*)",
     r"model.swin.encoder.layers.\1.blocks.\2.\3.\4"),
    (r"body\.layers\.(\d+)\.blocks\.(\d+)\.mlp_in\.(.*)",
     r"model.swin.encoder.layers.\1.blocks.\2.intermediate.dense.\3"),
    (r"body\.layers\.(\d+)\.blocks\.(\d+)\.mlp_out\.(.*)", r"model.swin.encoder.layers.\1.blocks.\2.output.dense.\3"),
    (r"body\.layers\.(\d+)\.attention\.qkv\.(.*)", r"model.encoder.layer.\1.attention.self.{qkv}.\2"),
    (r"body\.layers\.(\d+)\.attention\.out\.(.*)", r"model.encoder.layer.\1.attention.output.dense.\2"),
    (r"body\.layers\.(\d+)\.attention_norm\.(.*)", r"model.encoder.layer.\1.attention.output.LayerNorm.\2"),
    (r"body\.layers\.(\d+)\.mlp_in\.(.*)", r"model.encoder.layer.\1.intermediate.dense.\2"),
    (r"body\.layers\.(\d+)\.mlp_out\.(.*)", r"model.encoder.layer.\1.output.dense.\2"),
    (r"body\.layers\.(\d+)\.mlp_norm\.(.*)", r"model.encoder.layer.\1.output.LayerNorm.\2"),
]


def official_names(path):
    """The official parameters one of ours holds: none, one, or three for a fused query/key/value projection."""
    dotted = ".".join(map(str, path))
    for pattern, replacement in OFFICIAL_NAMES:
        if match := re.fullmatch(pattern, dotted):
            if replacement is None:
                return ()
            name = match.expand(replacement)
            return tuple(name.format(qkv=part) for part in ("query", "key", "value")) if "{qkv}" in name else (name,)
    raise AssertionError(f"no official name for {dotted}")


def officially_trained(names, mode):
    """Whether the official code trains these parameters (all of them, or none: a fused parameter cannot be split)."""
    trained = {officially_trained_name(name, mode) for name in names}
    assert len(trained) <= 1, (names, mode)
    return trained == {True}


def officially_trained_name(name, mode):
    """src/utils.py::set_param_grad's rules; frozen-body is the official predictor stage (embedder + predictor)."""
    if mode == "layernorm":
        return not ("layer" in name and not ("layernorm" in name or "LayerNorm" in name))
    if mode == "non-attn":
        return not ("layer" in name and ("query" in name or "key" in name or "value" in name))
    if mode == "frozen-body":
        return name.startswith(("embedder.", "predictor."))
    return True


@pytest.mark.parametrize("build", [tiny_text_model, tiny_swin_model])
def test_each_mode_trains_exactly_its_parameters(build):
    """One AdamW update with weight decay from nonzero parameters, through the refine stage's split: frozen ones
    bitwise unchanged, all others moved, and the moved set is the official rule's."""
    model, x = build()
    nnx.update(model, jax.tree.map(lambda p: p + 0.05, nnx.state(model, nnx.Param)))  # no parameter at 0
    before = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    names = {path: official_names(path) for path in before}
    assert any("downsample.norm" in name for group in names.values() for name in group) == (build is tiny_swin_model)
    for mode in set(FINETUNE_RULES) - {"lora"}:  # lora's adapters: tests/models/test_lora.py
        graphdef, params, frozen = nnx.split(model, trainable(mode), ...)
        grads = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, frozen)(x) ** 2)))(params)
        optimizer = refine_optimizer(optimizer_config("adamw", 0.1, 0.1), refine_config(clip=1.0), 4)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        trained = nnx.merge(graphdef, optax.apply_updates(params, updates), frozen)
        after = dict(nnx.to_flat_state(nnx.state(trained, nnx.Param)))
        moved = {path for path in before if bytes(np.asarray(after[path][...])) != bytes(np.asarray(before[path][...]))}
        expected = {path for path, name in names.items() if officially_trained(name, mode)}
        assert moved == expected, f"{mode}: moved but frozen {moved - expected}, frozen but trained {expected - moved}"
        assert all(is_trainable(mode, path) == (path in expected) for path in before)


def test_the_align_stage_trains_the_embedder_alone():
    model, _ = tiny_text_model()
    _, embedder, rest = nnx.split(model, align_trainable(), ...)
    assert {path[0] for path, _ in nnx.to_flat_state(embedder)} == {"embedder"}
    assert "embedder" not in {path[0] for path, _ in nnx.to_flat_state(rest)}
    assert ALIGN_RULES[-1] == (".*", False)  # anything the embedder rule misses stays frozen


def test_bad_mode_and_foreign_parameters_are_named():
    with pytest.raises(ValueError, match="'layer-norm' is not one of"):
        trainable("layer-norm")
    with pytest.raises(ValueError, match=r"does not start with one of \('embedder', 'body', 'head', 'pare'\)"):
        is_trainable("all", ("encoder", "w"))


def test_a_new_mode_is_one_registry_entry(monkeypatch):
    """Registered once, a mode is what the split trains and a name the config checks accept."""
    from orca_jax.config import base_config
    from orca_jax.config_checks import ConfigError, check_config
    from orca_jax.train.finetune import UNUSED_BODY_PARTS

    rules = (UNUSED_BODY_PARTS, (r"body/.*/(mlp_in|mlp_out)/[^/]+", True), ("body/.*", False), (".*", True))
    monkeypatch.setitem(FINETUNE_RULES, "mlp-only", rules)
    model, _ = tiny_text_model()
    _, params, _ = nnx.split(model, trainable("mlp-only"), ...)
    body = {path[-2] for path, _ in nnx.to_flat_state(params) if path[0] == "body"}
    assert body == {"mlp_in", "mlp_out"}
    config = base_config()
    config.refine.update(epochs=1, finetune_method="mlp-only")
    try:
        check_config(config, devices=1)
    except ConfigError as error:
        assert not any("finetune_method" in problem for problem in error.problems), error.problems
    config.refine.finetune_method = "mlp-onyl"
    with pytest.raises(ConfigError, match="did you mean 'mlp-only'"):
        check_config(config, devices=1)
