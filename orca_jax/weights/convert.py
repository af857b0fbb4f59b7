"""The strict, table-driven converter from checkpoint tensors to an NNX model's parameters.

Each architecture supplies a `KeyTable`: regex rules from checkpoint names to our parameter paths with a transform
(transpose, reshape), and the buffers that are dropped on purpose (optionally checked against our constants).
Shapes come from the model built abstractly from the checkpoint's config, so every tensor is checked against what
the config implies. Nothing is loaded silently: an unmapped, missing, duplicate or
mis-shaped key is an error that names it, all of them collected into one message.
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
    """`pattern` fully matches a checkpoint name; `target` is our dotted path with regex group references."""

    pattern: str
    target: str
    transform: Callable[[np.ndarray], np.ndarray] = identity


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
    converted: dict[Path, np.ndarray] = {}
    source_of: dict[Path, str] = {}
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
        if path in source_of:
            problems.append(f"duplicate: keys {source_of[path]!r} and {name!r} both map to {_dotted(path)}")
            continue
        if path not in expected:
            problems.append(f"key {name!r} maps to {_dotted(path)}, which this model does not have")
            continue
        source_of[path] = name
        value = rule.transform(np.asarray(tensors[name]))
        want = tuple(expected[path].shape)
        if value.shape != want:
            problems.append(
                f"shape mismatch for {name!r}: the file has {tuple(tensors[name].shape)}, giving "
                f"{value.shape} for {_dotted(path)}, but the config implies {want}"
            )
            continue
        converted[path] = value
    problems += [
        f"missing: {_dotted(path)} (no key of the checkpoint provides it)"
        for path in sorted(set(expected) - set(source_of), key=_dotted)
    ]
    if problems:
        lines = "\n  - ".join(problems)
        raise WeightConversionError(
            f"The checkpoint does not match the model ({len(problems)} problem(s)):\n  - {lines}"
        )
    return converted, dropped


def load_into(
    make_model: Callable[[], nnx.Module],
    tensors: Mapping[str, np.ndarray],
    table: KeyTable,
    dtype: jnp.dtype,
) -> tuple[nnx.Module, list[str]]:
    """Builds the model abstractly (no random init, no memory), then fills every parameter from the checkpoint."""
    abstract = nnx.eval_shape(make_model)
    graphdef, state = nnx.split(abstract)
    flat = list(nnx.to_flat_state(state))
    not_params = [_dotted(path) for path, var in flat if not isinstance(var, nnx.Param)]
    if not_params:
        raise TypeError(f"Model state holds non-parameter variables {not_params}; the loader fills parameters only.")
    converted, dropped = convert(tensors, table, {path: var.get_value() for path, var in flat})
    loaded = [(path, var.replace(jnp.asarray(converted[path], dtype=dtype))) for path, var in flat]
    return nnx.merge(graphdef, nnx.from_flat_state(loaded)), dropped
