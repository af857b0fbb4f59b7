"""`from_pretrained`: a Hugging Face checkpoint (hub id or snapshot directory) -> an orca-jax body.

The architecture is chosen from `config.json`'s `model_type`; each architecture contributes a config builder, a
module, a key table and the prefixes under which task models (`RobertaForSequenceClassification`,
`SwinForImageClassification`, ...) keep their body. A task checkpoint loads its body; its head keys are reported,
not loaded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from orca_jax.models.families import FAMILIES, BodyFamily
from orca_jax.models.swin import SwinConfig
from orca_jax.models.swin_keys import swin_keys
from orca_jax.models.text_encoder import TextEncoderConfig
from orca_jax.models.text_encoder_keys import BERT_FAMILY_KEYS
from orca_jax.weights import KeyTable, load_into, read_config, read_tensors, resolve_checkpoint

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Architecture:
    # (config.json contents, names of the body's tensors with the task-model prefix removed) -> our config
    build_config: Callable[[dict, Sequence[str]], Any]
    family: BodyFamily  # the body module it loads into, and what the rest of orca-jax asks of it
    key_table: Callable[[Any], KeyTable]
    body_prefixes: Sequence[str]


def _text_encoder_config(hf_config: dict, body_names: Sequence[str]) -> TextEncoderConfig:
    # Task models (e.g. RobertaForSequenceClassification) are saved without the pooler: build one only if present.
    has_pooler = any(name.startswith("pooler.") for name in body_names)
    return TextEncoderConfig.from_hf(hf_config, add_pooling_layer=has_pooler)


_TEXT = Architecture(
    _text_encoder_config,
    FAMILIES["text"],
    lambda config: BERT_FAMILY_KEYS,
    ("roberta.", "bert.", "xlm_roberta.", "camembert."),
)
# SwinForImageClassification / SwinForMaskedImageModeling keep the body under "swin."; a bare SwinModel has none.
_SWIN = Architecture(lambda hf_config, body_names: SwinConfig.from_hf(hf_config), FAMILIES["image"], swin_keys,
                     ("swin.",))
ARCHITECTURES: dict[str, Architecture] = {
    "bert": _TEXT, "roberta": _TEXT, "xlm-roberta": _TEXT, "camembert": _TEXT, "swin": _SWIN
}


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What was deliberately not loaded: head keys of a task checkpoint, and buffers we recompute."""

    body_prefix: str | None
    ignored_head_keys: tuple[str, ...]
    dropped_buffers: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    model: nnx.Module
    config: Any
    hf_config: dict
    report: LoadReport


def split_body(
    tensors: Mapping[str, np.ndarray], body_prefixes: Sequence[str]
) -> tuple[dict[str, np.ndarray], tuple[str, ...], str | None]:
    """The body's tensors (prefix removed), the head keys, and the prefix; a bare body has no prefix and no head."""
    for prefix in body_prefixes:
        if any(name.startswith(prefix) for name in tensors):
            body = {name[len(prefix) :]: t for name, t in tensors.items() if name.startswith(prefix)}
            head = tuple(sorted(name for name in tensors if not name.startswith(prefix)))
            return body, head, prefix
    return dict(tensors), (), None


def load_checkpoint(
    checkpoint: str | os.PathLike, *, param_dtype=jnp.float32, dtype=jnp.float32, dropout: float | None = None
) -> LoadedCheckpoint:
    """Like `from_pretrained`, but also returns the configs and what was deliberately left out."""
    directory = resolve_checkpoint(checkpoint)
    hf_config = read_config(directory)
    model_type = hf_config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{checkpoint!s}: model_type={model_type!r} is not supported by orca-jax; "
            f"supported: {sorted(ARCHITECTURES)}."
        )
    arch = ARCHITECTURES[model_type]
    body, head_keys, prefix = split_body(read_tensors(directory), arch.body_prefixes)
    try:
        config = arch.build_config(hf_config, list(body))
    except ValueError as exc:
        raise ValueError(f"{directory / 'config.json'}: {exc}") from exc
    if dropout is not None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1).")
        config = dataclasses.replace(config, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    build = lambda: arch.family.module(config, param_dtype=param_dtype, dtype=dtype, rngs=nnx.Rngs(0))  # noqa: E731
    model, dropped = load_into(build, body, arch.key_table(config))
    if head_keys:
        log.warning(
            "%s: loaded the body under %r and ignored %d head key(s): %s",
            checkpoint, prefix, len(head_keys), ", ".join(head_keys),
        )
    return LoadedCheckpoint(model, config, hf_config, LoadReport(prefix, head_keys, tuple(dropped)))


def from_pretrained(
    checkpoint: str | os.PathLike, *, param_dtype=jnp.float32, dtype=jnp.float32, dropout: float | None = None
) -> nnx.Module:
    """Loads a pretrained body whose parameters are stored in `param_dtype` and whose matmuls and convolutions run in
    `dtype`, the compute dtype (softmax and layer-norm statistics are float32 either way).

    The defaults are float32 throughout (exact parity with transformers). `dtype=jnp.bfloat16` is mixed precision:
    bfloat16 compute over float32 master weights, so small fine-tuning updates are not rounded away;
    `param_dtype=jnp.bfloat16` as well is pure bfloat16 (half the parameter memory, but updates below bfloat16's
    resolution of a weight, ~0.4 %, are lost). `dropout` replaces the checkpoint's hidden and attention dropout
    rates, as the official `drop_out` setting does (None keeps the checkpoint's).
    """
    return load_checkpoint(checkpoint, param_dtype=param_dtype, dtype=dtype, dropout=dropout).model
