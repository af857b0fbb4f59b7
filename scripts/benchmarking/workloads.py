"""The benchmarked train steps: roberta-base and swin-base shapes, forward, backward and AdamW, on our side and
on transformers' PyTorch models, with their analytic matmul FLOPs."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from orca_jax.models import Swin, SwinConfig, TextEncoder, TextEncoderConfig
from orca_jax.models.lora import add_adapters
from orca_jax.models.swin import stage_windows


ROBERTA_BASE = dict(
    model_type="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)
SWIN_BASE = dict(
    model_type="swin", embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=7,
    drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)


@dataclasses.dataclass(frozen=True)
class JaxStep:
    """One train step to call (it blocks until done), and the optimized HLO of the compiled step, whose instruction
    names are what the profiler's per-op events are called."""

    run: Callable[[], None]
    optimized_hlo: Callable[[], str]

    def __call__(self) -> None:
        self.run()


def jax_train_step(model: nnx.Module, loss_fn: Callable, inputs,
                   frozen: Callable[[tuple], bool] = lambda path: False) -> JaxStep:
    """The functional NNX step orca-jax trains with: split once, differentiate a function of the trainable
    parameters, donate parameters and optimizer state (the refine stage's step does the same)."""
    trainable = nnx.All(nnx.Param, lambda path, _: not frozen(path))
    graphdef, params, rest = nnx.split(model, trainable, ...)
    optimizer = optax.adamw(1e-4, b1=0.9, b2=0.98, weight_decay=0.01)
    state = {"params": params, "opt": optimizer.init(params)}

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, inputs):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest), inputs))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def run():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], inputs)
        loss.block_until_ready()

    return JaxStep(run, lambda: step.lower(state["params"], state["opt"], inputs).compile().as_text())


def torch_train_step(model, loss_fn):
    """PyTorch's step, its phases labelled for the profiler (`record_function` costs microseconds a step)."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01)

    def run():
        optimizer.zero_grad(set_to_none=True)
        with torch.profiler.record_function("forward"):
            loss = loss_fn(model)
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("update"):
            optimizer.step()

    return run


def text_forward_flops(config: TextEncoderConfig, batch: int, length: int) -> float:
    """Matmul FLOPs of the encoder layers' forward pass: q/k/v/out projections, scores and context, MLP."""
    width, ff = config.hidden_size, config.intermediate_size
    tokens = batch * length
    per_layer = 2 * tokens * (4 * width * width + 2 * width * ff) + 4 * batch * length * length * width
    return config.num_hidden_layers * per_layer


def swin_forward_flops(config: SwinConfig, image: tuple[int, int]) -> int:
    """Matmul FLOPs of one image's forward pass: patch embedding, q/k/v/out projections and attention on the
    (padded) windows, MLP, patch merging."""
    height, width = -(-image[0] // config.patch_size[0]), -(-image[1] // config.patch_size[1])
    flops = 2 * height * width * config.patch_size[0] * config.patch_size[1] * config.num_channels * config.embed_dim
    stages = stage_windows(config, image)
    for stage, ((h, w), window, _) in enumerate(stages):
        c, depth = config.stage_widths[stage], config.depths[stage]
        padded = -(-h // window) * window * (-(-w // window) * window)
        attention = 2 * padded * 4 * c * c + 2 * 2 * padded * window * window * c
        flops += depth * (attention + 2 * 2 * h * w * c * int(config.mlp_ratio * c))
        if stage < len(stages) - 1:
            flops += 2 * ((h + 1) // 2) * ((w + 1) // 2) * 4 * c * 2 * c
    return flops


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    samples: int  # per step
    flops: float  # per train step: analytic matmul FLOPs of the forward pass, x 3 for forward + backward
    ours: JaxStep
    reference: Callable[[], None] | None = None  # PyTorch's step


def _text_loss(model, embeds):
    return jnp.mean(model(inputs_embeds=embeds).last_hidden_state.astype(jnp.float32) ** 2)


def _swin_loss(model, images):
    return jnp.mean(model(images).last_hidden_state.astype(jnp.float32) ** 2)


def _unused_word_table(path) -> bool:
    return tuple(path[:2]) == ("embeddings", "word")


def text_workload(batch: int, length: int, *, dtype=jnp.float32, reference: bool = True) -> Workload:
    """roberta-base shape, `inputs_embeds` input, no pooler, loss = mean square of the output."""
    config = TextEncoderConfig.from_hf(ROBERTA_BASE, add_pooling_layer=False)
    embeds = np.random.default_rng(0).normal(size=(batch, length, config.hidden_size)).astype(np.float32)
    model = TextEncoder(config, dtype=dtype, rngs=nnx.Rngs(0))
    ours = jax_train_step(model, _text_loss, jnp.asarray(embeds), frozen=_unused_word_table)
    torch_step = None
    if reference:
        import torch
        import transformers

        hf_config = transformers.RobertaConfig(**{k: v for k, v in ROBERTA_BASE.items() if k != "model_type"})
        torch_model = transformers.RobertaModel(hf_config, add_pooling_layer=False).train()
        xt = torch.from_numpy(embeds)
        torch_step = torch_train_step(torch_model, lambda m: m(inputs_embeds=xt).last_hidden_state.pow(2).mean())
    flops = 3.0 * text_forward_flops(config, batch, length)
    return Workload(f"text encoder (roberta-base, {batch} x {length} tokens)", batch, flops, ours, torch_step)


def text_lora_step(batch: int, length: int, rank: int) -> JaxStep:
    """`text_workload`'s step with LoRA adapters of `rank` on the four projections and the body frozen: what
    `refine.finetune_method=lora` trains of the body."""
    config = TextEncoderConfig.from_hf(ROBERTA_BASE, add_pooling_layer=False)
    embeds = np.random.default_rng(0).normal(size=(batch, length, config.hidden_size)).astype(np.float32)
    model = TextEncoder(config, rngs=nnx.Rngs(0))
    add_adapters(model, rank=rank, alpha=2.0 * rank, rngs=nnx.Rngs(1))
    return jax_train_step(model, _text_loss, jnp.asarray(embeds), frozen=lambda path: "adapter" not in path)


def swin_workload(batch: int, side: int, *, dtype=jnp.float32, reference: bool = True) -> Workload:
    """swin-base-patch4-window7-224 shape, NHWC images on our side (NCHW on PyTorch's), loss = mean square of the
    last hidden state, drop path off like dropout."""
    config = SwinConfig.from_hf({**SWIN_BASE, "image_size": side})
    pixels = np.random.default_rng(0).normal(size=(batch, side, side, 3)).astype(np.float32)
    ours = jax_train_step(Swin(config, dtype=dtype, rngs=nnx.Rngs(0)), _swin_loss, jnp.asarray(pixels))
    torch_step = None
    if reference:
        import torch
        import transformers

        hf_config = transformers.SwinConfig(**{k: v for k, v in SWIN_BASE.items() if k != "model_type"}, image_size=side)
        torch_model = transformers.SwinModel(hf_config).train()
        xt = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
        torch_step = torch_train_step(torch_model, lambda m: m(xt).last_hidden_state.pow(2).mean())
    flops = 3.0 * batch * swin_forward_flops(config, (side, side))
    name = f"Swin (swin-base-patch4-window7, {batch} x {side}x{side}x3 images)"
    return Workload(name, batch, flops, ours, torch_step)
