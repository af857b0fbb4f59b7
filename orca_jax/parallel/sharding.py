"""Where parameters and optimizer state live on the mesh: ordered (regex, rule) pairs, first match wins.

The mesh (`mesh.make_mesh`) has two axes, and this is the one place that says what each is for:
- "data": pure data parallelism. Batches are split over it; parameters are replicated over it, and XLA all-reduces
  gradients across it.
- "fsdp": batches are split over it too (every device of the mesh gets distinct rows), and parameters *may* be split
  over it (fully sharded data parallelism, ZeRO-3 style): a device keeps 1/fsdp of each sharded tensor and of its
  optimizer state; XLA all-gathers a tensor where the step uses it and reduce-scatters its gradient. Memory per
  device falls by the fsdp factor, at the cost of those collectives. fsdp = 1 is plain replication.

Which tensors are split is decided by rules, as in big_vision's `sharding_strategy`: `rules` is a sequence of
`(regex, rule)` pairs; each parameter's path, its names joined with "/" (`body/layers/3/attention/qkv/kernel`,
`embedder/projection/kernel`), is matched with `re.fullmatch` against the regexes in order, and the first match
decides (`orca_jax.param_paths`, the matcher the fine-tune modes use too). A parameter no rule matches is
replicated. A rule is one of
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
fsdp size, fsdp = 1 included. What that saves per device is measured by `scripts/memory_per_device.py`
(docs/results.md, "Scale").

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

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from orca_jax.param_paths import PathRules, path_name, path_names

log = logging.getLogger(__name__)

DEFAULT_RULES = ((".*", "fsdp"),)
MIN_SHARD_BYTES = 1 << 20
FSDP = "fsdp"


def _axes(entry) -> tuple[str, ...]:
    """The mesh axes one PartitionSpec entry splits a dimension over."""
    return () if entry is None else (entry,) if isinstance(entry, str) else entry


def _check_rule(pattern: str, rule, mesh: Mesh):
    if isinstance(rule, str):
        if rule not in ("replicate", FSDP):
            raise ValueError(f"sharding rule {rule!r} for {pattern!r} is not 'replicate', 'fsdp' or a tuple.")
        if rule == FSDP and FSDP not in mesh.shape:
            raise ValueError(f"rule 'fsdp' for {pattern!r} needs a mesh axis 'fsdp'; mesh: {dict(mesh.shape)}.")
        return rule
    rule = tuple(entry if entry is None or isinstance(entry, str) else tuple(entry) for entry in rule)
    unknown = [a for entry in rule for a in _axes(entry) if a not in mesh.shape]
    if unknown:
        raise ValueError(
            f"sharding rule {rule!r} for {pattern!r} names axes {unknown} that the mesh ({dict(mesh.shape)}) lacks."
        )
    return rule


def check_rules(rules, mesh: Mesh) -> PathRules:
    return PathRules(rules, "sharding", lambda pattern, rule: _check_rule(pattern, rule, mesh))


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
        rule = checked.first(name, "replicate")
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
    by_path = {path_names(path): (tuple(p.shape), s) for (path, p), s in zip(flat_params, flat_shardings)}
    replicate = NamedSharding(flat_shardings[0].mesh, P())

    def sharding(keypath, leaf):
        names, shape = path_names(keypath), tuple(leaf.shape)
        for start in range(len(names)):
            hit = by_path.get(names[start:])
            if hit is not None and hit[0] == shape:
                return hit[1]
        return replicate

    return jax.tree_util.tree_map_with_path(sharding, opt_state)


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
