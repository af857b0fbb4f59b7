"""Parameter and AdamW-state bytes per device for roberta-base and swin-base under the default sharding rules, on
meshes of 8 devices from pure data parallelism to full FSDP: what a mesh choice buys before anything is allocated.
Then, per fine-tune mode (full, and LoRA at `--lora-rank` on the four projections), the body's trained parameters
and their AdamW state, which is what a LoRA fine-tune saves.

    python scripts/memory_per_device.py [--lora-rank 8]

Shapes only (`jax.eval_shape`): nothing is initialised, so it runs in seconds on any machine, with 8 fake CPU
devices standing in for the accelerators. The figures are the shard shapes the rules give each device
(`orca_jax.parallel.param_shardings` / `optimizer_shardings`), i.e. what the refine stage holds per device.
"""

import argparse
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Sharding  # noqa: E402

from benchmarking.workloads import ROBERTA_BASE, SWIN_BASE  # noqa: E402  (scripts/ is on sys.path when run as a script)
from orca_jax.models import Swin, SwinConfig, TextEncoder, TextEncoderConfig  # noqa: E402
from orca_jax.models.lora import add_adapters  # noqa: E402
from orca_jax.parallel import make_mesh, optimizer_shardings, param_shardings  # noqa: E402
from orca_jax.train.finetune import is_trainable  # noqa: E402

BODIES = {
    "roberta-base": lambda: TextEncoder(TextEncoderConfig.from_hf(ROBERTA_BASE), rngs=nnx.Rngs(0)),
    "swin-base": lambda: Swin(SwinConfig.from_hf({**SWIN_BASE, "image_size": 224}), rngs=nnx.Rngs(0)),
}


def shard_bytes(tree, shardings) -> int:
    leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, Sharding))
    return sum(int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize for x, s in zip(jax.tree.leaves(tree), leaves))


def trained_body(build, mode: str, rank: int):
    """The body parameters `mode` trains (shapes only): the split the refine stage makes, on the body's subtree."""
    def body():
        model = build()
        if mode == "lora":
            add_adapters(model, rank=rank, alpha=2.0 * rank, rngs=nnx.Rngs(1))
        return nnx.state(model, nnx.Param)

    flat = nnx.to_flat_state(jax.eval_shape(body))
    return [leaf for path, leaf in flat if is_trainable(mode, ("body", *path))]


def mebibytes(leaves) -> float:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(leaves)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lora-rank", type=int, default=8)
    args = parser.parse_args()
    if args.lora_rank < 1:
        parser.error(f"--lora-rank {args.lora_rank}: give a positive adapter rank, e.g. 8.")
    for name, build in BODIES.items():
        params = jax.eval_shape(lambda: nnx.state(build(), nnx.Param))
        state = jax.eval_shape(optax.adamw(1e-4).init, params)
        whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((params, state)))
        for data, fsdp in [(8, 1), (2, 4), (1, 8)]:
            mesh = make_mesh(data, fsdp)
            shardings = param_shardings(params, mesh)
            held = shard_bytes(params, shardings) + shard_bytes(state, optimizer_shardings(state, params, shardings))
            print(f"{name:<12} data={data} fsdp={fsdp}: {held / 2**20:6.0f} MiB per device "
                  f"({held / whole:.3f} of {whole / 2**20:.0f} MiB)")
    print(f"\nbody parameters trained and their AdamW state (two moments each), full fine-tuning vs LoRA rank "
          f"{args.lora_rank} on qkv, out, mlp_in, mlp_out:")
    for name, build in BODIES.items():
        counts = {}
        for mode in ("all", "lora"):
            leaves = trained_body(build, mode, args.lora_rank)
            counts[mode] = sum(x.size for x in leaves)
            print(f"{name:<12} {mode:<4}: {counts[mode] / 1e6:7.2f}M trained, AdamW state {2 * mebibytes(leaves):7.1f} MiB")
        print(f"{name:<12} LoRA trains {counts['lora'] / counts['all']:.2%} of the body's trained parameters")


if __name__ == "__main__":
    main()
