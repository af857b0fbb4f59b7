"""Data: source sets and their body-embedded source features (the align stage's targets), and target tasks."""

from orca_jax.data.source_features import (
    SourceFeatures,
    default_cache_dir,
    embed_source,
    image_features,
    load_or_compute,
    mean_squared_pairwise_distance,
    text_features,
)
from orca_jax.data.source_set import OFFICIAL_SOURCE_SIZE, SourceSet
from orca_jax.data.sources import SOURCES, load_source
from orca_jax.data.tasks import TASK_LOADERS, check_task, load_task, task_from_arrays
from orca_jax.data.types import DataError, Split, Task, TaskData

import orca_jax.data.benchmarks  # noqa: E402,F401  (registers the benchmark tasks in TASK_LOADERS, lazily)

__all__ = [
    "DataError",
    "OFFICIAL_SOURCE_SIZE",
    "SOURCES",
    "SourceFeatures",
    "SourceSet",
    "Split",
    "TASK_LOADERS",
    "Task",
    "TaskData",
    "default_cache_dir",
    "embed_source",
    "image_features",
    "load_or_compute",
    "load_source",
    "check_task",
    "load_task",
    "mean_squared_pairwise_distance",
    "task_from_arrays",
    "text_features",
]
