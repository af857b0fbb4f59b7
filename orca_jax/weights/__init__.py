"""Reading Hugging Face checkpoints and converting them, strictly, into orca-jax modules."""

from orca_jax.weights.checkpoint_files import CheckpointNotFoundError, read_config, read_tensors, resolve_checkpoint
from orca_jax.weights.convert import Drop, KeyTable, Rule, WeightConversionError, load_into

__all__ = [
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
