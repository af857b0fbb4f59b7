"""The container every source-set loader returns, and the seeded subset all of them take."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

log = logging.getLogger(__name__)

# The official source size: 5,000 CIFAR-10 images for Swin, the first 5,000 rows of the text features for RoBERTa.
OFFICIAL_SOURCE_SIZE = 5000


@dataclasses.dataclass(frozen=True, eq=False)
class SourceSet:
    name: str
    modality: str  # "text" (inputs: tuple of sentences) or "image" (inputs: float32 [N, H, W, 3], normalised)
    inputs: tuple[str, ...] | np.ndarray
    labels: np.ndarray  # int32 [N], indices into class_names
    class_names: tuple[str, ...]

    def __post_init__(self):
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"Source {self.name!r}: {len(self.inputs)} inputs but {len(self.labels)} labels.")

    def __len__(self) -> int:
        return len(self.labels)


def subset_indices(available: int, size: int | None, rng: np.random.Generator, name: str) -> np.ndarray:
    """The first `size` indices of a random permutation; all of them (shuffled) if `size` is None or larger.

    A source smaller than `size` is used whole, with a warning, so that one config (size 5,000) fits every source.
    """
    if size is not None and size < 1:
        raise ValueError(
            f"size={size} must be a positive number of source examples (official: {OFFICIAL_SOURCE_SIZE})."
        )
    if size is not None and size > available:
        log.warning("Source %r has %d examples; using all of them instead of size=%d.", name, available, size)
    return rng.permutation(available)[:size]
