"""Parameter and AdamW-state bytes per device for roberta-base and swin-base under the default sharding rules, on
meshes of 8 devices from pure data parallelism to full FSDP: what a mesh choice buys before anything is allocated.

    python scripts/memory_per_device.py

Shapes only (`jax.eval_shape`): nothing is initialised, so it runs in seconds on any machine, with 8 fake CPU
devices standing in for the accelerators. The figures are the shard shapes the rules give each device
(`orca_jax.parallel.param_shardings` / `optimizer_shardings`), i.e. what the refine stage holds per device.
"""

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
from orca_jax.parallel import make_mesh, optimizer_shardings, param_shardings  # noqa: E402

BODIES = {
    "roberta-base": lambda: TextEncoder(TextEncoderConfig.from_hf(ROBERTA_BASE), rngs=nnx.Rngs(0)),
    "swin-base": lambda: Swin(SwinConfig.from_hf({**SWIN_BASE, "image_size": 224}), rngs=nnx.Rngs(0)),
}


def shard_bytes(tree, shardings) -> int:
    leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, Sharding))
    return sum(int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize for x, s in zip(jax.tree.leaves(tree), leaves))


def main() -> None:
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


if __name__ == "__main__":
    main()
