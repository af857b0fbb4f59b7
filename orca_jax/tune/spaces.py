"""Search spaces as code: which config fields a search varies, and over what.

A space is a tuple of `Param`s, built from the base config (`SPACES[name](config)`), so its ranges follow the
recipe being tuned (its epochs, its tokens) rather than a fixed guess. `default` is for a new task: the official
learning-rate range and the choices the official configs make. The family spaces (`nb360`, `pdebench`, `openml`)
hold, for each field the official configs of that benchmark vary, the values they use: the region in which the
unreleased search behind the paper's numbers ended. `parse_space` also takes a small inline form for one-off
searches, `lr=log:1e-6:1e-3,bs=8|16|32`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from orca_jax.config import config_module

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Short names the inline form accepts for the fields searched most; any dotted config field works too.
ALIASES = {
    "lr": "optimizer.learning_rate", "wd": "optimizer.weight_decay", "optimizer": "optimizer.name",
    "bs": "batch_size", "epochs": "refine.epochs", "warmup": "refine.warmup_epochs", "dropout": "body.dropout",
    "tokens": "embedder.target_seq_len", "align": "align.epochs", "finetune": "refine.finetune_method",
}
INLINE_EXAMPLE = "lr=log:1e-6:1e-3,bs=8|16|32"


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched config field: a range (`log` or `linear`, integer for an int field) or a set of `choices`."""

    field: str
    scale: str = "choice"  # choice | log | linear
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    integer: bool = False

    def suggest(self, trial) -> Any:
        if self.scale == "choice":
            return trial.suggest_categorical(self.field, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.field, int(self.low), int(self.high), log=self.scale == "log")
        return trial.suggest_float(self.field, self.low, self.high, log=self.scale == "log")

    def describe(self) -> str:
        if self.scale == "choice":
            return f"{self.field} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.field} {self.scale}-uniform over [{self.low:g}, {self.high:g}]" + (
            " (integers)" if self.integer else "")


def _distinct(*values) -> tuple:
    return tuple(dict.fromkeys(values))


def default_space(config: ConfigDict) -> tuple[Param, ...]:
    """For a task without official values: the official learning-rate range (1e-6 to 1e-3), the official
    optimizers, weight decays and fine-tune modes, and half to twice the recipe's refine epochs, a quarter to all of
    its tokens per input and no, half or all of its alignment (60 epochs when it has none)."""
    epochs, tokens = config.refine.epochs, config.embedder.target_seq_len
    align = config.align.epochs if config.align.epochs > 0 else 60
    return (
        Param("optimizer.learning_rate", "log", 1e-6, 1e-3),
        Param("optimizer.weight_decay", choices=(0.0, 1e-5, 1e-3, 0.1)),
        Param("optimizer.name", choices=("sgd", "adam", "adamw")),
        Param("refine.epochs", choices=_distinct(max(1, epochs // 2), epochs, 2 * epochs)),
        Param("refine.warmup_epochs", choices=(0, 1, 5)),
        Param("batch_size", choices=(8, 16, 32, 64)),
        Param("body.dropout", choices=(0.0, 0.1)),
        Param("embedder.target_seq_len", choices=_distinct(max(1, tokens // 4), max(1, tokens // 2), tokens)),
        Param("align.epochs", choices=_distinct(0, align // 2, align)),
        Param("refine.finetune_method", choices=("all", "non-attn", "layernorm")),
    )


# The fields whose official values a family space takes over (a field the family's configs never vary is left out).
FAMILY_FIELDS = ("optimizer.learning_rate", "optimizer.weight_decay", "optimizer.name", "batch_size", "refine.clip",
                 "refine.warmup_epochs", "refine.epochs", "embedder.target_seq_len", "body.dropout", "align.epochs")


def _field(config: ConfigDict, field: str) -> Any:
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def family_space(config_file: str) -> Callable[[ConfigDict], tuple[Param, ...]]:
    """The official values of one benchmark's configs (`configs/<config_file>`): the learning rate log-uniform
    between the smallest and largest official one, every other field over its official values, align epochs with
    0 added (so the search can find that alignment does not pay)."""

    def space(config: ConfigDict) -> tuple[Param, ...]:
        del config  # the official values are the space, whichever task of the family is tuned
        module = config_module(CONFIGS / config_file)
        configs = [module.get_config(str(task)) for task in module.OFFICIAL]
        params = []
        for field in FAMILY_FIELDS:
            values = sorted({_field(c, field) for c in configs} | ({0} if field == "align.epochs" else set()),
                            key=lambda v: (str(type(v)), v))
            if len(values) < 2:
                continue
            if field == "optimizer.learning_rate":
                params.append(Param(field, "log", values[0], values[-1]))
            else:
                params.append(Param(field, choices=tuple(values)))
        return tuple(params)

    return space


SPACES: dict[str, Callable[[ConfigDict], tuple[Param, ...]]] = {
    "default": default_space,
    "nb360": family_space("nb360.py"),
    "pdebench": family_space("pdebench.py"),
    "openml": family_space("openml.py"),
}


def parse_space(text: str, config: ConfigDict) -> tuple[Param, ...]:
    """A built-in space by name, or the inline form `FIELD=SPEC,...` with SPEC one of `log:LOW:HIGH`,
    `linear:LOW:HIGH` or `A|B|C`; FIELD a dotted config field or an alias (`ALIASES`). Errors name the bad part and
    the fix, since a search that silently varied nothing would waste its whole budget."""
    text = text.strip()
    if text in SPACES:
        return SPACES[text](config)
    if "=" not in text:
        raise ValueError(f"--space={text!r} is neither a built-in space ({', '.join(SPACES)}) nor an inline space "
                         f"such as {INLINE_EXAMPLE!r}.")
    params: dict[str, Param] = {}
    for part in text.split(","):
        name, _, spec = part.strip().partition("=")
        name, spec = name.strip(), spec.strip()
        where = f"--space part {part.strip()!r}"
        if not name or not spec:
            raise ValueError(f"{where}: write FIELD=SPEC, e.g. {INLINE_EXAMPLE!r} (parts separated by commas).")
        field = ALIASES.get(name, name)
        try:
            current = _field(config, field)
        except (KeyError, AttributeError):
            raise ValueError(f"{where}: the config has no field {field!r}; use a dotted config field (e.g. "
                             f"optimizer.momentum) or one of the short names {', '.join(ALIASES)}.") from None
        if field in params:
            raise ValueError(f"{where}: {field} is searched twice; give it once.")
        params[field] = _param(field, spec, current, where)
    return tuple(params.values())


def _param(field: str, spec: str, current: Any, where: str) -> Param:
    kind = type(current)
    if kind not in (int, float, str, bool):
        raise ValueError(f"{where}: {field} holds a {kind.__name__}; only number, string and boolean fields can be "
                         "searched.")
    scale, _, bounds = spec.partition(":")
    if scale in ("log", "linear"):
        if kind not in (int, float):
            raise ValueError(f"{where}: {field} is a {kind.__name__} field, so it takes choices (A|B|C), not a range.")
        parts = bounds.split(":")
        if len(parts) != 2:
            raise ValueError(f"{where}: a range needs two bounds, {scale}:LOW:HIGH (e.g. lr=log:1e-6:1e-3).")
        low, high = (_value(p, kind, field, where) for p in parts)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"{where}: the bounds must be finite with LOW < HIGH; got {low} and {high}.")
        if scale == "log" and low <= 0:
            raise ValueError(f"{where}: a log range needs LOW > 0; got {low} (use linear:{low}:{high}, or choices "
                             "that include 0).")
        return Param(field, scale, low, high, integer=kind is int)
    if ":" in spec:
        raise ValueError(f"{where}: unknown range {scale!r}; use log:LOW:HIGH, linear:LOW:HIGH or choices A|B|C.")
    choices = tuple(_value(v, kind, field, where) for v in spec.split("|"))
    if len(set(choices)) != len(choices) or len(choices) < 2:
        raise ValueError(f"{where}: give two or more distinct choices, A|B; to fix {field} to one value for every "
                         f"trial, pass --config.{field}={spec} instead.")
    return Param(field, choices=choices)


def _value(text: str, kind: type, field: str, where: str) -> Any:
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
    except ValueError:
        article = "an" if kind is int else "a"
        raise ValueError(f"{where}: {text!r} is not {article} {kind.__name__}, which {field} holds.") from None
