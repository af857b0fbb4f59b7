"""The strict, table-driven converter from checkpoint tensors to an NNX model's parameters.

Each architecture supplies a `KeyTable`: regex rules from checkpoint names to our parameter paths with a transform
(transpose, reshape), and the buffers that are dropped on purpose (optionally checked against our constants).
Shapes come from the model built abstractly from the checkpoint's config, so every tensor is checked against what
the config implies. Nothing is loaded silently: an unmapped, missing, duplicate or
mis-shaped key is an error that names it, all of them collected into one message.

A fused parameter (the bodies' one [width, 3 * width] query/key/value kernel) is filled from several checkpoint
tensors: each rule names its block (`part=(index, count)`, blocks side by side along the parameter's last axis), and
each block is checked like a whole parameter: present exactly once, with the block's shape.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Path = tuple[str | int, ...]


def identity(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    """PyTorch `nn.Linear` stores (out, in); `nnx.Linear` multiplies by (in, out)."""
    return x.T


def conv_to_hwio(x: np.ndarray) -> np.ndarray:
    """PyTorch convolutions store (out, in, *spatial); `nnx.Conv` wants (*spatial, in, out)."""
    return np.moveaxis(x, (0, 1), (-1, -2))


@dataclasses.dataclass(frozen=True)
class Rule:
    """`pattern` fully matches a checkpoint name; `target` is our dotted path with regex group references.

    `part=(i, n)`: the (transformed) tensor is block i of the n equal blocks that make up the target along its last
    axis.
    """

    pattern: str
    target: str
    transform: Callable[[np.ndarray], np.ndarray] = identity
    part: tuple[int, int] | None = None


def linear(source: str, target: str, *, bias: bool = True) -> list[Rule]:
    """Rules for a PyTorch `nn.Linear` (`source` regex without `.weight`/`.bias`) -> an `nnx.Linear` at `target`."""
    rules = [Rule(source + r"\.weight", target + ".kernel", transpose)]
    return rules + [Rule(source + r"\.bias", target + ".bias")] if bias else rules


def fused_linear(sources: Sequence[str], target: str, *, bias: bool = True) -> list[Rule]:
    """Rules for several PyTorch `nn.Linear`s -> the column blocks, in order, of one `nnx.Linear` at `target`."""
    n = len(sources)
    return [
        dataclasses.replace(rule, part=(i, n))
        for i, source in enumerate(sources)
        for rule in linear(source, target, bias=bias)
    ]


@dataclasses.dataclass(frozen=True)
class Drop:
    """A checkpoint entry we do not load (a buffer we recompute); `check` may verify it against our constant."""

    pattern: str
    check: Callable[[str, np.ndarray], None] | None = None


@dataclasses.dataclass(frozen=True)
class KeyTable:
    rules: Sequence[Rule]
    drops: Sequence[Drop] = ()


class WeightConversionError(ValueError):
    """A checkpoint that does not match the model its config describes."""


def _to_path(dotted: str) -> Path:
    return tuple(int(part) if part.isdigit() else part for part in dotted.split("."))


def _dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)


def _block_name(path: Path, part: tuple[int, int] | None) -> str:
    return _dotted(path) if part is None else f"{_dotted(path)} (block {part[0] + 1} of {part[1]})"


def _block_shape(shape: tuple[int, ...], part: tuple[int, int] | None) -> tuple[int, ...]:
    return shape if part is None else (*shape[:-1], shape[-1] // part[1])


def convert(
    tensors: Mapping[str, np.ndarray],
    table: KeyTable,
    expected: Mapping[Path, jax.ShapeDtypeStruct],
) -> tuple[dict[Path, np.ndarray], list[str]]:
    """Maps body tensors onto `expected` (our parameter paths and shapes), or raises naming every problem.

    Returns the converted arrays and the names of the buffers dropped on purpose.
    """
    rules = [(re.compile(rule.pattern), rule) for rule in table.rules]
    drops = [(re.compile(drop.pattern), drop) for drop in table.drops]
    blocks: dict[Path, dict[tuple[int, int] | None, np.ndarray]] = {}  # path -> part -> converted tensor
    source_of: dict[tuple[Path, tuple[int, int] | None], str] = {}
    dropped, problems = [], []
    for name in sorted(tensors):
        drop = next((d for regex, d in drops if regex.fullmatch(name)), None)
        if drop is not None:
            if drop.check is not None:
                try:
                    drop.check(name, np.asarray(tensors[name]))
                except ValueError as exc:
                    problems.append(str(exc))
            dropped.append(name)
            continue
        matches = [(regex.fullmatch(name), rule) for regex, rule in rules]
        matches = [(m, rule) for m, rule in matches if m]
        if not matches:
            problems.append(f"unmapped key {name!r}: no rule of the key table matches it")
            continue
        if len(matches) > 1:
            problems.append(f"key {name!r} matches {len(matches)} rules of the key table (a bug in the table)")
            continue
        match, rule = matches[0]
        path = _to_path(match.expand(rule.target))
        target = _block_name(path, rule.part)
        if (path, rule.part) in source_of:
            problems.append(f"duplicate: keys {source_of[path, rule.part]!r} and {name!r} both map to {target}")
            continue
        if path not in expected:
            problems.append(f"key {name!r} maps to {_dotted(path)}, which this model does not have")
            continue
        source_of[path, rule.part] = name
        value = rule.transform(np.asarray(tensors[name]))
        want = _block_shape(tuple(expected[path].shape), rule.part)
        if value.shape != want:
            problems.append(
                f"shape mismatch for {name!r}: the file has {tuple(tensors[name].shape)}, giving "
                f"{value.shape} for {target}, but the config implies {want}"
            )
            continue
        blocks.setdefault(path, {})[rule.part] = value
    provided: dict[Path, set[tuple[int, int] | None]] = {}
    for path, part in source_of:
        provided.setdefault(path, set()).add(part)
    converted: dict[Path, np.ndarray] = {}
    for path in sorted(expected, key=_dotted):
        parts = provided.get(path, set())
        counts = {part[1] for part in parts if part is not None}
        if not parts:
            problems.append(f"missing: {_dotted(path)} (no key of the checkpoint provides it)")
        elif len(counts) > 1 or (counts and None in parts):
            problems.append(f"{_dotted(path)} is provided both whole and in blocks (a bug in the key table)")
        elif not counts:
            if path in blocks:  # else its shape was wrong, already reported
                converted[path] = blocks[path][None]
        else:
            (count,) = counts
            absent = [(i, count) for i in range(count) if (i, count) not in parts]
            problems += [f"missing: {_block_name(path, p)} (no key of the checkpoint provides it)" for p in absent]
            if len(blocks.get(path, {})) == count:
                converted[path] = np.concatenate([blocks[path][i, count] for i in range(count)], axis=-1)
    if problems:
        lines = "\n  - ".join(problems)
        raise WeightConversionError(
            f"The checkpoint does not match the model ({len(problems)} problem(s)):\n  - {lines}"
        )
    return converted, dropped


def load_into(
    make_model: Callable[[], nnx.Module], tensors: Mapping[str, np.ndarray], table: KeyTable
) -> tuple[nnx.Module, list[str]]:
    """Builds the model abstractly (no random init, no memory), then fills every parameter from the checkpoint, cast
    to the dtype the model stores that parameter in (its `param_dtype`)."""
    abstract = nnx.eval_shape(make_model)
    graphdef, state = nnx.split(abstract)
    flat = list(nnx.to_flat_state(state))
    not_params = [_dotted(path) for path, var in flat if not isinstance(var, nnx.Param)]
    if not_params:
        raise TypeError(f"Model state holds non-parameter variables {not_params}; the loader fills parameters only.")
    expected = {path: var.get_value() for path, var in flat}
    converted, dropped = convert(tensors, table, expected)
    loaded = [(path, var.replace(jnp.asarray(converted[path], dtype=expected[path].dtype))) for path, var in flat]
    return nnx.merge(graphdef, nnx.from_flat_state(loaded)), dropped
