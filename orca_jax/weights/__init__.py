"""Reading Hugging Face checkpoints and converting them, strictly, into orca-jax modules."""

from orca_jax.weights.checkpoint_files import (
    CheckpointFormatError,
    CheckpointNotFoundError,
    read_config,
    read_tensors,
    resolve_checkpoint,
)
from orca_jax.weights.convert import Drop, KeyTable, Rule, WeightConversionError, load_into

__all__ = [
    "CheckpointFormatError",
    "CheckpointNotFoundError",
    "Drop",
    "KeyTable",
    "Rule",
    "WeightConversionError",
    "load_into",
    "read_config",
    "read_tensors",
    "resolve_checkpoint",
]
