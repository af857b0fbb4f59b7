"""Train-step speed of orca-jax bodies against transformers' PyTorch models, both measured in this run.

    python scripts/benchmark_body.py [--body text] [--steps 5]
    python scripts/benchmark_body.py --body swin   # swin-base-patch4-window7-224, 2 x 224 x 224 x 3 images

A train step is forward, backward and an AdamW update of every parameter, on random inputs, both sides with the
same config, random initialisation, float32 and dropout off. Printed per side: samples/s, achieved FLOP/s (from the
analytic matmul FLOP count, identical for both sides) as a fraction of this machine's float32 matmul peak, which is
measured in the same run as the best of JAX's and PyTorch's large square matmuls; and the ratio ours / PyTorch.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers
from flax import nnx

from orca_jax.models import Swin, SwinConfig, TextEncoder, TextEncoderConfig
from orca_jax.models.swin import stage_windows


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    samples: int  # per step
    flops: float  # per train step (matmuls only: forward x 3)
    ours: Callable[[], None]  # runs one step and blocks until it is done
    reference: Callable[[], None]


def seconds_per_call(fn: Callable[[], None], steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(n: int = 2048) -> float:
    """Best float32 FLOP/s of a large square matmul, over JAX and PyTorch (each framework's own BLAS)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    jax_mm = jax.jit(lambda x: x @ x)
    t = torch.from_numpy(np.asarray(a))
    jax_s = seconds_per_call(lambda: jax_mm(a).block_until_ready(), steps=5)
    torch_s = seconds_per_call(lambda: torch.mm(t, t), steps=5)
    return 2 * n**3 / min(jax_s, torch_s)


def jax_train_step(model: nnx.Module, loss_of_model: Callable[[nnx.Module], jax.Array]) -> Callable[[], None]:
    """The functional NNX step orca-jax trains with: split once, differentiate a function of the parameters."""
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adamw(1e-4, b1=0.9, b2=0.98, weight_decay=0.01)
    state = {"params": params, "opt": optimizer.init(params)}

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: loss_of_model(nnx.merge(graphdef, p)))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def run():
        state["params"], state["opt"], loss = step(state["params"], state["opt"])
        loss.block_until_ready()

    return run


def torch_train_step(model: torch.nn.Module, loss_of_model: Callable[[torch.nn.Module], torch.Tensor]):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01)

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss_of_model(model).backward()
        optimizer.step()

    return run


def text_workload(batch: int, length: int) -> Workload:
    """roberta-base shape, `inputs_embeds` input (as ORCA feeds it), no pooler, loss = mean square of the output."""
    hf_config = transformers.RobertaConfig(
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, vocab_size=50265, max_position_embeddings=514,
        type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,
    )
    width, layers, ff = hf_config.hidden_size, hf_config.num_hidden_layers, hf_config.intermediate_size
    embeds = np.random.default_rng(0).normal(size=(batch, length, width)).astype(np.float32)

    ours_model = TextEncoder(TextEncoderConfig.from_hf(hf_config.to_dict(), add_pooling_layer=False), rngs=nnx.Rngs(0))
    x = jnp.asarray(embeds)
    ours = jax_train_step(ours_model, lambda m: jnp.mean(m(inputs_embeds=x).last_hidden_state ** 2))

    torch_model = transformers.RobertaModel(hf_config, add_pooling_layer=False).train()
    xt = torch.from_numpy(embeds)
    reference = torch_train_step(torch_model, lambda m: m(inputs_embeds=xt).last_hidden_state.pow(2).mean())

    tokens = batch * length
    forward = layers * (2 * tokens * (4 * width * width + 2 * width * ff) + 4 * batch * length * length * width)
    return Workload(f"text encoder (roberta-base, {batch} x {length} tokens)", batch, 3.0 * forward, ours, reference)


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


def swin_workload(batch: int, side: int) -> Workload:
    """swin-base-patch4-window7-224 shape (embed 128, depths 2-2-18-2, heads 4-8-16-32), NHWC images on our side
    (NCHW on PyTorch's), loss = mean square of the last hidden state, drop path off like dropout."""
    hf_config = transformers.SwinConfig(
        image_size=side, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=7,
        drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    config = SwinConfig.from_hf(hf_config.to_dict())
    pixels = np.random.default_rng(0).normal(size=(batch, side, side, 3)).astype(np.float32)

    x = jnp.asarray(pixels)
    ours = jax_train_step(Swin(config, rngs=nnx.Rngs(0)), lambda m: jnp.mean(m(x).last_hidden_state ** 2))

    torch_model = transformers.SwinModel(hf_config).train()
    xt = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    reference = torch_train_step(torch_model, lambda m: m(xt).last_hidden_state.pow(2).mean())

    flops = 3.0 * batch * swin_forward_flops(config, (side, side))
    return Workload(f"Swin (swin-base-patch4-window7, {batch} x {side}x{side}x3 images)", batch, flops, ours, reference)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body", choices=["text", "swin"], default="text")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--image-batch", type=int, default=2, help="Swin: images per step")
    parser.add_argument("--image-size", type=int, default=224, help="Swin: image side in pixels")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    peak = matmul_peak()
    print(f"float32 matmul peak (best of JAX and PyTorch, 2048^3): {peak / 1e9:.1f} GFLOP/s")
    workloads = {
        "text": lambda: text_workload(args.batch, args.length),
        "swin": lambda: swin_workload(args.image_batch, args.image_size),
    }
    for name in [args.body]:
        w = workloads[name]()
        print(f"\n{w.name}: {w.flops / 1e9:.1f} GFLOP per train step")
        results = {}
        for side, fn in (("orca-jax", w.ours), ("PyTorch", w.reference)):
            s = seconds_per_call(fn, args.steps)
            results[side] = s
            print(f"  {side:<9} {s * 1e3:8.1f} ms/step  {w.samples / s:7.2f} samples/s  "
                  f"{w.flops / s / 1e9:6.1f} GFLOP/s = {w.flops / s / peak:5.1%} of peak")
        print(f"  ratio orca-jax / PyTorch (samples/s): {results['PyTorch'] / results['orca-jax']:.2f}x")


if __name__ == "__main__":
    main()
