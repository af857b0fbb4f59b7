"""Which parameters a stage trains: fine-tune modes as ordered path rules, and the one split that freezes the rest.

A mode is a sequence of (regex, trains) pairs over parameter paths (`body/layers/3/attention/qkv/kernel`), matched
by `orca_jax.param_paths.PathRules`, the matcher the sharding rules use; the first match decides. Freezing is done
once, by splitting: a stage differentiates, updates, checkpoints and keeps optimizer state for the trainable part
only (`nnx.split(model, trainable(mode), ...)`), and the frozen part enters its steps as constants. So a frozen
parameter is bitwise unchanged and costs no optimizer state.

Fine-tune modes (official `finetune_method`, `src/utils.py::set_param_grad`), mapped from the official (Hugging
Face) parameter names to ours:
- "all" (every config's): everything the official model has.
- "layernorm" (FPT-style): officially, freeze every name containing "layer" unless it contains "layernorm" or
  "LayerNorm". In the body that leaves exactly the norms inside the blocks and Swin's final norm trainable: text
  body `layers.N.attention_norm` / `mlp_norm` (RoBERTa `encoder.layer.N.attention.output.LayerNorm` /
  `output.LayerNorm`), Swin `layers.N.blocks.M.layernorm_before` / `layernorm_after` and `layernorm`. Swin's
  patch-merging norms (`layers.N.downsample.norm`) and relative position bias tables stay frozen, as officially
  (their names contain "layers" but not "layernorm"). Embedder and head train.
- "non-attn": freeze the body's attention `query` / `key` / `value` projections (bias included, our fused `qkv`);
  the attention output projection and Swin's relative position bias tables train, as officially.
- "frozen-body" (linear probe over the embedder): the whole body frozen, embedder and head trained. The official code
  has no such mode; its nearest, the `predictor` stage (predictor_epochs > 0, used by no config), trains exactly the
  embedder and the predictor over a frozen body, and in ORCA the embedder is the part built for the new modality.
- "lora" (not in the official code): the body frozen but for low-rank adapters on its projections
  (`orca_jax.models.lora`, added by `pipeline.build_model` when this mode is chosen); embedder and head train.
In every mode the body's own token embeddings and RoBERTa's tanh pooler stay frozen: ORCA's forward pass never uses
them (the embedder and mean pooling replace them), and the official model deletes them, so they are not in its
optimizer. Freezing them also spares their optimizer state (RoBERTa's word table alone holds 38M parameters).

A new mode is one entry of `FINETUNE_RULES`; the align stage's "embedder only" is `ALIGN_RULES`, the same kind.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from flax import nnx

from orca_jax.param_paths import PathRules, path_name

PARTS = ("embedder", "body", "head", "pare")  # OrcaModel's children (pare: PaRe's gate and source head, when used)
UNUSED_BODY_PARTS = (r"body/(embeddings|pooler)/.*", False)  # replaced by the embedder and mean pooling
_BODY_NORMS = r"body/(.*/)?(attention_norm|mlp_norm|layernorm_before|layernorm_after|layernorm)/[^/]+"
FINETUNE_RULES: dict[str, tuple[tuple[str, bool], ...]] = {
    "all": (UNUSED_BODY_PARTS, (".*", True)),
    "layernorm": (UNUSED_BODY_PARTS, (_BODY_NORMS, True), ("body/.*", False), (".*", True)),
    "non-attn": (UNUSED_BODY_PARTS, (r"body/.*/qkv/[^/]+", False), (".*", True)),  # qkv: the fused query/key/value projection
    "frozen-body": (("body/.*", False), (".*", True)),
    # Low-rank adapters on the body's projections (orca_jax.models.lora, refine.lora): only they train in the body.
    "lora": (UNUSED_BODY_PARTS, (r"body/.*/adapter/[^/]+", True), ("body/.*", False), (".*", True)),
}
ALIGN_RULES = (("embedder/.*", True), (".*", False))  # the align stage trains the embedder alone


@functools.cache
def _compiled(rules: tuple) -> PathRules:
    return PathRules(rules, "fine-tune")


def _rules(mode: str) -> PathRules:
    if mode not in FINETUNE_RULES:
        raise ValueError(f"finetune_method {mode!r} is not one of {tuple(FINETUNE_RULES)}.")
    return _compiled(FINETUNE_RULES[mode])


def is_trainable(mode: str, path: Sequence[Any]) -> bool:
    """Whether the parameter at `path` (names from the OrcaModel down to the parameter) trains in `mode`."""
    return _trains(_rules(mode), path)


def _trains(rules: PathRules, path: Sequence[Any]) -> bool:
    name = path_name(tuple(path))
    if name.split("/", 1)[0] not in PARTS:
        raise ValueError(
            f"parameter path {tuple(path)} does not start with one of {PARTS}: fine-tune modes apply to an "
            "OrcaModel's parameters (nnx.split(model, nnx.Param, ...)), or a subtree of them that keeps the full paths."
        )
    return bool(rules.first(name, False))


def trainable(mode: str) -> nnx.filterlib.Filter:
    """`mode`'s trainable parameters as an nnx filter: `nnx.split(model, trainable(mode), ...)` gives them first."""
    rules = _rules(mode)
    return nnx.All(nnx.Param, _path_filter(rules))


def align_trainable() -> nnx.filterlib.Filter:
    """The align stage's trainable parameters (the embedder's) as an nnx filter."""
    return nnx.All(nnx.Param, _path_filter(_compiled(ALIGN_RULES)))


def _path_filter(rules: PathRules) -> Callable[[tuple, Any], bool]:
    return lambda path, value: _trains(rules, path)
