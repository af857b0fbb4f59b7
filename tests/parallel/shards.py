"""What the sharding tests measure with: parameters created already laid out by the rules, and the bytes each
device holds. The product places loaded weights (`parallel.place`); tests build models from scratch, so they
create them sharded instead of placing a whole copy."""

from __future__ import annotations

import jax

from orca_jax.parallel import param_shardings
from orca_jax.parallel.sharding import DEFAULT_RULES, MIN_SHARD_BYTES


def born_sharded(init, mesh, rules=DEFAULT_RULES, *, min_shard_bytes: int = MIN_SHARD_BYTES):
    """(params, shardings): `init()` jitted with the rules' shardings as outputs, so each device computes only its
    shards; random initialisers give the values of `init` jitted without shardings."""
    shardings = param_shardings(jax.eval_shape(init), mesh, rules, min_shard_bytes=min_shard_bytes)
    return jax.jit(init, out_shardings=shardings)(), shardings


def bytes_per_device(tree) -> dict:
    """Bytes of `tree`'s arrays that each of this process's devices holds (its addressable shards)."""
    held: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held
