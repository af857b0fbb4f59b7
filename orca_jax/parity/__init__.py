"""Numerical parity of orca-jax bodies with transformers' PyTorch models on the same checkpoint.

Used by `scripts/verify_weights.py` (a user's check of a checkpoint) and by the parity tests. Needs torch and
transformers, imported here only.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from orca_jax.models.pretrained import LoadedCheckpoint, load_checkpoint


@dataclasses.dataclass(frozen=True)
class Comparison:
    name: str  # e.g. "input_ids/layer 3"
    max_abs_diff: float

    def within(self, tolerance: float) -> bool:
        """Passes only a finite difference: NaN compares false with everything, so `diff > tolerance` alone would
        pass a model (or a checkpoint) that produces NaN."""
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= tolerance


def worst(comparisons: Sequence[Comparison]) -> Comparison:
    """The comparison furthest from passing: the first non-finite difference if any, else the largest."""
    def badness(c: Comparison) -> tuple[bool, float]:
        finite = math.isfinite(c.max_abs_diff)
        return (not finite, c.max_abs_diff if finite else 0.0)

    return max(comparisons, key=badness)


def compare_with_transformers(
    checkpoint: str | os.PathLike, *, batch: int = 2, length: int = 16, seed: int = 0
) -> list[Comparison]:
    """Loads `checkpoint` into orca-jax and into transformers (float32) and compares them on random inputs.

    `length` is the number of tokens for text bodies and the image side in pixels for Swin.
    """
    from orca_jax.parity import swin, text  # noqa: PLC0415  (each comparer imports torch; keep the import lazy)

    loaded = load_checkpoint(checkpoint)
    comparers: dict[str, Callable[..., list[Comparison]]] = {
        "bert": text.compare,
        "roberta": text.compare,
        "xlm-roberta": text.compare,
        "camembert": text.compare,
        "swin": swin.compare,  # for Swin, `length` is the image side in pixels
    }
    return comparers[loaded.hf_config["model_type"]](checkpoint, loaded, batch=batch, length=length, seed=seed)


def max_abs_diff(ours, theirs) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))))


__all__ = ["Comparison", "LoadedCheckpoint", "compare_with_transformers", "max_abs_diff", "worst"]
