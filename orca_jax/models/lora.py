"""Low-rank adapters (LoRA, Hu et al., ICLR 2022) on a body's projections, and their merge into the weights.

Why: full fine-tuning keeps two Adam moments per body parameter (roberta-base: 2 x 85M); adapters of rank r on a
d_in x d_out projection train r (d_in + d_out) parameters, and the frozen body needs no optimizer state at all
(`refine.finetune_method=lora`, whose rule in `orca_jax.train.finetune` trains the adapters, the embedder and the
head). A projection `y = x W + b` becomes `y = x W + b + (alpha / r) x A B` with A [d_in, r] drawn like PyTorch's
default linear init (as the reference implementation, PEFT, draws it) and B [r, d_out] zero, so an adapted model
equals its base model until B moves. `merge` folds (alpha / r) A B into W and removes the adapters: prediction and
export then run the plain architecture at its original cost, and the Hugging Face checkpoint needs no PEFT.

Adapters live on `orca_jax.models.layers.Dense` (`.adapter`), so a parameter keeps its path
(`body/layers/3/attention/qkv/kernel`) and the adapter's are beside it (`.../qkv/adapter/a`): sharding rules and
weight tables see the same names with or without adapters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from orca_jax.models.layers import Dense

# The body projections by attribute name: both families name their attention's fused query/key/value projection
# `qkv`, its output `out`, and the MLP's two layers `mlp_in`/`mlp_out`.
PROJECTIONS = ("qkv", "out", "mlp_in", "mlp_out")


def lora_targets(text: str) -> tuple[str, ...]:
    """`refine.lora.targets` ("qkv,out") as projection names."""
    return tuple(name.strip() for name in str(text).split(",") if name.strip())


class LowRank(nnx.Module):
    """(alpha / rank) x A B, the update one adapter adds to its projection's output."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, *, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)), PyTorch's nn.Linear default
        self.a = nnx.Param(jax.random.uniform(rngs.params(), (in_features, rank), param_dtype, -bound, bound))
        self.b = nnx.Param(jnp.zeros((rank, out_features), param_dtype))
        self.scale = alpha / rank

    def __call__(self, x: jax.Array) -> jax.Array:
        return (x @ self.a[...].astype(x.dtype)) @ self.b[...].astype(x.dtype) * self.scale

    def delta(self) -> jax.Array:
        """The update as a [d_in, d_out] matrix: what `merge` adds to the kernel."""
        return (self.a[...] @ self.b[...]) * self.scale


def _targets(body: nnx.Module, targets: Sequence[str]) -> list[tuple[tuple, Dense]]:
    return [(path, module) for path, module in body.iter_modules()
            if isinstance(module, Dense) and path and path[-1] in targets]


def add_adapters(body: nnx.Module, *, rank: int, alpha: float, targets: Sequence[str] = PROJECTIONS,
                 rngs: nnx.Rngs) -> int:
    """Adds an adapter to every projection of `body` named in `targets`; returns how many. Raises when none is
    named: a typo in `refine.lora.targets` would otherwise fine-tune only the embedder and the head."""
    unknown = sorted(set(targets) - set(PROJECTIONS))
    if unknown:
        raise ValueError(f"LoRA targets {unknown} are not body projections; choose from {PROJECTIONS}.")
    layers = _targets(body, targets)
    if not layers:
        raise ValueError(f"{type(body).__name__} has no projection named {tuple(targets)} to adapt.")
    for _, layer in layers:
        if layer.adapter is not None:
            raise ValueError("the body already has adapters; merge them (orca_jax.models.lora.merge) first.")
        kernel = layer.kernel[...]
        layer.adapter = LowRank(kernel.shape[0], kernel.shape[1], rank, alpha, param_dtype=kernel.dtype, rngs=rngs)
    return len(layers)


def merge(module: nnx.Module) -> int:
    """Folds every adapter under `module` into its projection's kernel and removes it; returns how many."""
    layers = [m for _, m in module.iter_modules() if isinstance(m, Dense) and m.adapter is not None]
    for layer in layers:
        kernel = layer.kernel[...]
        layer.kernel[...] = (kernel + layer.adapter.delta().astype(kernel.dtype)).astype(kernel.dtype)
        layer.adapter = None
    return len(layers)


def has_adapters(module: nnx.Module) -> bool:
    return any(isinstance(m, Dense) and m.adapter is not None for _, m in module.iter_modules())
