"""What a sweep runs: variants (named dotted config overrides), the built-in sweeps, and the config of one
variant and seed."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath
from ml_collections import ConfigDict


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    overrides: Mapping[str, Any]
    align_from: str | None = None  # a variant (earlier in the sweep) whose aligned embedder, same seed, this refines


# Variants set what their names say, so the names hold whatever the base config chose.
_OTDD_ANNEALED = Variant("otdd-annealed", {"align.objective": "otdd-exact", "align.solver": "annealed"})
_MMD = Variant("mmd", {"align.objective": "mmd"})
_L2 = Variant("l2", {"align.objective": "l2"})
_NO_ALIGN = Variant("no-align", {"align.epochs": 0, "embedder.init": "fresh"})
# The body's initialisation without alignment: PaRe's `srcinit` (the embedder copied from the body's own patch or
# token embedding, no alignment).
_SOURCE_INIT = Variant("no-align-body-init", {"align.epochs": 0, "embedder.init": "body"})
_RANDOM_BODY = Variant("random-body", {"body.init": "random"})  # the replication's baseline: no pretrained knowledge
SWEEPS: dict[str, tuple[Variant, ...]] = {
    "ablations": (
        _OTDD_ANNEALED,  # official; the base of the refine-only variants
        _NO_ALIGN,  # the official no-alignment baseline: embedder initialised anew
        _SOURCE_INIT,
        Variant("otdd-converged", {"align.objective": "otdd-exact", "align.solver": "converged"}),
        Variant("otdd-gaussian", {"align.objective": "otdd-gaussian"}),
        _MMD,
        _L2,
        Variant("layernorm", {"refine.finetune_method": "layernorm"}, align_from="otdd-annealed"),
        Variant("frozen-body", {"refine.finetune_method": "frozen-body"}, align_from="otdd-annealed"),
        _RANDOM_BODY,
    ),
    "objectives": (_OTDD_ANNEALED, _MMD, _L2, _NO_ALIGN),
    # ORCA's successors next to ORCA (docs/method.md, "Beyond ORCA"): which method for this task.
    "successors": (
        _OTDD_ANNEALED,  # ORCA
        _NO_ALIGN,
        _RANDOM_BODY,
        Variant("lora", {"refine.finetune_method": "lora"}, align_from="otdd-annealed"),  # rank 8 on 4 projections
        # 20 label-matching epochs after ORCA's alignment (the authors' label_epochs are per task; 20 is ours).
        Variant("label-matching", {"align.objective": "otdd-exact", "align.solver": "annealed",
                                   "align.label_matching.epochs": 20}),
        _SOURCE_INIT,  # PaRe's released preset alone: no alignment, the embedder copied from the body
        Variant("pare", {"align.epochs": 0, "embedder.init": "body", "refine.pare.enabled": True}),  # PaRe as released
    ),
}


def select_variants(variants: Sequence[Variant], names: Sequence[str] | None) -> tuple[Variant, ...]:
    """The variants named (all when `names` is empty), in sweep order, with the variants they align from added: a
    refine-only variant cannot run without its base."""
    if not names:
        return tuple(variants)
    by_name = {v.name: v for v in variants}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"Unknown variant(s) {', '.join(unknown)}; this sweep has {', '.join(by_name)}.")
    wanted = set(names) | {by_name[n].align_from for n in names if by_name[n].align_from}
    return tuple(v for v in variants if v.name in wanted)


def check_variants(variants: Sequence[Variant]) -> None:
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"Variant names must be unique (each names a directory): {names}.")
    for i, v in enumerate(variants):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v.name):
            raise ValueError(f"Variant name {v.name!r} must be a plain directory name ([A-Za-z0-9._-]).")
        if v.align_from and v.align_from not in names[:i]:
            raise ValueError(f"Variant {v.name} aligns from {v.align_from!r}, which must come before it in the sweep.")


def apply_overrides(config: ConfigDict, overrides: Mapping[str, Any]) -> ConfigDict:
    """A copy of `config` with dotted fields set; a field the config lacks is an error even when it is unlocked, so
    a sweep never runs a variant whose override silently did nothing."""
    config = copy.deepcopy(config)
    for field, value in overrides.items():
        *parents, leaf = field.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, ConfigDict) else None
        if not isinstance(node, ConfigDict) or leaf not in node:
            raise ValueError(f"override {field}={value!r}: the config has no field {field}.")
        try:
            node[leaf] = value
        except TypeError as error:  # ml_collections' type safety: a str into a float field
            raise ValueError(f"override {field}={value!r}: {error}") from None
    return config


def run_dir(workdir: epath.PathLike, variant: str, seed: int) -> epath.Path:
    return epath.Path(workdir) / variant / f"seed{seed}"


def refine_from(run_workdir: epath.PathLike) -> dict:
    """The overrides that make a run refine from the embedder another run aligned (in `run_workdir`) instead of
    aligning its own: the one way the sweeps and the searches (`orca_jax.tune`) reuse an alignment."""
    return {"align.epochs": 0, "refine.init_embedder": str(epath.Path(run_workdir) / "aligned_embedder")}


def run_config(config: ConfigDict, variant: Variant, seed: int, workdir: epath.PathLike) -> ConfigDict:
    overrides = {**variant.overrides, "seed": seed}
    if variant.align_from:
        overrides |= refine_from(run_dir(workdir, variant.align_from, seed))
    return apply_overrides(config, overrides)
