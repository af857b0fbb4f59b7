"""The registry of source sets: the labelled "proxy source modality" data whose body-embedded features the align
stage moves the task's embedded data towards.

| name          | modality | classes | comes from                                                           |
|---------------|----------|---------|----------------------------------------------------------------------|
| `conll2003`   | text     | 5       | tensorflow-datasets (needs TensorFlow and a prepared data dir)       |
| `python_docs` | text     | 10      | docstrings of the running Python's standard library (offline)        |
| `cifar10`     | image    | 10      | tensorflow-datasets (needs TensorFlow and a prepared data dir)       |
| `digits`      | image    | 10      | scikit-learn's bundled 8x8 digits (offline stand-in for CIFAR-10)    |

Each loader returns the first `size` examples of a seeded shuffle (the official code draws a random 5,000
CIFAR-10 images; its text file is used in stored order, which cannot be reproduced, so text is shuffled too).
How sentences, labels and images are formed is documented in `text_sources` and `image_sources`.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Callable

from orca_jax.data import image_sources, text_sources
from orca_jax.data.source_set import OFFICIAL_SOURCE_SIZE, SourceSet


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    modality: str  # "text" or "image": which body family can embed it
    class_names: tuple[str, ...]  # its labels' names, known before loading (PaRe's source head is sized by them)
    load: Callable[[int | None, int, str | os.PathLike | None], SourceSet]  # (size, seed, data_dir)
    # Cache-key entries for whatever, besides size and seed, decides the contents (e.g. the Python version).
    cache_tags: Callable[[], dict[str, str]] = dict


SOURCES: dict[str, SourceSpec] = {
    "conll2003": SourceSpec("text", text_sources.CONLL_CLASSES, text_sources.load_conll2003),
    "python_docs": SourceSpec("text", text_sources.PYTHON_DOCS_PACKAGES, text_sources.load_python_docs,
                              lambda: {"python": platform.python_version()}),
    "cifar10": SourceSpec("image", image_sources.CIFAR10_CLASSES, image_sources.load_cifar10),
    "digits": SourceSpec("image", image_sources.DIGITS_CLASSES, image_sources.load_digits),
}


def source_spec(name: str) -> SourceSpec:
    if name not in SOURCES:
        raise ValueError(f"Unknown source set {name!r}; known: {sorted(SOURCES)}.")
    return SOURCES[name]


def load_source(
    name: str,
    *,
    size: int | None = OFFICIAL_SOURCE_SIZE,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> SourceSet:
    """Source set `name`: its first `size` examples (all if None) after a shuffle seeded by `seed`, preprocessed.

    `data_dir` is the tensorflow-datasets data directory for the tfds sources (default: tfds's, i.e.
    `$TFDS_DATA_DIR` or `~/tensorflow_datasets`); the offline sources ignore it.
    """
    return source_spec(name).load(size, seed, data_dir)
