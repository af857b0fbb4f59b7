"""Where parameters and optimizer state live on the mesh: ordered (regex, rule) pairs, first match wins.

The mesh (`mesh.make_mesh`) has two axes, and this is the one place that says what each is for:
- "data": pure data parallelism. Batches are split over it; parameters are replicated over it, and XLA all-reduces
  gradients across it.
- "fsdp": batches are split over it too (every device of the mesh gets distinct rows), and parameters *may* be split
  over it (fully sharded data parallelism, ZeRO-3 style): a device keeps 1/fsdp of each sharded tensor and of its
  optimizer state; XLA all-gathers a tensor where the step uses it and reduce-scatters its gradient. Memory per
  device falls by the fsdp factor, at the cost of those collectives. fsdp = 1 is plain replication.

Which tensors are split is decided by rules, as in big_vision's `sharding_strategy`: `rules` is a sequence of
`(regex, rule)` pairs; each parameter's path, its names joined with "/" (`body/layers/3/attention/query/kernel`,
`embedder/projection/kernel`), is matched with `re.fullmatch` against the regexes in order, and the first match
decides. A parameter no rule matches is replicated. A rule is one of
- "replicate": a full copy on every device;
- "fsdp": split the tensor's largest dimension that the fsdp axis size divides (the first such on ties) over "fsdp".
  Documented fallback, not an error: a tensor is replicated when it is smaller than `min_shard_bytes` (norm scales,
  biases: their all-gathers would cost more than the memory they free), when no dimension divides, or when fsdp = 1;
- a PartitionSpec-like tuple, one entry per leading dimension (None, a mesh axis name, or a tuple of names), e.g.
  `("fsdp", None)`. Explicit means exact: an unknown axis, more entries than dimensions, or a dimension that the
  named axes do not divide is an error naming the parameter.

`DEFAULT_RULES = ((".*", "fsdp"),)` with `MIN_SHARD_BYTES` = 1 MiB: for the bodies ORCA fine-tunes, every matrix
of roberta-base (768 x 768 and up) is split, and only biases, norms, token-type embeddings and Swin's smallest
early-stage matrices stay replicated. Since "fsdp" falls back to replication, the default rules are safe with any
fsdp size, fsdp = 1 included. Per device, with the refine stage's AdamW state (fine-tune mode "all"), from the
shardings of the whole OrcaModel: roberta-base 477 MiB of parameters + 652 MiB of state at fsdp = 1, 0.251 of that
at fsdp = 4, 0.126 at fsdp = 8; swin-base 331 + 662 MiB, 0.261 and 0.138.

Config (`config.mesh`): `rules` a tuple of (regex, rule) pairs, `min_shard_bytes` an int. ml_collections holds
tuples and overrides them from the command line by Python literal, e.g.
`--config.mesh.rules='(("body/embeddings/.*", "replicate"), (".*", "fsdp"))'` or
`--config.mesh.rules='(("body/.*", "fsdp"), (".*", "replicate"))'` (split only the body).

Optimizer state follows the parameters (`optimizer_shardings`): a state leaf whose path ends with a parameter's path
and has that parameter's shape (Adam's moments, momentum traces, accumulated gradients, inside `optax.partition`
and masked states alike) is placed like the parameter; anything else (step counts, scalars) is replicated.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

DEFAULT_RULES = ((".*", "fsdp"),)
MIN_SHARD_BYTES = 1 << 20
FSDP = "fsdp"


def _key_name(key) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _names(keypath) -> tuple[str, ...]:
    """A leaf's key path as names; an nnx Variable's own trailing `.value` is dropped, so a parameter of an
    `nnx.State`, of a module and of an optimizer state that mirrors it all read like `body/layers/0/mlp_in/kernel`."""
    if keypath and isinstance(keypath[-1], jax.tree_util.GetAttrKey) and keypath[-1].name == "value":
        keypath = keypath[:-1]
    return tuple(_key_name(k) for k in keypath)


def path_name(keypath) -> str:
    """The name rules match: a key path from `jax.tree_util.tree_flatten_with_path`, "/"-joined."""
    return "/".join(_names(keypath))


def _axes(entry) -> tuple[str, ...]:
    """The mesh axes one PartitionSpec entry splits a dimension over."""
    return () if entry is None else (entry,) if isinstance(entry, str) else entry


def check_rules(rules, mesh: Mesh) -> list[tuple[re.Pattern, Any]]:
    checked = []
    for item in rules:
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2 or not isinstance(item[0], str):
            raise ValueError(
                f"sharding rules are (regex, rule) pairs; got {item!r} in {rules!r}. A single pair still needs the "
                "outer tuple: ((\".*\", \"fsdp\"),)."
            )
        pattern, rule = item
        if isinstance(rule, str):
            if rule not in ("replicate", FSDP):
                raise ValueError(f"sharding rule {rule!r} for {pattern!r} is not 'replicate', 'fsdp' or a tuple.")
            if rule == FSDP and FSDP not in mesh.shape:
                raise ValueError(f"rule 'fsdp' for {pattern!r} needs a mesh axis 'fsdp'; mesh: {dict(mesh.shape)}.")
        else:
            rule = tuple(entry if entry is None or isinstance(entry, str) else tuple(entry) for entry in rule)
            unknown = [a for entry in rule for a in _axes(entry) if a not in mesh.shape]
            if unknown:
                raise ValueError(
                    f"sharding rule {rule!r} for {pattern!r} names axes {unknown} that the mesh ({dict(mesh.shape)}) "
                    "lacks."
                )
        checked.append((re.compile(pattern), rule))
    return checked


def _fsdp_spec(name: str, shape: tuple[int, ...], itemsize: int, mesh: Mesh, min_shard_bytes: int) -> P:
    size = mesh.shape[FSDP]
    if size == 1 or math.prod(shape) * itemsize < min_shard_bytes:
        return P()
    candidates = [d for d in range(len(shape)) if shape[d] % size == 0]
    if not candidates:
        log.info("fsdp: no dimension of %s %s divides by %d; replicated", name, shape, size)
        return P()
    dim = max(candidates, key=lambda d: (shape[d], -d))
    return P(*(FSDP if d == dim else None for d in range(len(shape))))


def _explicit_spec(name: str, shape: tuple[int, ...], rule: tuple, mesh: Mesh) -> P:
    if len(rule) > len(shape):
        raise ValueError(f"sharding rule {rule} has {len(rule)} entries but {name} has shape {shape}.")
    for dim, entry in enumerate(rule):
        axes = _axes(entry)
        parts = math.prod(mesh.shape[a] for a in axes)
        if shape[dim] % parts:
            raise ValueError(
                f"sharding rule {rule} splits dimension {dim} of {name} (shape {shape}) over {axes} = {parts} "
                f"devices, which does not divide {shape[dim]}. Use 'fsdp' (which falls back to replication) or "
                "another rule for this parameter."
            )
    return P(*rule)


def param_shardings(params, mesh: Mesh, rules=DEFAULT_RULES, *, min_shard_bytes: int = MIN_SHARD_BYTES):
    """NamedShardings for `params` (arrays, or `jax.ShapeDtypeStruct`s from `eval_shape`; an `nnx.State`, an nnx
    module or any pytree) by the module docstring's rules: the same pytree structure, a sharding per array."""
    checked = check_rules(rules, mesh)

    def sharding(keypath, leaf):
        name, shape = path_name(keypath), tuple(leaf.shape)
        rule = next((rule for pattern, rule in checked if pattern.fullmatch(name)), "replicate")
        if rule == "replicate":
            spec = P()
        elif rule == FSDP:
            spec = _fsdp_spec(name, shape, leaf.dtype.itemsize, mesh, min_shard_bytes)
        else:
            spec = _explicit_spec(name, shape, rule, mesh)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(sharding, params)


def optimizer_shardings(opt_state, params, shardings):
    """Shardings for an optimizer state (concrete or abstract) that mirror `shardings`, the parameters' ones.

    A state leaf takes the sharding of the parameter whose path is the longest suffix of its own path, if the shapes
    agree; other leaves (counts, scalars, factored statistics) are replicated. Why paths and not shapes alone:
    two parameters of one shape may be sharded differently by the rules.
    """
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_shardings = jax.tree.leaves(shardings)
    if len(flat_params) != len(flat_shardings) or not flat_shardings:
        raise ValueError("`shardings` must be the parameters' shardings (same structure as `params`, not empty).")
    by_path = {_names(path): (tuple(p.shape), s) for (path, p), s in zip(flat_params, flat_shardings)}
    replicate = NamedSharding(flat_shardings[0].mesh, P())

    def sharding(keypath, leaf):
        names, shape = _names(keypath), tuple(leaf.shape)
        for start in range(len(names)):
            hit = by_path.get(names[start:])
            if hit is not None and hit[0] == shape:
                return hit[1]
        return replicate

    return jax.tree_util.tree_map_with_path(sharding, opt_state)


def init_params(init: Callable[[], Any], mesh: Mesh, rules=DEFAULT_RULES, *, min_shard_bytes: int = MIN_SHARD_BYTES):
    """(params, shardings): `init()` run so that every array is born sharded by the rules.

    `init` is traced abstractly first (`jax.eval_shape`: no memory), the shardings come from its shapes, and then
    `jax.jit(init, out_shardings=...)` makes each device compute only its own shards, so a model larger than one
    device never exists whole anywhere. `init` returns a pytree: `lambda: nnx.state(Model(..., rngs=nnx.Rngs(0)),
    nnx.Param)`, or an nnx module itself. Random initialisers give the values of the same `init` jitted without
    shardings (JAX's default partitionable threefry).
    """
    shardings = param_shardings(jax.eval_shape(init), mesh, rules, min_shard_bytes=min_shard_bytes)
    return jax.jit(init, out_shardings=shardings)(), shardings


def init_optimizer(optimizer: optax.GradientTransformation, params, shardings):
    """(opt_state, opt_shardings): `optimizer.init(params)` created directly with `optimizer_shardings`."""
    opt_shardings = optimizer_shardings(jax.eval_shape(optimizer.init, params), params, shardings)
    return jax.jit(optimizer.init, out_shardings=opt_shardings)(params), opt_shardings


def place(tree, shardings):
    """A copy of `tree` (arrays that every process holds whole and equal, e.g. loaded pretrained weights) laid out
    as `shardings`, each device receiving only its shards.

    Always a new copy, so the result can be donated to a step without deleting the model's own arrays. Across
    processes a `jax.Array` committed to a local device cannot go straight to other processes' devices
    (`jax.device_put` refuses), so it goes through host memory, one leaf at a time.
    """

    def put(x, sharding):
        if isinstance(x, jax.Array) and not sharding.is_fully_addressable:
            x = np.asarray(x)
        return jax.device_put(x, sharding, may_alias=False)

    return jax.tree.map(put, tree, shardings)


def bytes_per_device(tree) -> dict[jax.Device, int]:
    """Bytes of `tree`'s arrays that each of this process's devices holds (its addressable shards)."""
    held: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held
